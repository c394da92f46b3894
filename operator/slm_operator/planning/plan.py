"""The planner: from a profile, a spec and the GPU inventory, decide how replicas share GPUs.

A *GPU group* is ``replicas_per_gpu`` vLLM pods kept together on one node (at most the profile's
``replicas_to_saturate``; fewer where a sharing slot is too small), each started with the
profile's ``batch_size`` as ``--max-num-seqs`` and a memory budget that lets them coexist: one GPU
with ``dra`` (its claim), k slots of the node's device-plugin pool with ``mps``/``time-slicing``
(on one GPU or several: the plugin's allocation policy decides). The number of groups
comes from ``scale`` (a GPU count, or a throughput target divided by what one GPU delivers).

Mechanisms, and what each guarantees:

* ``dra-shares`` — no groups: every replica is its own pod with its own ResourceClaim (from a
  ResourceClaimTemplate) for a share of one GPU that allows multiple allocations (NVIDIA's DRA
  driver with ``--consumable-shares``). A replica's share is 1/k* of the GPU's throughput (the
  driver's ``shares`` capacity) and its memory budget at B*; replicas of several services then share
  one GPU, placed by the scheduler, which keeps every capacity's sum within the device. Sized in
  replicas, not groups (``desired_replicas``).
* ``dra`` — one ResourceClaim per group with NVIDIA's MPS config: all k pods share the same
  physical GPU, each with a pinned memory limit and a thread share. Uneven splits are possible.
* ``mps`` — device-plugin MPS slots: each pod asks one slot; the plugin pins every client to
  total/replicas of memory, so a replica must fit in that share whatever k is.
* ``time-slicing`` — device-plugin slots with no memory isolation: our budgets on one GPU must sum
  below what is usable (other tenants' slots are the cluster admin's business).

  With either, a group is k slots of one node's pool, not one GPU: the scheduler sees only the
  node's count of slots, and the plugin picks the GPU behind each slot by its allocation policy
  (``distributed``, its default, spreads them; ``packed`` fills few GPUs, best effort). So every
  sum the planner keeps holds per slot, whichever GPU it is on: a replica's memory is a slot's
  share (total/replicas), and a group's throughput is its slots' share of a full GPU's
  (``_group_tokens_per_second``). The policy changes only what the status may promise
  (``Plan.packing_guarantee``, ``Plan.allocation_policy``).
* ``exclusive`` — one replica per whole GPU: the baseline, and models that don't fit twice.

Side-effect free: no kopf, no Kubernetes client, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from slm_operator.constants import (
    ALLOCATION_POLICIES,
    DEFAULT_ALLOCATION_POLICY,
    DEVICE_PLUGIN_SHARED_MECHANISMS,
    DRA_DEVICE_CLASS,
    GIB,
    GPU_RESOURCE,
    LABEL_ALLOCATION_POLICY,
    MECHANISMS,
    POOL_OF_MECHANISM,
    SHARED_MECHANISMS,
    USABLE_MEMORY_FRACTION,
    AllocationPolicy,
    Mechanism,
    PackingGuarantee,
)
from slm_operator.errors import PlanningError
from slm_operator.planning.inventory import GpuPool, Inventory
from slm_operator.planning.shares import SharedDevice, ShareRequest, first_fit, fitting_replicas
from slm_operator.profiling.gpus import lookup_gpu
from slm_operator.profiling.types import Profile
from slm_operator.spec import SLMServiceSpec

#: Runtime overhead of one vLLM replica outside weights and KV cache (CUDA graphs, activations).
DEFAULT_REPLICA_OVERHEAD_GIB = 1.5
#: ``dra-shares`` with ``scale.targetTokensPerSecond``: replicas are planned for the target times
#: 1 + this. NB: sized per replica, the plan has no whole-GPU rounding to absorb a profile that is
#: a little optimistic (the estimator's leave-one-out error is about 6%) or a mix whose replicas
#: reach a little less than the plateau; 10% covers both for the cost of at most one extra replica
#: per ten.
TARGET_HEADROOM = 0.10


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one SLMService runs: the input of every child builder."""

    mechanism: Mechanism
    gpu_product: str
    #: Extended resource each pod requests (device-plugin mechanisms) or ``None`` (DRA).
    resource_name: str | None
    device_class_name: str | None
    #: Each replica's batch size: the one place it becomes vLLM's ``--max-num-seqs``.
    batch_size: int
    #: Replicas each GPU group runs (its StatefulSet's replicas).
    replicas_per_gpu: int
    #: GPU groups the spec asks for, and how many of them fit in the cluster now.
    gpus: int
    placeable_gpus: int
    max_model_len: int
    memory_budget_gib: float
    #: ``None`` when the profile has no memory figure (``skip``): vLLM then sizes its own KV cache.
    kv_cache_memory_bytes: int | None
    #: Fraction of the physical GPU a replica may take; set when replicas share a GPU, because
    #: vLLM refuses to start when less than this fraction is free (default 0.9).
    gpu_memory_utilization: float | None
    tokens_per_second_per_gpu: float
    #: DRA/MPS limits per replica (``None`` for other mechanisms).
    active_thread_percentage: int | None
    pinned_memory_limit_mib: int | None
    explanation: str
    #: ``dra-shares`` only: replicas the spec asks for and how many fit now (``replicas_per_gpu`` is
    #: then k*, the share denominator, and ``gpus``/``placeable_gpus`` are GPU-equivalents).
    replicas: int = 0
    placeable_replicas: int = 0
    #: ``dra-shares`` only: the fraction of one GPU each claim reserves, and what it consumes.
    share_per_replica: float | None = None
    share_request: ShareRequest | None = None
    #: Device-plugin sharing (``mps``, ``time-slicing``) only: the allocation policy the plan assumes
    #: for the nodes of its pool (``distributed``, ``packed``, or ``mixed`` where nodes differ), and
    #: the most slots per GPU (``nvidia.com/gpu.replicas``) among them: a replica budgets one such slot.
    allocation_policy: str | None = None
    slots_per_gpu: int | None = None
    #: ``dra`` only: some GPUs of the product allow multiple allocations (consumable shares), so the
    #: group's claim must select a device that does not: on a shared one a claim asking no capacity
    #: would take only the driver's default share, not the whole GPU the group was planned with.
    whole_devices_only: bool = False
    #: Device-plugin mechanisms (``mps``, ``time-slicing``, ``exclusive``): the node each new group
    #: is pinned to, in the order new groups are made. NB: the planner's pick, not the scheduler's:
    #: a group needs k slots of one node, and a scheduler binding the groups' first pods one at a
    #: time can fill a node with more groups' first pods than their others fit beside.
    group_nodes: tuple[str, ...] = ()

    @property
    def shares_mode(self) -> bool:
        return self.mechanism == "dra-shares"

    @property
    def total_replicas(self) -> int:
        return self.placeable_replicas if self.shares_mode else self.placeable_gpus * self.replicas_per_gpu

    @property
    def tokens_per_second_per_replica(self) -> float:
        """A ``dra-shares`` replica's share of one GPU's plateau (replicas sharing a GPU share its
        bandwidth-bound throughput): tokens_per_second_per_gpu / k*, never its solo throughput."""
        return self.tokens_per_second_per_gpu / max(self.replicas_per_gpu, 1)

    @property
    def planned_tokens_per_second(self) -> float:
        if self.shares_mode:
            return round(self.placeable_replicas * self.tokens_per_second_per_replica, 1)
        return round(self.placeable_gpus * self.tokens_per_second_per_gpu, 1)

    @property
    def degraded(self) -> bool:
        if self.shares_mode:
            return self.placeable_replicas < self.replicas
        return self.placeable_gpus < self.gpus

    @property
    def packing_guarantee(self) -> PackingGuarantee:
        """What is guaranteed about the GPU behind the replicas: ``one-gpu`` where the scheduler
        allocates it (a DRA claim, a whole GPU), ``node-slot-pool`` for device-plugin slots (one
        node's pool; the GPU is the plugin's pick)."""
        return "node-slot-pool" if self.mechanism in DEVICE_PLUGIN_SHARED_MECHANISMS else "one-gpu"

    @property
    def capacity_mode(self) -> str | None:
        """``shares`` (the claim reserves compute as driver shares) or ``memory`` (the GPUs publish
        memory only, and the share is reserved as memory); ``None`` for other mechanisms."""
        if self.share_request is None:
            return None
        return "shares" if self.share_request.shares is not None else "memory"

    def vllm_args(self) -> list[str]:
        """The flags the operator owns, in a stable order (a change here restarts replicas)."""
        args = [f"--max-num-seqs={self.batch_size}", f"--max-model-len={self.max_model_len}"]
        if self.gpu_memory_utilization is not None:
            args.append(f"--gpu-memory-utilization={self.gpu_memory_utilization}")
        if self.kv_cache_memory_bytes is not None:
            args.append(f"--kv-cache-memory-bytes={self.kv_cache_memory_bytes}")
        return args


@dataclasses.dataclass(frozen=True)
class _Option:
    mechanism: Mechanism
    pools: tuple[GpuPool, ...]
    replicas_per_gpu: int
    budget_gib: float
    capacity: int
    desired: int = 0
    why_not: str = ""
    #: ``dra-shares``: capacity and desired count replicas; what each claim consumes.
    share_request: ShareRequest | None = None
    share: float | None = None
    #: Device-plugin sharing: slots per GPU, and what one group of k slots delivers.
    slots: int | None = None
    group_tokens_per_second: float | None = None
    #: Groups of this mechanism the service runs already (counted in ``capacity``), and the
    #: slots promised to unpinned groups of the pool (not free on any node in particular).
    existing: int = 0
    reserved: int = 0


def make_plan(
    *,
    spec: SLMServiceSpec,
    profile: Profile,
    inventory: Inventory,
    existing_groups: int = 0,
    current_mechanism: str | None = None,
    default_sharing: str = "auto",
    existing_replicas: int = 0,
    existing_by_mechanism: Mapping[str, int] | None = None,
    default_allocation_policy: AllocationPolicy = DEFAULT_ALLOCATION_POLICY,
) -> Plan:
    """Choose mechanism, replicas per GPU, memory budgets and GPU groups. Side-effect free.

    ``existing_groups`` run under ``current_mechanism`` already: they count as placed for that
    mechanism only, and with ``sharing: auto`` that mechanism is kept while it still works, so a
    re-plan (operator restart, a freed GPU elsewhere) never moves or restarts Ready replicas.
    ``existing_replicas``: with ``dra-shares``, the replicas the service runs already (its
    StatefulSet's replicas). ``existing_by_mechanism``: mid-move a service runs groups under two
    mechanisms; given, each mechanism counts its own groups (and ``dra-shares`` its replicas) as
    placed, whichever is current.
    ``default_allocation_policy``: the device plugin's allocation policy on
    nodes without the label ``slm.pareto.dev/gpu-allocation-policy`` (what the status promises; the
    plan is the same under either).
    """
    product = spec.gpu.product or profile.gpu_product
    pools = _pools_of(inventory, product)
    memory_mib = _gpu_memory_mib(pools, product)
    usable_gib = memory_mib / 1024 * USABLE_MEMORY_FRACTION
    _check_one_replica_fits(profile=profile, product=product, usable_gib=usable_gib)

    # Each mechanism that could work, in order of preference, with what it would hold.
    sharing = spec.gpu.sharing if spec.gpu.sharing != "auto" else default_sharing
    def existing(mechanism: str) -> int:
        if existing_by_mechanism is not None:
            return existing_replicas if mechanism == "dra-shares" else existing_by_mechanism.get(mechanism, 0)
        if mechanism != current_mechanism:
            return 0
        return existing_replicas if mechanism == "dra-shares" else existing_groups

    options = [
        _shares_option(pools, profile, spec, memory_mib=memory_mib, existing=existing(mechanism),
                       pending=inventory.pending_shares.get(product, ()))
        if mechanism == "dra-shares" else
        _option(mechanism, pools, profile, usable_gib, spec, existing(mechanism),
                reserved=inventory.reserved.get((product, POOL_OF_MECHANISM[mechanism]), 0))
        for mechanism in _mechanisms(sharing, profile, current_mechanism=current_mechanism,
                                     existing_groups=existing_groups or existing_replicas)
    ]
    chosen = _choose(options, sharing=sharing, product=product)
    plan = _plan_of(chosen, spec=spec, profile=profile, product=product, memory_mib=memory_mib,
                    default_allocation_policy=default_allocation_policy)
    if plan.mechanism == "dra" and any(p.sharing == "dra-shares" for p in pools):
        return dataclasses.replace(plan, whole_devices_only=True)
    return plan


def _pools_of(inventory: Inventory, product: str) -> list[GpuPool]:
    pools = inventory.for_product(product)
    if not pools:
        known = ", ".join(inventory.products()) or "none"
        raise PlanningError(
            "NoMatchingGPUs",
            f"no schedulable node offers GPU product {product!r} (products in the cluster: {known}). "
            "Set spec.gpu.product to one of them, or add nodes labelled nvidia.com/gpu.product="
            f"{product} by NVIDIA GPU feature discovery.",
        )
    return pools


def _check_one_replica_fits(*, profile: Profile, product: str, usable_gib: float) -> None:
    need_gib = profile.memory_per_replica_gib
    if need_gib > usable_gib:
        raise PlanningError(
            "ModelTooLarge",
            f"one replica needs {need_gib:.1f} GiB at batch {profile.batch_size} but a {product} "
            f"offers {usable_gib:.1f} GiB usable; lower spec.workload (maxModelLen) or the batch size, "
            "or pick a larger spec.gpu.product.",
        )


def _choose(options: list[_Option], *, sharing: str, product: str) -> _Option:
    """The first mechanism (in order of isolation) that holds every group, else the one that holds
    the most: a partial placement is reported as Degraded, never silently."""
    usable = [o for o in options if o.replicas_per_gpu >= 1 and not o.why_not]
    if not usable:
        raise PlanningError(
            "NoSharedGPUs" if sharing in SHARED_MECHANISMS else "InsufficientSlots",
            "; ".join(o.why_not for o in options) + ". " + _how_to_enable(sharing, product),
        )
    chosen = next((o for o in usable if o.capacity >= o.desired),
                  max(usable, key=lambda o: min(o.capacity, o.desired) / max(o.desired, 1)))
    if chosen.capacity == 0 and chosen.desired > 0:
        if chosen.share_request is not None:
            raise PlanningError(
                "InsufficientSlots",
                f"no {product} GPU has room for a {chosen.mechanism} replica ({chosen.desired} wanted, each "
                f"{chosen.share:.3g} of a GPU and {chosen.share_request.memory_mib} MiB); free GPUs, add nodes, "
                "or lower spec.scale.")
        raise PlanningError(
            "InsufficientSlots",
            f"every {product} {chosen.mechanism} slot is taken ({chosen.desired} GPU(s) wanted, "
            f"{chosen.replicas_per_gpu} replica(s) each); free GPUs, add nodes, or lower spec.scale.",
        )
    return chosen


def _plan_of(
    chosen: _Option, *, spec: SLMServiceSpec, profile: Profile, product: str, memory_mib: int,
    default_allocation_policy: AllocationPolicy = DEFAULT_ALLOCATION_POLICY,
) -> Plan:
    """The plan for the chosen option: flags, memory budgets and limits of one replica."""
    if chosen.share_request is not None:
        return _shares_plan_of(chosen, spec=spec, profile=profile, product=product, memory_mib=memory_mib)
    need_gib = profile.memory_per_replica_gib
    known_memory = need_gib > 0
    k = chosen.replicas_per_gpu
    placeable = min(chosen.desired, chosen.capacity)
    kv_bytes = None
    if known_memory:
        kv_gib = chosen.budget_gib - (profile.weights_gib or 0.0) - _overhead_gib(profile)
        kv_bytes = int(max(kv_gib, profile.kv_cache_gib or 0.0) * GIB)
    shared = chosen.mechanism != "exclusive"
    dra = chosen.mechanism == "dra"
    policy, policy_note = (_allocation_policy(chosen.pools, default=default_allocation_policy)
                           if chosen.slots is not None else (None, ""))
    budget = f"{chosen.budget_gib:.1f} GiB each (needs {need_gib:.1f}); " if known_memory else ""
    if chosen.slots is not None:
        explanation = (
            f"{chosen.mechanism}: groups of {k} replica(s) × batch {profile.batch_size}, {budget}"
            f"{placeable}/{chosen.desired} group(s) placeable. {_slot_pool_note(chosen, k=k, policy=policy)}"
            + policy_note)
    else:
        explanation = (f"{chosen.mechanism}: {k} replica(s)/GPU × batch {profile.batch_size}, {budget}"
                       f"{placeable}/{chosen.desired} GPU(s) placeable")
    per_group = (chosen.group_tokens_per_second if chosen.group_tokens_per_second is not None
                 else tokens_per_second_per_gpu(profile=profile, replicas=k))
    return Plan(
        mechanism=chosen.mechanism,
        gpu_product=product,
        resource_name=None if dra else chosen.pools[0].resource_name,
        device_class_name=spec.gpu.device_class_name if dra else None,
        batch_size=profile.batch_size,
        replicas_per_gpu=k,
        gpus=chosen.desired,
        placeable_gpus=placeable,
        max_model_len=spec.workload.effective_max_model_len(),
        memory_budget_gib=round(chosen.budget_gib, 2),
        kv_cache_memory_bytes=kv_bytes,
        gpu_memory_utilization=(math.floor(chosen.budget_gib * 1024 / memory_mib * 1000) / 1000) if shared else None,
        tokens_per_second_per_gpu=round(per_group, 1),
        active_thread_percentage=100 // k if dra else None,
        # NB: the hard MPS limit is the physical share, above the 0.92 budget vLLM plans with, so an
        # underestimated CUDA graph or workspace doesn't hit the wall.
        pinned_memory_limit_mib=memory_mib // k if dra else None,
        explanation=explanation,
        allocation_policy=policy,
        group_nodes=() if dra else group_nodes(pools=chosen.pools, k=k, count=placeable - chosen.existing,
                                               reserved=chosen.reserved),
        slots_per_gpu=chosen.slots,
    )


def _allocation_policy(pools: Sequence[GpuPool], *, default: AllocationPolicy) -> tuple[str, str]:
    """The device plugin's allocation policy on the pools' nodes: ``distributed``, ``packed`` or
    ``mixed``, and a sentence on node labels that are neither (taken as ``distributed``).

    NB: a label that is no policy is read as the plugin's default, the weaker promise: the status
    must not claim packing that may not happen.
    """
    by_node: dict[str, str] = {}
    bad: list[str] = []
    for pool in pools:
        label = (pool.allocation_policy or "").strip()
        if not label:
            by_node[pool.node] = default
        elif label in ALLOCATION_POLICIES:
            by_node[pool.node] = label
        else:
            by_node[pool.node] = DEFAULT_ALLOCATION_POLICY
            bad.append(f"{pool.node} ({label!r})")
    policies = set(by_node.values())
    policy = policies.pop() if len(policies) == 1 else "mixed"
    note = (f" Label {LABEL_ALLOCATION_POLICY} of node(s) {', '.join(sorted(bad))} is neither distributed nor "
            "packed: taken as distributed; fix the label." if bad else "")
    if policy == "mixed":
        packed = sorted(n for n, p in by_node.items() if p == "packed")
        note = f" Packed on {', '.join(packed)}; distributed on the other node(s).{note}"
    return policy, note


def _slot_pool_note(chosen: _Option, *, k: int, policy: str | None) -> str:
    """What a device-plugin group is, and what the allocation policy makes of it, in words."""
    slots = chosen.slots or 1
    share = ("MPS pins each slot to that share of the GPU's memory" if chosen.mechanism == "mps"
             else "time-sliced: its memory is not isolated, each replica keeps to its budget")
    what = (f"A group is {k} slot(s) of one node's device-plugin pool, not one GPU: each slot is 1/{slots} "
            f"of a GPU ({share})")
    if k < slots:
        what += (f"; a GPU has {slots} slots and a group takes {k}, the others hold other groups, so a group is "
                 f"planned at {k}/{slots} of a full GPU's throughput")
    if policy == "packed":
        how = ("the device plugin's allocation policy packed puts slots on as few GPUs as it can (best effort, "
               "not guaranteed)")
    elif policy == "distributed":
        how = ("the device plugin's allocation policy distributed (its default) spreads slots over the node's "
               "GPUs, so a group's replicas may run on different GPUs")
    else:
        how = "the device plugin's allocation policy differs between the nodes"
    return f"{what}; {how}. Only DRA (sharing dra or dra-shares) guarantees one GPU."


def _shares_plan_of(
    chosen: _Option, *, spec: SLMServiceSpec, profile: Profile, product: str, memory_mib: int
) -> Plan:
    """A ``dra-shares`` plan: one claim per replica, sized in replicas."""
    assert chosen.share_request is not None and chosen.share is not None  # NB: set by _shares_option
    k = chosen.replicas_per_gpu
    placeable = min(chosen.desired, chosen.capacity)
    kv_gib = chosen.budget_gib - (profile.weights_gib or 0.0) - _overhead_gib(profile)
    per_replica = profile.tokens_per_second_per_gpu / k
    via_memory = chosen.share_request.shares is None
    return Plan(
        mechanism="dra-shares", gpu_product=product, resource_name=None,
        device_class_name=spec.gpu.device_class_name or DRA_DEVICE_CLASS, batch_size=profile.batch_size,
        replicas_per_gpu=k, gpus=math.ceil(chosen.desired / k), placeable_gpus=math.ceil(placeable / k),
        max_model_len=spec.workload.effective_max_model_len(), memory_budget_gib=round(chosen.budget_gib, 2),
        kv_cache_memory_bytes=int(max(kv_gib, profile.kv_cache_gib or 0.0) * GIB),
        gpu_memory_utilization=math.floor(chosen.budget_gib * 1024 / memory_mib * 1000) / 1000,
        tokens_per_second_per_gpu=round(profile.tokens_per_second_per_gpu, 1),
        active_thread_percentage=None, pinned_memory_limit_mib=None,
        replicas=chosen.desired, placeable_replicas=placeable, share_per_replica=round(chosen.share, 4),
        share_request=chosen.share_request,
        explanation=(
            f"dra-shares: {placeable}/{chosen.desired} replica(s) placeable, each {chosen.share:.3g} of a GPU "
            f"(1/{k}, k* replicas saturate one) × batch {profile.batch_size}, {per_replica:.0f} tok/s "
            f"(the GPU's plateau / {k}), {chosen.budget_gib:.1f} GiB budget"
            + (f"; these GPUs publish memory only, so the share is reserved as memory "
               f"({chosen.share_request.memory_mib} MiB per claim)" if via_memory else "")
        ),
    )


def desired_replicas(*, spec: SLMServiceSpec, per_replica: float, replicas_per_gpu: int) -> int:
    """``dra-shares`` replicas the spec asks for: ``scale.gpus`` × k*, or the fewest replicas whose
    predicted throughput (``per_replica`` each) meets the target with ``TARGET_HEADROOM``;
    ``minGPUs``/``maxGPUs`` bound it as GPU-equivalents (× k*)."""
    scale = spec.scale
    if scale.target_tokens_per_second is None:
        return int(scale.gpus or 0) * replicas_per_gpu
    wanted = math.ceil(scale.target_tokens_per_second * (1 + TARGET_HEADROOM) / max(per_replica, 1e-9))
    wanted = max(wanted, scale.min_gpus * replicas_per_gpu, 1)
    return min(wanted, scale.max_gpus * replicas_per_gpu) if scale.max_gpus is not None else wanted


def share_request(
    *, profile: Profile, devices: Sequence[SharedDevice], memory_mib: int
) -> tuple[ShareRequest, float, float]:
    """What one ``dra-shares`` replica's claim asks, the GPU fraction it reserves, and its vLLM budget (GiB).

    Its share of the GPU is 1/k*. With a ``shares`` capacity (N per GPU) the claim asks
    ceil(N/k*) shares (rounded up: Σ shares ≤ 1 stays true); where any GPU of the product publishes
    memory only, the share is reserved as memory instead: budget = max(memory at B*, share × usable
    memory). NB: the claim asks budget / USABLE_MEMORY_FRACTION, the replica's budget plus its part of
    what no replica may budget (CUDA contexts, fragmentation): the scheduler's Σ claims ≤ the GPU's
    memory is then exactly Σ budgets ≤ its usable memory.
    """
    k = max(profile.replicas_to_saturate, 1)
    share = 1 / k
    counts = [d.shares for d in devices]
    usable_gib = memory_mib / 1024 * USABLE_MEMORY_FRACTION
    if counts and all(n is not None for n in counts):
        total = min(n for n in counts if n is not None)
        shares = math.ceil(total / k - 1e-9)
        budget = profile.memory_per_replica_gib
        return ShareRequest(memory_mib=_claim_mib(budget), shares=shares), shares / total, budget
    budget = max(profile.memory_per_replica_gib, share * usable_gib)
    return ShareRequest(memory_mib=_claim_mib(budget), shares=None), share, budget


def _claim_mib(budget_gib: float) -> int:
    # NB: rounding noise must not push k claims of 1/k of a GPU over its memory (ceil of 5757.0000001).
    return math.ceil(budget_gib * 1024 / USABLE_MEMORY_FRACTION - 1e-6)


def _shares_option(
    pools: list[GpuPool], profile: Profile, spec: SLMServiceSpec, *, memory_mib: int, existing: int,
    pending: Sequence[ShareRequest],
) -> _Option:
    """What ``dra-shares`` would give: replicas wanted, and how many fit beside every claim already
    allocated or promised (first fit, as the scheduler's allocator takes a node's devices in order)."""
    mine = tuple(p for p in pools if p.sharing == "dra-shares")
    devices = [d for p in mine for d in p.devices]
    if not devices:
        return _Option("dra-shares", mine, 0, 0.0, 0,
                       why_not="no dra-shares GPUs (consumable DRA shares) of this product")
    k = max(profile.replicas_to_saturate, 1)
    request, share, budget = share_request(profile=profile, devices=devices, memory_mib=memory_mib)
    if not any(d.consumption(request) is not None for d in devices):
        return _Option("dra-shares", mine, 0, budget, 0, why_not=(
            f"a dra-shares replica needs {request.memory_mib} MiB, more than one GPU's memory"))
    desired = desired_replicas(spec=spec, per_replica=profile.tokens_per_second_per_gpu / k, replicas_per_gpu=k)
    after_pending, _ = first_fit(devices, pending)
    fits = fitting_replicas(after_pending, request, limit=max(0, desired - existing))
    return _Option("dra-shares", mine, k, budget, existing + fits, desired=desired, share_request=request, share=share)


def desired_gpus(*, spec: SLMServiceSpec, per_gpu: float) -> int:
    """GPU groups the spec asks for: a fixed count, or the target over one GPU's throughput."""
    scale = spec.scale
    if scale.target_tokens_per_second is None:
        return int(scale.gpus or 0)
    wanted = math.ceil(scale.target_tokens_per_second / max(per_gpu, 1e-9))
    wanted = max(wanted, scale.min_gpus, 1)
    return min(wanted, scale.max_gpus) if scale.max_gpus is not None else wanted


def tokens_per_second_per_gpu(*, profile: Profile, replicas: int) -> float:
    """Aggregate tokens/s of ``replicas`` replicas on one GPU.

    The profile knows one replica and the replicas that saturate the GPU; between them we
    interpolate linearly, which under-promises (measured gains flatten as bandwidth saturates, so
    the curve is concave).
    """
    saturating = max(profile.replicas_to_saturate, 1)
    if replicas >= saturating or saturating == 1:
        return profile.tokens_per_second_per_gpu
    one = profile.tokens_per_second_per_replica
    return one + (profile.tokens_per_second_per_gpu - one) * (replicas - 1) / (saturating - 1)


def _gpu_memory_mib(pools: list[GpuPool], product: str) -> int:
    labelled = [p.memory_mib for p in pools if p.memory_mib > 0]
    if labelled:
        return min(labelled)
    try:  # NB: a node without the nvidia.com/gpu.memory label; the GPU table knows the product
        return int(lookup_gpu(product).memory_gib * 1024)
    except ValueError:
        raise PlanningError("UnknownGPUMemory", f"nodes of {product} carry no nvidia.com/gpu.memory label and the "
                            "product is not in the GPU table; install GPU feature discovery") from None


def _mechanisms(
    sharing: str, profile: Profile, *, current_mechanism: str | None, existing_groups: int
) -> list[Mechanism]:
    """The mechanisms to try, best first.

    A profile without memory (``skip``) can only run one replica per whole GPU. With ``auto``,
    packing comes first when the profile says several replicas saturate a GPU, and the mechanism
    existing groups run under stays first while it still works.
    """
    if profile.memory_per_replica_gib <= 0:
        if sharing in SHARED_MECHANISMS:
            raise PlanningError("UnknownMemory", f"sharing: {sharing} needs the memory of one replica, and this "
                                "profile has none (profiling.mode skip?); use profiling.mode auto/estimate/static")
        return ["exclusive"]
    for mechanism in MECHANISMS:
        if sharing == mechanism:
            return [mechanism]
    # NB: with several replicas per GPU, dra-shares comes first: it packs replicas of every service
    # onto one GPU by the share each needs, so a service needing a fraction of a GPU takes that
    # fraction instead of a whole group, and the scheduler keeps memory and shares within each GPU
    # across all tenants. Where one replica saturates a GPU, sharing gains nothing: whole GPUs first.
    order: list[Mechanism] = (["exclusive", "dra", "dra-shares", "mps", "time-slicing"]
                              if profile.replicas_to_saturate <= 1
                              else ["dra-shares", "dra", "mps", "time-slicing", "exclusive"])
    for mechanism in order:
        if mechanism == current_mechanism and existing_groups:
            order.remove(mechanism)  # keep what runs unless it no longer works
            order.insert(0, mechanism)
            break
    return order


def _option(
    mechanism: Mechanism,
    pools: list[GpuPool],
    profile: Profile,
    usable_gib: float,
    spec: SLMServiceSpec,
    existing_groups: int,
    *,
    reserved: int = 0,
) -> _Option:
    """What ``mechanism`` would give: replicas per GPU, each one's memory budget, groups that fit."""
    need_gib = profile.memory_per_replica_gib
    mine = tuple(p for p in pools if p.sharing == POOL_OF_MECHANISM[mechanism]
                 and (mechanism == "dra" or p.resource_name == spec.gpu.resource_name
                      or spec.gpu.resource_name == GPU_RESOURCE))
    if mine and mechanism != "dra":
        # NB: pods request one resource name; don't count another name's slots as ours.
        mine = tuple(p for p in mine if p.resource_name == mine[0].resource_name)
    if not mine:
        return _Option(mechanism, mine, 0, 0.0, 0, why_not=f"no {mechanism} GPUs of this product")
    saturating = max(profile.replicas_to_saturate, 1)
    if mechanism == "exclusive":
        k, budget = 1, usable_gib
    elif mechanism in ("mps", "time-slicing"):
        # NB: the device plugin hands out slots from any GPU of the node, so a replica can only
        # count on total/replicas of a GPU: MPS pins exactly that, and under time-slicing nothing
        # else keeps the budgets of one GPU below what it has. A group may land on any node of the
        # pool, so the budget is the smallest slot (the node with the most replicas per GPU).
        slots = max(p.slots_per_gpu for p in mine)
        budget = usable_gib / slots
        if need_gib > budget:
            return _Option(mechanism, mine, 0, budget, 0, why_not=(
                f"a {mechanism} slot ({slots} per GPU) gives {budget:.1f} GiB, a replica needs {need_gib:.1f}"))
        k = min(saturating, min(p.slots_per_gpu for p in mine))
    else:
        k = max(1, min(saturating, int(usable_gib // need_gib))) if need_gib > 0 else 1
        budget = usable_gib / k
    # A DRA group takes one whole device; a device-plugin group takes k slots of one node. What
    # other groups were promised but don't hold yet is not free.
    if mechanism == "dra":
        fits = max(0, sum(p.free for p in mine) - reserved)
    else:
        fits = max(0, sum(p.free // k for p in mine) - math.ceil(reserved / k))
    if mechanism in DEVICE_PLUGIN_SHARED_MECHANISMS:
        per_group = _group_tokens_per_second(profile=profile, k=k, pools=mine)
        desired = desired_gpus(spec=spec, per_gpu=per_group)
        return _Option(mechanism, mine, k, budget, existing_groups + fits, desired=desired,
                       slots=max(p.slots_per_gpu for p in mine), group_tokens_per_second=per_group,
                       existing=existing_groups, reserved=reserved)
    desired = desired_gpus(spec=spec, per_gpu=tokens_per_second_per_gpu(profile=profile, replicas=k))
    return _Option(mechanism, mine, k, budget, existing_groups + fits, desired=desired,
                   existing=existing_groups, reserved=reserved)


def group_nodes(*, pools: Sequence[GpuPool], k: int, count: int, reserved: int = 0) -> tuple[str, ...]:
    """Nodes for ``count`` new device-plugin groups of ``k`` slots each: best fit, the node with the
    fewest free slots that still holds a group first, so that nodes fill up and whole nodes stay
    free for larger groups. ``reserved`` slots promised to unpinned groups are left on the nodes
    with the most room. Side-effect free."""
    if k < 1 or count < 1:
        return ()
    room = [node for pool in sorted(pools, key=lambda p: (p.free, p.node)) for node in [pool.node] * (pool.free // k)]
    usable = room[:max(0, len(room) - math.ceil(reserved / k))]
    return tuple(usable[:count])


def _group_tokens_per_second(*, profile: Profile, k: int, pools: Sequence[GpuPool]) -> float:
    """What a device-plugin group of ``k`` slots delivers: k slots' share of a full GPU's throughput
    (a GPU of ``s`` slots, all busy, delivers what ``s`` replicas on one GPU do), on the pool whose
    slots are worth least.

    NB: a group is not one GPU. Its slots may be on different GPUs (allocation policy
    ``distributed``), and a GPU has room for other groups when it has more slots than k; counting a
    group as a GPU's plateau would then promise more than the GPUs have. Where slots ≤ k* (k is
    then the slots), this is one GPU of ``k`` replicas, as before.
    """
    per_slot = min(tokens_per_second_per_gpu(profile=profile, replicas=p.slots_per_gpu) / max(p.slots_per_gpu, 1)
                   for p in pools)
    return per_slot * k


def _overhead_gib(profile: Profile) -> float:
    if profile.weights_gib is not None and profile.kv_cache_gib is not None:
        return max(profile.memory_per_replica_gib - profile.weights_gib - profile.kv_cache_gib, 0.0)
    return DEFAULT_REPLICA_OVERHEAD_GIB


def _how_to_enable(sharing: str, product: str) -> str:
    if sharing == "dra-shares":
        return ("Run NVIDIA's DRA driver with its ConsumableShares feature gate and --consumable-shares=N "
                f"(or =memory) so {product} GPUs are published with allowMultipleAllocations (docs/sharing.md), "
                "or set spec.gpu.sharing: auto")
    if sharing == "dra":
        return ("Install NVIDIA's DRA driver (k8s-dra-driver-gpu) so nodes publish ResourceSlices of driver "
                f"gpu.nvidia.com for {product}, or set spec.gpu.sharing: auto")
    if sharing in ("mps", "time-slicing"):
        return (f"Configure the NVIDIA device plugin with sharing.{'mps' if sharing == 'mps' else 'timeSlicing'}."
                "resources: [{name: nvidia.com/gpu, replicas: 4}] on the "
                f"{product} nodes (label nvidia.com/device-plugin.config), or set spec.gpu.sharing: auto")
    return (f"Add {product} nodes with free nvidia.com/gpu, or enable sharing (device-plugin MPS/time-slicing "
            "or NVIDIA's DRA driver) so replicas can share GPUs")

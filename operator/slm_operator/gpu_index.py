"""The GPU inventory the planner reads, kept by watches: index entries and the placement ledger.

kopf indexes (in-memory, watch-fed caches) hold what planning needs of GPU nodes, NVIDIA
ResourceSlices, allocated ResourceClaims, our own group StatefulSets and ``dra-shares`` pods; the
functions ``*_entry`` here turn one watched object into its index entry (``None``: not indexed).
The device-plugin slots that pods hold are counted by :class:`PodSlots` instead, fed by the
operator's own list+watch of bound pods (``kube.PodSlotWatch``): a kopf index would take every
pod of the cluster through kopf's per-object machinery at start-up (minutes at a few thousand
pods), where this keeps one small record per GPU pod and nothing of the others.
:class:`GpuIndex` reads both back, and :meth:`GpuIndex.inventory` builds the planner's
:class:`~slm_operator.planning.inventory.Inventory` without a single API call.

The watch lags our own writes by a moment: :class:`PlacementLedger` remembers the groups just
applied until the StatefulSet watch reports them, so two plans made a second apart never both
take the same free GPUs.

Side-effect free apart from the ledger's own memory: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from slm_operator.constants import (
    ANNOTATION_START,
    DRA_DRIVER,
    LABEL_GPU_PRODUCT,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    LABEL_PACKED,
    LABEL_SERVICE,
    MANAGED_BY,
    START_GRANTED,
    group_name,
)
from slm_operator.planning.groups import GroupState, group_from_statefulset
from slm_operator.planning.inventory import (
    Inventory,
    build_inventory,
    pod_gpu_requests,
    product_memory_gib,
    unbound_demand,
)
from slm_operator.planning.shares import allocated_devices
from slm_operator.planning.start_gate import StartingPod

#: An index entry: ``{key: value}``, as a kopf index function returns it.
Entry = dict[str, Any]


# --- Index entries: one watched object → what the inventory needs of it ---------------------------

def node_entry(
    *, name: str, labels: Mapping[str, str], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> Entry | None:
    """A GPU node (labelled with a product): its labels, schedulability, allocatable and Ready."""
    if LABEL_GPU_PRODUCT not in labels:
        return None
    return {name: {
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"unschedulable": spec.get("unschedulable", False)},
        "status": {"allocatable": dict(status.get("allocatable") or {}),
                   "conditions": [dict(c) for c in status.get("conditions") or () if c.get("type") == "Ready"]},
    }}


def _our_group(*, namespace: str, labels: Mapping[str, str], marker: tuple[str, str]) -> str | None:
    """``namespace/group`` of one of our replicas' objects (``marker``: the label that says so);
    ``None`` for anyone else's, or a hand-edited group label (not a crash)."""
    index = labels.get(LABEL_GROUP) or "0"
    if labels.get(marker[0]) == marker[1] and LABEL_SERVICE in labels and index.isdigit():
        return f"{namespace}/{group_name(service=labels[LABEL_SERVICE], index=int(index))}"
    return None


def slice_entry(*, name: str, spec: Mapping[str, Any]) -> Entry | None:
    """A ResourceSlice of NVIDIA's DRA driver."""
    if spec.get("driver") != DRA_DRIVER:
        return None
    return {name: {"spec": dict(spec)}}


def claim_entry(
    *, uid: str, namespace: str, name: str, status: Mapping[str, Any], labels: Mapping[str, str] | None = None
) -> Entry | None:
    """An allocated ResourceClaim: which devices it holds (and what it consumes of shared ones);
    for a ``dra-shares`` replica's claim, also the group it belongs to."""
    allocation = status.get("allocation")
    if not allocation:
        return None
    entry: dict[str, Any] = {"name": f"{namespace}/{name}", "status": {"allocation": dict(allocation)}}
    group = _our_group(namespace=namespace, labels=labels or {}, marker=(LABEL_PACKED, "true"))
    if group:
        entry["group"] = group
    return {uid: entry}


def packed_pod_entry(
    *, uid: str, namespace: str, name: str, labels: Mapping[str, str], annotations: Mapping[str, str],
    meta: Mapping[str, Any], status: Mapping[str, Any],
) -> Entry | None:
    """A ``dra-shares`` replica's pod: what the start gate needs (its claims, granted, Ready)."""
    if labels.get(LABEL_PACKED) != "true":
        return None
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    claims = [f"{namespace}/{c['resourceClaimName']}" for c in status.get("resourceClaimStatuses") or ()
              if c.get("resourceClaimName")]
    return {uid: {"namespace": namespace, "name": name, "created": str(meta.get("creationTimestamp") or ""),
                  "claims": claims, "granted": annotations.get(ANNOTATION_START) == START_GRANTED,
                  "ready": ready, "deleting": bool(meta.get("deletionTimestamp"))}}


def group_entry(
    *, namespace: str, name: str, labels: Mapping[str, str], annotations: Mapping[str, str], spec: Mapping[str, Any]
) -> Entry | None:
    """One of our group StatefulSets: what it was promised, so capacity not yet bound is not
    planned twice."""
    group = group_from_statefulset({"metadata": {"namespace": namespace, "name": name, "labels": dict(labels),
                                                 "annotations": dict(annotations)}, "spec": spec})
    return {group.key: group} if group else None


# --- Device-plugin slots held by pods: fed by the operator's own pod watch ---------------------------

@dataclasses.dataclass(frozen=True)
class SlotUse:
    """What one bound, unfinished pod holds of device-plugin GPUs: its node, the slots per resource
    name, and, for one of our replicas, its group (``namespace/name``)."""

    node: str
    slots: tuple[tuple[str, int], ...]
    group: str | None = None


def pod_key(pod: Mapping[str, Any]) -> str:
    """The pod's uid (its ``namespace/name`` where a fake or partial object has none)."""
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def slot_use(pod: Mapping[str, Any]) -> SlotUse | None:
    """One pod as the API returns it → what it holds; ``None`` when it holds no slot: not bound to
    a node, Succeeded or Failed (the kubelet has given its devices back), or no GPU request."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    slots = tuple(sorted((r, n) for r, n in pod_gpu_requests(pod).items() if n > 0))
    if not slots:
        return None
    meta = pod.get("metadata") or {}
    group = _our_group(namespace=meta.get("namespace") or "", labels=meta.get("labels") or {},
                       marker=(LABEL_MANAGED_BY, MANAGED_BY))
    return SlotUse(node=node, slots=slots, group=group)


class PodSlots:
    """The device-plugin slots every GPU pod of the cluster holds, per node, and how many of each of
    our groups' pods are bound where: all the inventory needs of pods, one :class:`SlotUse` per GPU
    pod (pods without GPUs are not kept at all).

    Fed by a list+watch: :meth:`replace` with a full listing, :meth:`apply` with each watch event.
    Not synced until the first listing is in: planning on a partial count would take slots that
    are in use. Thread-safe: the watch runs in its own thread, handlers read from theirs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, SlotUse] = {}
        self._used: dict[tuple[str, str], int] = {}
        self._groups: dict[str, dict[str, int]] = {}  # group → node → bound pods
        self._synced = threading.Event()

    def replace(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """A full listing: what it holds replaces everything (pods deleted while no watch ran are
        gone with it). ``pods`` may be a generator; it is consumed before the state changes."""
        uses = {pod_key(p): use for p in pods if (use := slot_use(p)) is not None}
        with self._lock:
            self._pods, self._used, self._groups = {}, {}, {}
            for key, use in uses.items():
                self._add(key, use)
        self._synced.set()

    def apply(self, *, event_type: str, pod: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of ``pod``; other types change nothing."""
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = pod_key(pod)
        use = slot_use(pod) if event_type != "DELETED" else None
        with self._lock:
            old = self._pods.get(key)
            if old == use:
                return
            if old is not None:
                self._remove(key, old)
            if use is not None:
                self._add(key, use)

    def _add(self, key: str, use: SlotUse) -> None:
        self._pods[key] = use
        for resource, count in use.slots:
            self._used[(use.node, resource)] = self._used.get((use.node, resource), 0) + count
        if use.group:
            on = self._groups.setdefault(use.group, {})
            on[use.node] = on.get(use.node, 0) + 1

    def _remove(self, key: str, use: SlotUse) -> None:
        del self._pods[key]
        for resource, count in use.slots:
            left = self._used[(use.node, resource)] - count
            if left:
                self._used[(use.node, resource)] = left
            else:
                del self._used[(use.node, resource)]
        if use.group:
            on = self._groups[use.group]
            on[use.node] -= 1
            if not on[use.node]:
                del on[use.node]
            if not on:
                del self._groups[use.group]

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first listing; whether it is in."""
        return self._synced.wait(timeout)

    def used_slots(self) -> dict[tuple[str, str], int]:
        """``(node, resource name)`` → slots held."""
        with self._lock:
            return dict(self._used)

    def bound_groups(self) -> tuple[dict[str, int], dict[str, str]]:
        """Per group of ours: its bound pods, and a node one of them is on."""
        with self._lock:
            return ({g: sum(on.values()) for g, on in self._groups.items()},
                    {g: min(on) for g, on in self._groups.items()})

    def __len__(self) -> int:
        with self._lock:
            return len(self._pods)


# --- The placement ledger ---------------------------------------------------------------------------

class PlacementLedger:
    """Groups just applied, until the StatefulSet watch reports them (or ``ttl_seconds`` pass).

    Thread-safe: handlers run in executor threads.
    """

    def __init__(self, *, ttl_seconds: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: dict[str, tuple[float, GroupState]] = {}

    def record(self, group: GroupState) -> None:
        with self._lock:
            self._recent[group.key] = (self._clock(), group)

    def merged_with(self, indexed: Mapping[str, GroupState]) -> dict[str, GroupState]:
        """The indexed groups plus those recorded and not indexed yet; forgets the ones the watch
        has caught up with and the expired ones (their objects are long gone)."""
        groups = dict(indexed)
        now = self._clock()
        with self._lock:
            for key, (at, group) in list(self._recent.items()):
                if key in groups or now - at > self._ttl:
                    del self._recent[key]
                else:
                    groups[key] = group
        return groups

    def __len__(self) -> int:
        with self._lock:
            return len(self._recent)


class StartGrants:
    """Start permissions just granted, until the pod watch shows them (or ``ttl_seconds`` pass), so
    an event handled before the watch caught up never grants a second pod on the same GPU.

    Thread-safe: handlers run in executor threads.
    """

    def __init__(self, *, ttl_seconds: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: dict[str, float] = {}

    def record(self, pod_key: str) -> None:
        with self._lock:
            self._recent[pod_key] = self._clock()

    def merged_with(self, pods: list[StartingPod]) -> list[StartingPod]:
        """``pods`` with the ones granted here marked granted; forgets those the watch shows."""
        now = self._clock()
        merged = []
        with self._lock:
            for pod in pods:
                at = self._recent.get(pod.key)
                if at is not None and (pod.granted or now - at > self._ttl):
                    del self._recent[pod.key]
                elif at is not None:
                    pod = dataclasses.replace(pod, granted=True)
                merged.append(pod)
            seen = {p.key for p in pods}
            for key in [k for k in self._recent if k not in seen]:
                del self._recent[key]  # NB: the pod is gone
        return merged


# --- Reading the indexes back ------------------------------------------------------------------------

class GpuIndex:
    """The five indexes (``gpu_nodes``, ``gpu_slices``, ``gpu_claims``, ``slm_groups``,
    ``packed_pods``) as kopf passes them to handlers (mappings of keys to collections of values),
    and the slots the pod watch counts."""

    NAMES = ("gpu_nodes", "gpu_slices", "gpu_claims", "slm_groups", "packed_pods")

    def __init__(self, indexes: Mapping[str, Any], *, pods: PodSlots) -> None:
        self._indexes = indexes
        self._pods = pods

    def _values(self, name: str) -> list[Any]:
        index = self._indexes[name]
        return [value for key in index for value in index[key]]

    def nodes(self) -> list[dict[str, Any]]:
        return self._values("gpu_nodes")

    def gpu_memory_gib(self, product: str) -> float | None:
        """One ``product`` GPU's memory as the nodes label it (``None`` where none says)."""
        return product_memory_gib(nodes=self.nodes(), product=product)

    def inventory(self, *, ledger: PlacementLedger, exclude_service: str | None = None) -> Inventory:
        """The planner's inventory: free slots and devices, minus what placed groups still need.

        ``exclude_service`` (``namespace/name``) leaves out that service's own groups: it is the one
        being planned, and they count as its existing groups instead.
        """
        claims = self._values("gpu_claims")
        groups = ledger.merged_with({g.key: g for g in self._values("slm_groups")})
        bound, node_of = self._pods.bound_groups()
        allocated_per_group: dict[str, int] = {}
        for claim in claims:
            if claim.get("group"):
                allocated_per_group[claim["group"]] = allocated_per_group.get(claim["group"], 0) + 1
        demand = unbound_demand(groups=groups.values(), bound_pods=bound, group_nodes=node_of,
                                allocated_claims=[c["name"] for c in claims], exclude_service=exclude_service,
                                allocated_per_group=allocated_per_group)
        return build_inventory(nodes=self.nodes(), used_slots=self._pods.used_slots(),
                               resource_slices=self._values("gpu_slices"), resource_claims=claims, demand=demand)

    def starting_pods(self) -> list[StartingPod]:
        """Every ``dra-shares`` pod, with the GPUs its allocated claims hold."""
        devices_of = {c["name"]: tuple(key for _, key in allocated_devices(c)) for c in self._values("gpu_claims")}
        return [StartingPod(namespace=p["namespace"], name=p["name"], created=p["created"],
                            devices=tuple(d for claim in p["claims"] for d in devices_of.get(claim, ())),
                            granted=p["granted"], ready=p["ready"], deleting=p["deleting"])
                for p in self._values("packed_pods")]


def busiest_free_product(inventory: Inventory) -> str | None:
    """The product with the most free GPUs (device-plugin slots count 1/slots), for a service
    without ``spec.gpu.product``; ``None`` on a cluster without labelled GPU nodes."""
    free: dict[str, float] = {}
    for pool in inventory.pools:
        free[pool.product] = free.get(pool.product, 0.0) + pool.free / max(pool.slots_per_gpu, 1)
    return max(sorted(free), key=lambda p: free[p]) if free else None

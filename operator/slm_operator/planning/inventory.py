"""The cluster's GPU inventory, read from plain Node/Pod/ResourceSlice/ResourceClaim dicts.

Device-plugin GPUs are described by the labels NVIDIA's GPU feature discovery and device plugin
publish (``nvidia.com/gpu.product``, ``.memory``, ``.count``, ``.replicas``, ``.sharing-strategy``)
and by the node's allocatable ``nvidia.com/gpu`` slots. DRA GPUs are the devices of ResourceSlices
whose driver is NVIDIA's (``gpu.nvidia.com``): whole devices (pool sharing ``dra``) minus those
already allocated to a claim, and devices that allow multiple allocations (``dra-shares``) with
the capacity their allocated claims consume (``consumedCapacity``).

Side-effect free: callers pass what they listed or indexed; nothing here talks to the API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from slm_operator.constants import (
    DEVICE_PLUGIN_RESOURCES,
    DRA_CAPACITY_MEMORY,
    DRA_CAPACITY_SHARES,
    DRA_DRIVER,
    GPU_RESOURCE,
    LABEL_ALLOCATION_POLICY,
    LABEL_GPU_COUNT,
    LABEL_GPU_MEMORY_MIB,
    LABEL_GPU_PRODUCT,
    LABEL_GPU_REPLICAS,
    LABEL_GPU_SHARING,
    POOL_OF_MECHANISM,
    SHARED_PRODUCT_SUFFIX,
    PoolSharing,
)
from slm_operator.planning.groups import GroupState
from slm_operator.planning.shares import MIB, SharedDevice, ShareRequest, consumed, parse_quantity


@dataclasses.dataclass(frozen=True)
class GpuPool:
    """The GPUs of one node that one mechanism can hand out."""

    node: str
    product: str
    memory_mib: int
    gpu_count: int
    sharing: PoolSharing
    #: Device-plugin slots per physical GPU (``nvidia.com/gpu.replicas``); 1 for DRA and ``none``.
    slots_per_gpu: int
    #: Extended resource the pods request (device plugin), or ``None`` for DRA.
    resource_name: str | None
    #: Slots (device plugin) or whole devices (DRA) still free on this node.
    free: int
    #: DRA only: names of the devices still unallocated.
    free_devices: tuple[str, ...] = ()
    #: ``dra-shares`` only: every shared device of the node with what is consumed of it.
    devices: tuple[SharedDevice, ...] = ()
    #: Device plugin only: the node's label ``slm.pareto.dev/gpu-allocation-policy`` as written
    #: (``None`` when unset); the planner checks it and falls back to the operator's setting.
    allocation_policy: str | None = None


@dataclasses.dataclass(frozen=True)
class Inventory:
    pools: tuple[GpuPool, ...]
    #: GPU capacity promised to planned groups but not bound yet, per (product, pool sharing):
    #: device-plugin slots of pods not yet scheduled (a StatefulSet creates its pods one by one)
    #: and DRA devices of claims not yet allocated. Without it, plans made seconds apart would
    #: each see the same free GPUs and over-place.
    reserved: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    #: ``dra-shares``: per product, the claims of planned replicas not allocated yet (every
    #: service's, the planned one's too: its placed replicas count as its existing ones).
    pending_shares: Mapping[str, tuple[ShareRequest, ...]] = dataclasses.field(default_factory=dict)

    def products(self) -> list[str]:
        return sorted({p.product for p in self.pools})

    def for_product(self, product: str | None) -> list[GpuPool]:
        return [p for p in self.pools if product is None or p.product == product]


@dataclasses.dataclass(frozen=True)
class Demand:
    """Capacity promised to groups but not yet bound.

    ``on_nodes``: slots still owed to groups that already have a pod on a node — their other pods
    must land there too (pod affinity), so that node's free slots are theirs. ``anywhere``: per
    (product, pool sharing), slots or devices of groups with nothing bound yet.
    """

    on_nodes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    anywhere: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    #: ``dra-shares``: per product, the claims of replicas whose claim is not allocated yet.
    shares: Mapping[str, tuple[ShareRequest, ...]] = dataclasses.field(default_factory=dict)


def unbound_demand(
    *,
    groups: Iterable[GroupState],
    bound_pods: Mapping[str, int],
    group_nodes: Mapping[str, str] | None = None,
    allocated_claims: Iterable[str],
    allocated_per_group: Mapping[str, int] | None = None,
) -> Demand:
    """What planned groups still need, per node where known. Side-effect free.

    ``bound_pods`` counts, per group key, its pods that have a node, and ``group_nodes`` says which
    node. ``allocated_per_group`` counts, per ``dra-shares`` group key, its replicas' claims that
    are allocated; the others are pending.

    NB: the groups of the service being planned count too. The planner counts them as placed, and
    what they still need is not room for its new groups: left out, a group pinned to a node whose
    last free slot its own first group is owed would not fit when its pods come.
    """
    allocated = set(allocated_claims)
    nodes_of = group_nodes or {}
    on_nodes: dict[str, int] = {}
    anywhere: dict[tuple[str, str], int] = {}
    shares: dict[str, list[ShareRequest]] = {}
    for group in groups:
        if group.mechanism == "dra-shares":
            missing = max(0, group.replicas - (allocated_per_group or {}).get(group.key, 0))
            if missing and group.share_request is not None:
                shares.setdefault(group.product, []).extend([group.share_request] * missing)
            continue
        pool_sharing = POOL_OF_MECHANISM.get(group.mechanism)
        if pool_sharing is None:
            continue
        pool = (group.product, pool_sharing)
        if group.mechanism == "dra":
            if group.claim_key not in allocated:
                anywhere[pool] = anywhere.get(pool, 0) + 1
            continue
        missing = max(0, group.replicas - bound_pods.get(group.key, 0))
        # NB: a pinned group's pods can only land on its node: what it still needs is owed there,
        # before any of them is bound.
        node = nodes_of.get(group.key) or group.pinned_node
        if not missing:
            continue
        if node:
            on_nodes[node] = on_nodes.get(node, 0) + missing
        else:
            anywhere[pool] = anywhere.get(pool, 0) + missing
    return Demand(on_nodes=on_nodes, anywhere=anywhere, shares={p: tuple(r) for p, r in shares.items()})


def build_inventory(
    *,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]] = (),
    used_slots: Mapping[tuple[str, str], int] | None = None,
    resource_slices: Iterable[Mapping[str, Any]] = (),
    resource_claims: Iterable[Mapping[str, Any]] = (),
    demand: Demand | None = None,
) -> Inventory:
    """Describe every GPU node. Pods are used only for the slots their containers request;
    ``used_slots`` (``(node, resource)`` → slots, as the operator's pod watch counts them) adds to them.

    Side-effect free. Unschedulable (cordoned) nodes and nodes that are not Ready are left out,
    because the scheduler would not place a new replica there either.
    """
    used: dict[tuple[str, str], int] = dict(used_slots or {})
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed"):
            continue
        for resource, count in pod_gpu_requests(pod).items():
            used[(node, resource)] = used.get((node, resource), 0) + count

    allocated = set()
    use: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    for claim in resource_claims:
        allocation = (claim.get("status") or {}).get("allocation") or {}
        for r in (allocation.get("devices") or {}).get("results") or ():
            device_id = (r.get("driver"), r.get("pool"), r.get("device"))
            allocated.add(device_id)
            memory, shares = consumed(r.get("consumedCapacity"))
            before = use.get(device_id, (0, 0, 0))
            use[device_id] = (before[0] + memory, before[1] + shares, before[2] + 1)
    devices_by_node: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    shared_by_node: dict[str, list[SharedDevice]] = {}
    for rs in resource_slices:
        spec = rs.get("spec") or {}
        if spec.get("driver") != DRA_DRIVER or not spec.get("nodeName"):
            continue
        pool = (spec.get("pool") or {}).get("name")
        for device in spec.get("devices") or ():
            if device.get("allowMultipleAllocations"):
                shared_by_node.setdefault(spec["nodeName"], []).append(
                    _shared_device(device, pool=pool or "", node=spec["nodeName"], use=use))
            elif (DRA_DRIVER, pool, device.get("name")) not in allocated:
                devices_by_node.setdefault(spec["nodeName"], []).append((device["name"], device))
            else:
                devices_by_node.setdefault(spec["nodeName"], [])

    pools: list[GpuPool] = []
    for node in nodes:
        meta = node.get("metadata") or {}
        name = meta.get("name", "")
        labels = meta.get("labels") or {}
        if not _schedulable(node) or LABEL_GPU_PRODUCT not in labels:
            continue
        # NB: GPU feature discovery appends "-SHARED" to the product of MPS/time-sliced nodes
        # (unless renameByDefault); it is the same GPU, and the sharing strategy label says how.
        product = labels[LABEL_GPU_PRODUCT].removesuffix(SHARED_PRODUCT_SUFFIX)
        memory_mib = _int(labels.get(LABEL_GPU_MEMORY_MIB))
        count = _int(labels.get(LABEL_GPU_COUNT))
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        plugin_resource = next((r for r in DEVICE_PLUGIN_RESOURCES if _int(allocatable.get(r)) > 0), None)
        if plugin_resource is not None:
            sharing = _device_plugin_sharing(labels.get(LABEL_GPU_SHARING))
            slots = max(1, _int(labels.get(LABEL_GPU_REPLICAS)) or 1)
            total = _int(allocatable.get(plugin_resource))
            owed = demand.on_nodes.get(name, 0) if demand else 0
            pools.append(GpuPool(
                node=name, product=product, memory_mib=memory_mib,
                gpu_count=count or total // slots, sharing=sharing,
                slots_per_gpu=slots if sharing != "none" else 1, resource_name=plugin_resource,
                free=max(0, total - used.get((name, plugin_resource), 0) - owed),
                allocation_policy=labels.get(LABEL_ALLOCATION_POLICY),
            ))
        if name in devices_by_node:
            free_devices = tuple(sorted(d for d, _ in devices_by_node[name]))
            pools.append(GpuPool(
                node=name, product=product, memory_mib=memory_mib,
                gpu_count=count or len(free_devices), sharing="dra", slots_per_gpu=1,
                resource_name=None, free=len(free_devices), free_devices=free_devices,
            ))
        if name in shared_by_node:
            shared = tuple(sorted(shared_by_node[name], key=lambda d: (_device_order(d.name), d.name)))
            unused = tuple(d.name for d in shared if not d.allocations)
            pools.append(GpuPool(
                node=name, product=product, memory_mib=memory_mib, gpu_count=count or len(shared),
                sharing="dra-shares", slots_per_gpu=1, resource_name=None, free=len(unused),
                free_devices=unused, devices=shared,
            ))
    return Inventory(pools=tuple(sorted(pools, key=lambda p: (p.product, p.sharing, p.node))),
                     reserved=dict(demand.anywhere) if demand else {},
                     pending_shares=dict(demand.shares) if demand else {})


def _shared_device(
    device: Mapping[str, Any], *, pool: str, node: str, use: Mapping[tuple[str, str, str], tuple[int, int, int]]
) -> SharedDevice:
    """A device with ``allowMultipleAllocations``: its capacities and what allocations consume."""
    capacity = device.get("capacity") or {}
    shares = (capacity.get(DRA_CAPACITY_SHARES) or {}).get("value")
    used_memory, used_shares, allocations = use.get((DRA_DRIVER, pool, device.get("name", "")), (0, 0, 0))
    return SharedDevice(
        driver=DRA_DRIVER, pool=pool, name=device.get("name", ""), node=node,
        memory_mib=int(parse_quantity((capacity.get(DRA_CAPACITY_MEMORY) or {}).get("value", 0)) // MIB),
        shares=int(parse_quantity(shares)) if shares is not None else None,
        used_memory_mib=used_memory, used_shares=used_shares, allocations=allocations,
    )


def _device_order(name: str) -> int:
    """``gpu-10`` after ``gpu-9``: the number at the end of a device name (0 without one)."""
    digits = name[len(name.rstrip("0123456789")):]
    return int(digits) if digits else 0


def pod_gpu_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Device-plugin GPU slots a pod's containers ask for, per resource name."""
    spec = pod.get("spec") or {}
    totals: dict[str, int] = {}
    for container in spec.get("containers") or ():
        requests = ((container.get("resources") or {}).get("limits") or {}) | (
            (container.get("resources") or {}).get("requests") or {})
        for resource in DEVICE_PLUGIN_RESOURCES:
            if resource in requests:
                totals[resource] = totals.get(resource, 0) + _int(requests[resource])
    return totals


def _device_plugin_sharing(strategy: str | None) -> PoolSharing:
    """The device plugin's ``nvidia.com/gpu.sharing-strategy`` label; unshared when absent."""
    if strategy == "mps":
        return "mps"
    if strategy == "time-slicing":
        return "time-slicing"
    return "none"


def cordoned(node: Mapping[str, Any]) -> bool:
    """Cordoned, or tainted against our pods (they tolerate only ``nvidia.com/gpu``): the scheduler
    places no new replica there (those running stay). Side-effect free."""
    spec = node.get("spec") or {}
    return bool(spec.get("unschedulable")) or any(
        t.get("effect") in ("NoSchedule", "NoExecute") and t.get("key") != GPU_RESOURCE
        for t in spec.get("taints") or ())


def _schedulable(node: Mapping[str, Any]) -> bool:
    """Not :func:`cordoned` and Ready: the scheduler would place a new replica there (else a group
    pinned there would never start)."""
    if cordoned(node):
        return False
    conditions = (node.get("status") or {}).get("conditions") or ()
    ready = [c for c in conditions if c.get("type") == "Ready"]
    return not ready or ready[0].get("status") == "True"


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def product_memory_gib(*, nodes: Iterable[Mapping[str, Any]], product: str) -> float | None:
    """Memory of one ``product`` GPU from the nodes' ``nvidia.com/gpu.memory`` label (MiB), the
    smallest where nodes disagree; ``None`` where no node says. Side-effect free.

    NB: a profile measured on a GPU the profiler's table does not know (or on a MIG slice) is
    sized from this, not from the table.
    """
    sizes = [_int(labels.get(LABEL_GPU_MEMORY_MIB)) for node in nodes
             if (labels := (node.get("metadata") or {}).get("labels") or {}).get(LABEL_GPU_PRODUCT) == product]
    known = [mib for mib in sizes if mib > 0]
    return round(min(known) / 1024, 3) if known else None


# --- What is free, to tell when waiting services may fit now ----------------------------------------

#: One comparable measure of free capacity: ``(product, pool sharing, measure)``.
CapacityKey = tuple[str, str, str]


def free_capacity(inventory: Inventory) -> dict[CapacityKey, int]:
    """Per GPU product and pool sharing: what is free in all, less what is promised but not bound
    (``net``), and the most free on one node (``node``; a group's pods all land on one node).
    ``dra-shares`` measures free memory (MiB) and shares over the shared devices, less the pending
    claims', and the most free memory on one device (``device``). Side-effect free.

    NB: net of what is promised, so a pod binding (promised → used) changes nothing here: only
    capacity that really freed or appeared (a pod or group gone, a node or device added) grows it.
    """
    free: dict[CapacityKey, int] = {}

    def add(key: CapacityKey, value: int) -> None:
        free[key] = free.get(key, 0) + value

    for pool in inventory.pools:
        if pool.sharing == "dra-shares":
            for device in pool.devices:
                left = device.memory_mib - device.used_memory_mib
                add((pool.product, pool.sharing, "memory"), left)
                device_key = (pool.product, pool.sharing, "device")
                free[device_key] = max(free.get(device_key, 0), left)
                if device.shares is not None:
                    add((pool.product, pool.sharing, "shares"), device.shares - device.used_shares)
            continue
        add((pool.product, pool.sharing, "net"), pool.free)
        node_key = (pool.product, pool.sharing, "node")
        free[node_key] = max(free.get(node_key, 0), pool.free)
    for (product, sharing), count in inventory.reserved.items():
        add((product, sharing, "net"), -count)
    for product, requests in inventory.pending_shares.items():
        add((product, "dra-shares", "memory"), -sum(r.memory_mib for r in requests))
        add((product, "dra-shares", "shares"), -sum(r.shares or 1 for r in requests))
    return free


def grown_products(before: Mapping[CapacityKey, int], after: Mapping[CapacityKey, int]) -> set[str]:
    """The GPU products of which some measure of :func:`free_capacity` grew from ``before`` to
    ``after`` (a measure absent is 0): where a service that waits for capacity may fit now."""
    return {key[0] for key in after.keys() | before.keys() if after.get(key, 0) > before.get(key, 0)}

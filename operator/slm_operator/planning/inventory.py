"""The cluster's GPU inventory, read from plain Node/Pod/ResourceSlice/ResourceClaim dicts.

Device-plugin GPUs are described by the labels NVIDIA's GPU feature discovery and device plugin
publish (``nvidia.com/gpu.product``, ``.memory``, ``.count``, ``.replicas``, ``.sharing-strategy``)
and by the node's allocatable ``nvidia.com/gpu`` slots. DRA GPUs are the devices of ResourceSlices
whose driver is NVIDIA's (``gpu.nvidia.com``), minus those already allocated to a claim.

Side-effect free: callers pass what they listed or indexed; nothing here talks to the API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

NodeSharing = Literal["none", "mps", "time-slicing", "dra"]

LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY_MIB = "nvidia.com/gpu.memory"
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_REPLICAS = "nvidia.com/gpu.replicas"
LABEL_SHARING = "nvidia.com/gpu.sharing-strategy"
DRA_DRIVER = "gpu.nvidia.com"
SHARED_SUFFIX = "-SHARED"
#: NB: the device plugin can rename the shared resource (``renameByDefault``); both are recognised.
DEVICE_PLUGIN_RESOURCES = ("nvidia.com/gpu", "nvidia.com/gpu.shared")


@dataclasses.dataclass(frozen=True)
class GpuPool:
    """The GPUs of one node that one mechanism can hand out."""

    node: str
    product: str
    memory_mib: int
    gpu_count: int
    sharing: NodeSharing
    #: Device-plugin slots per physical GPU (``nvidia.com/gpu.replicas``); 1 for DRA and ``none``.
    slots_per_gpu: int
    #: Extended resource the pods request (device plugin), or ``None`` for DRA.
    resource_name: str | None
    #: Slots (device plugin) or whole devices (DRA) still free on this node.
    free: int
    #: DRA only: names of the devices still unallocated.
    free_devices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Inventory:
    pools: tuple[GpuPool, ...]
    #: GPU capacity promised to planned groups but not bound yet, per (product, pool sharing):
    #: device-plugin slots of pods not yet scheduled (a StatefulSet creates its pods one by one)
    #: and DRA devices of claims not yet allocated. Without it, plans made seconds apart would
    #: each see the same free GPUs and over-place.
    reserved: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def products(self) -> list[str]:
        return sorted({p.product for p in self.pools})

    def for_product(self, product: str | None) -> list[GpuPool]:
        return [p for p in self.pools if product is None or p.product == product]


@dataclasses.dataclass(frozen=True)
class PlacedGroup:
    """One GPU group the operator created (a StatefulSet), as the inventory needs it."""

    key: str  # "<namespace>/<statefulset>"
    service: str  # "<namespace>/<slmservice>"
    product: str
    mechanism: str  # dra | mps | time-slicing | exclusive
    replicas: int
    claim: str | None = None  # "<namespace>/<claim>" for DRA


_POOL_OF_MECHANISM = {"dra": "dra", "mps": "mps", "time-slicing": "time-slicing", "exclusive": "none"}


@dataclasses.dataclass(frozen=True)
class Demand:
    """Capacity promised to groups but not yet bound.

    ``on_nodes``: slots still owed to groups that already have a pod on a node — their other pods
    must land there too (pod affinity), so that node's free slots are theirs. ``anywhere``: per
    (product, pool sharing), slots or devices of groups with nothing bound yet.
    """

    on_nodes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    anywhere: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)


def unbound_demand(
    *,
    groups: Iterable[PlacedGroup],
    bound_pods: Mapping[str, int],
    group_nodes: Mapping[str, str] | None = None,
    allocated_claims: Iterable[str],
    exclude_service: str | None = None,
) -> Demand:
    """What planned groups still need, per node where known. Side-effect free.

    ``bound_pods`` counts, per group key, its pods that have a node, and ``group_nodes`` says which
    node; ``exclude_service`` leaves out the groups of the service being planned (they count as its
    existing groups instead).
    """
    allocated = set(allocated_claims)
    nodes_of = group_nodes or {}
    on_nodes: dict[str, int] = {}
    anywhere: dict[tuple[str, str], int] = {}
    for group in groups:
        if group.service == exclude_service or group.mechanism not in _POOL_OF_MECHANISM:
            continue
        pool = (group.product, _POOL_OF_MECHANISM[group.mechanism])
        if group.mechanism == "dra":
            if group.claim not in allocated:
                anywhere[pool] = anywhere.get(pool, 0) + 1
            continue
        missing = max(0, group.replicas - bound_pods.get(group.key, 0))
        node = nodes_of.get(group.key)
        if not missing:
            continue
        if node:
            on_nodes[node] = on_nodes.get(node, 0) + missing
        else:
            anywhere[pool] = anywhere.get(pool, 0) + missing
    return Demand(on_nodes=on_nodes, anywhere=anywhere)


def build_inventory(
    *,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]] = (),
    resource_slices: Iterable[Mapping[str, Any]] = (),
    resource_claims: Iterable[Mapping[str, Any]] = (),
    demand: Demand | None = None,
) -> Inventory:
    """Describe every GPU node. Pods are used only for the slots their containers request.

    Side-effect free. Unschedulable (cordoned) nodes and nodes that are not Ready are left out,
    because the scheduler would not place a new replica there either.
    """
    used_slots: dict[tuple[str, str], int] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed"):
            continue
        for resource, count in _pod_gpu_requests(pod).items():
            used_slots[(node, resource)] = used_slots.get((node, resource), 0) + count

    allocated = {
        (r.get("driver"), r.get("pool"), r.get("device"))
        for claim in resource_claims
        for r in (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or ()
    }
    devices_by_node: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for rs in resource_slices:
        spec = rs.get("spec") or {}
        if spec.get("driver") != DRA_DRIVER or not spec.get("nodeName"):
            continue
        pool = (spec.get("pool") or {}).get("name")
        for device in spec.get("devices") or ():
            if (DRA_DRIVER, pool, device.get("name")) not in allocated:
                devices_by_node.setdefault(spec["nodeName"], []).append((device["name"], device))
            else:
                devices_by_node.setdefault(spec["nodeName"], [])

    pools: list[GpuPool] = []
    for node in nodes:
        meta = node.get("metadata") or {}
        name = meta.get("name", "")
        labels = meta.get("labels") or {}
        if not _schedulable(node) or LABEL_PRODUCT not in labels:
            continue
        # NB: GPU feature discovery appends "-SHARED" to the product of MPS/time-sliced nodes
        # (unless renameByDefault); it is the same GPU, and the sharing strategy label says how.
        product = labels[LABEL_PRODUCT].removesuffix(SHARED_SUFFIX)
        memory_mib = _int(labels.get(LABEL_MEMORY_MIB))
        count = _int(labels.get(LABEL_COUNT))
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        resource = next((r for r in DEVICE_PLUGIN_RESOURCES if _int(allocatable.get(r)) > 0), None)
        if resource is not None:
            strategy = labels.get(LABEL_SHARING, "none")
            sharing: NodeSharing = strategy if strategy in ("mps", "time-slicing") else "none"
            slots = max(1, _int(labels.get(LABEL_REPLICAS)) or 1)
            total = _int(allocatable.get(resource))
            owed = demand.on_nodes.get(name, 0) if demand else 0
            pools.append(GpuPool(
                node=name, product=product, memory_mib=memory_mib,
                gpu_count=count or total // slots, sharing=sharing,
                slots_per_gpu=slots if sharing != "none" else 1, resource_name=resource,
                free=max(0, total - used_slots.get((name, resource), 0) - owed),
            ))
        if name in devices_by_node:
            free_devices = tuple(sorted(d for d, _ in devices_by_node[name]))
            pools.append(GpuPool(
                node=name, product=product, memory_mib=memory_mib,
                gpu_count=count or len(free_devices), sharing="dra", slots_per_gpu=1,
                resource_name=None, free=len(free_devices), free_devices=free_devices,
            ))
    return Inventory(pools=tuple(sorted(pools, key=lambda p: (p.product, p.sharing, p.node))),
                     reserved=dict(demand.anywhere) if demand else {})


def _pod_gpu_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    spec = pod.get("spec") or {}
    totals: dict[str, int] = {}
    for container in spec.get("containers") or ():
        requests = ((container.get("resources") or {}).get("limits") or {}) | (
            (container.get("resources") or {}).get("requests") or {})
        for resource in DEVICE_PLUGIN_RESOURCES:
            if resource in requests:
                totals[resource] = totals.get(resource, 0) + _int(requests[resource])
    return totals


def _schedulable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
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
    sizes = [_int(labels.get(LABEL_MEMORY_MIB)) for node in nodes
             if (labels := (node.get("metadata") or {}).get("labels") or {}).get(LABEL_PRODUCT) == product]
    known = [mib for mib in sizes if mib > 0]
    return round(min(known) / 1024, 3) if known else None

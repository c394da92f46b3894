"""The GPU inventory the planner reads, kept by watches: index entries and the placement ledger.

kopf indexes (in-memory, watch-fed caches) hold what planning needs of GPU nodes, GPU-requesting
pods, NVIDIA ResourceSlices, allocated ResourceClaims and our own group StatefulSets; the
functions ``*_entry`` here turn one watched object into its index entry (``None``: not indexed).
:class:`GpuIndex` reads the indexes back, and :meth:`GpuIndex.inventory` builds the planner's
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
from collections.abc import Callable, Mapping
from typing import Any

from slm_operator.constants import (
    ANNOTATION_START,
    DEVICE_PLUGIN_RESOURCES,
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
from slm_operator.planning.inventory import Inventory, build_inventory, product_memory_gib, unbound_demand
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


def pod_entry(
    *, uid: str, namespace: str, labels: Mapping[str, str], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> Entry | None:
    """A pod asking for device-plugin GPUs: its node, phase, GPU requests and (ours) its group."""
    containers = []
    for c in spec.get("containers") or ():
        res = c.get("resources") or {}
        wanted = {r: v for part in ("requests", "limits") for r, v in (res.get(part) or {}).items()
                  if r in DEVICE_PLUGIN_RESOURCES}
        if wanted:
            containers.append({"resources": {"requests": wanted}})
    if not containers:
        return None
    pod: dict[str, Any] = {"spec": {"nodeName": spec.get("nodeName"), "containers": containers},
                           "status": {"phase": status.get("phase")}}
    index = labels.get(LABEL_GROUP) or "0"
    if labels.get(LABEL_MANAGED_BY) == MANAGED_BY and LABEL_SERVICE in labels and index.isdigit():
        pod["group"] = f"{namespace}/{group_name(service=labels[LABEL_SERVICE], index=int(index))}"
    return {uid: pod}


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
    labels = labels or {}
    index = labels.get(LABEL_GROUP) or "0"
    if labels.get(LABEL_PACKED) == "true" and LABEL_SERVICE in labels and index.isdigit():
        entry["group"] = f"{namespace}/{group_name(service=labels[LABEL_SERVICE], index=int(index))}"
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
    """The six indexes (``gpu_nodes``, ``gpu_pods``, ``gpu_slices``, ``gpu_claims``,
    ``slm_groups``, ``packed_pods``) as kopf passes them to handlers: mappings of keys to collections
    of values."""

    NAMES = ("gpu_nodes", "gpu_pods", "gpu_slices", "gpu_claims", "slm_groups", "packed_pods")

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self._indexes = indexes

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
        pods = self._values("gpu_pods")
        claims = self._values("gpu_claims")
        groups = ledger.merged_with({g.key: g for g in self._values("slm_groups")})
        bound: dict[str, int] = {}
        node_of: dict[str, str] = {}
        for pod in pods:
            if pod.get("group") and pod["spec"].get("nodeName"):
                bound[pod["group"]] = bound.get(pod["group"], 0) + 1
                node_of.setdefault(pod["group"], pod["spec"]["nodeName"])
        allocated_per_group: dict[str, int] = {}
        for claim in claims:
            if claim.get("group"):
                allocated_per_group[claim["group"]] = allocated_per_group.get(claim["group"], 0) + 1
        demand = unbound_demand(groups=groups.values(), bound_pods=bound, group_nodes=node_of,
                                allocated_claims=[c["name"] for c in claims], exclude_service=exclude_service,
                                allocated_per_group=allocated_per_group)
        return build_inventory(nodes=self.nodes(), pods=pods, resource_slices=self._values("gpu_slices"),
                               resource_claims=claims, demand=demand)


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

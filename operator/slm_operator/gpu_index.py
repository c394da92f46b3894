"""The GPU inventory the planner reads, kept by watches: index entries and the placement ledger.

What planning needs of GPU nodes and NVIDIA ResourceSlices (one or two per node) is kept by kopf
indexes (in-memory, watch-fed caches); the functions ``*_entry`` here turn one watched object into
its index entry (``None``: not indexed). What grows with the cluster is kept by the operator's own
list+watches (``kube.ListWatch``) in the accumulators here instead: the device-plugin slots pods
hold (:class:`PodSlots`), our group StatefulSets, every ResourceClaim and the ``dra-shares``
replicas' pods (:class:`Entries`). NB: kopf
takes every object of an indexed kind through one start-up barrier that each indexed object wakes
for all the others (kopf 1.45 ``operator_indexed``): start-up cost grows with the square of the
indexed objects (a minute and more at a few thousand); an own watch keeps one small record per
object and starts in seconds. :class:`GpuIndex` reads both back, and :meth:`GpuIndex.inventory`
builds the planner's :class:`~slm_operator.planning.inventory.Inventory` without a single API call.

The watch lags our own writes by a moment: :class:`PlacementLedger` remembers the groups just
applied until the StatefulSet watch reports them, so two plans made a second apart never both
take the same free GPUs.

Side-effect free apart from the accumulators' and the ledger's own memory: no kopf, no Kubernetes
client.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

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
        "spec": {"unschedulable": spec.get("unschedulable", False),
                 "taints": [dict(t) for t in spec.get("taints") or ()]},
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
    *, namespace: str, name: str, labels: Mapping[str, str], annotations: Mapping[str, str], spec: Mapping[str, Any],
    status: Mapping[str, Any] | None = None,
) -> Entry | None:
    """One of our group StatefulSets: what it was promised, so capacity not yet bound is not
    planned twice, and its ready replicas (what a re-listing folds into the service's status)."""
    group = group_from_statefulset({"metadata": {"namespace": namespace, "name": name, "labels": dict(labels),
                                                 "annotations": dict(annotations)}, "spec": spec,
                                    "status": {"readyReplicas": (status or {}).get("readyReplicas")}})
    return {group.key: group} if group else None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def group_of(obj: Mapping[str, Any]) -> Entry | None:
    """:func:`group_entry` of a StatefulSet as the API returns it."""
    meta = _meta(obj)
    return group_entry(namespace=meta.get("namespace") or "", name=meta.get("name") or "",
                       labels=meta.get("labels") or {}, annotations=meta.get("annotations") or {},
                       spec=obj.get("spec") or {}, status=obj.get("status"))


def packed_pod_of(obj: Mapping[str, Any]) -> Entry | None:
    """:func:`packed_pod_entry` of a pod as the API returns it."""
    meta = _meta(obj)
    return packed_pod_entry(uid=object_key(obj), namespace=meta.get("namespace") or "", name=meta.get("name") or "",
                            labels=meta.get("labels") or {}, annotations=meta.get("annotations") or {}, meta=meta,
                            status=obj.get("status") or {})


def claim_of(obj: Mapping[str, Any]) -> Entry | None:
    """:func:`claim_entry` of a ResourceClaim as the API returns it."""
    meta = _meta(obj)
    return claim_entry(uid=object_key(obj), namespace=meta.get("namespace") or "", name=meta.get("name") or "",
                       status=obj.get("status") or {}, labels=meta.get("labels") or {})


# --- Accumulators fed by the operator's own list+watches ---------------------------------------------

class Watched(Protocol):
    """What a list+watch feeds (``kube.ListWatch``): a full listing, then each watch event."""

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None: ...

    def apply(self, *, event_type: str, obj: Mapping[str, Any]) -> None: ...

    def __len__(self) -> int: ...


def object_key(obj: Mapping[str, Any]) -> str:
    """The object's uid (its ``namespace/name`` where a fake or partial object has none)."""
    meta = _meta(obj)
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


class _Synced:
    """Not synced until the first listing is in: planning on a partial view would take capacity
    that is in use."""

    def __init__(self) -> None:
        self._synced = threading.Event()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first listing; whether it is in."""
        return self._synced.wait(timeout)


class Entries(_Synced):
    """The index entries (``entry``: one object → ``{key: value}``, ``None``: not kept) of every
    object of one kind, as a kopf index would keep them, fed by a list+watch: :meth:`replace` with a
    full listing, :meth:`apply` with each watch event. Thread-safe: the watch runs in its own
    thread, handlers read from theirs.
    """

    def __init__(self, entry: Callable[[Mapping[str, Any]], Entry | None]) -> None:
        super().__init__()
        self._entry = entry
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """A full listing replaces everything (objects deleted while no watch ran are gone with
        it). ``objects`` may be a generator; it is consumed before the state changes."""
        entries = {object_key(o): e for o in objects if (e := self._entry(o))}
        with self._lock:
            self._entries = entries
        self._synced.set()

    def apply(self, *, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of ``obj``; other types change nothing."""
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = object_key(obj)
        entry = self._entry(obj) if event_type != "DELETED" else None
        with self._lock:
            if entry:
                self._entries[key] = entry
            else:
                self._entries.pop(key, None)

    def items(self) -> list[tuple[Any, Any]]:
        """Every kept ``(key, value)`` (a snapshot)."""
        with self._lock:
            return [item for entry in self._entries.values() for item in entry.items()]

    def values(self) -> list[Any]:
        """Every kept value (a snapshot)."""
        with self._lock:
            return [value for entry in self._entries.values() for value in entry.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# --- Device-plugin slots held by pods: fed by the operator's own pod watch --------------------------

@dataclasses.dataclass(frozen=True)
class SlotUse:
    """What one bound, unfinished pod holds of device-plugin GPUs: its node, the slots per resource
    name, and, for one of our replicas, its group (``namespace/name``)."""

    node: str
    slots: tuple[tuple[str, int], ...]
    group: str | None = None


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


class PodSlots(_Synced):
    """The device-plugin slots every GPU pod of the cluster holds, per node, and how many of each of
    our groups' pods are bound where: all the inventory needs of pods, one :class:`SlotUse` per GPU
    pod (pods without GPUs are not kept at all).

    Fed by a list+watch: :meth:`replace` with a full listing, :meth:`apply` with each watch event.
    Thread-safe: the watch runs in its own thread, handlers read from theirs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._pods: dict[str, SlotUse] = {}
        self._used: dict[tuple[str, str], int] = {}
        self._groups: dict[str, dict[str, int]] = {}  # group → node → bound pods

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """A full listing: what it holds replaces everything (pods deleted while no watch ran are
        gone with it). ``objects`` may be a generator; it is consumed before the state changes."""
        uses = {object_key(p): use for p in objects if (use := slot_use(p)) is not None}
        with self._lock:
            self._pods, self._used, self._groups = {}, {}, {}
            for key, use in uses.items():
                self._add(key, use)
        self._synced.set()

    def apply(self, *, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of a pod; other types change nothing."""
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = object_key(obj)
        use = slot_use(obj) if event_type != "DELETED" else None
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
    """Groups a plan placed, from the moment they are planned (before their StatefulSets are
    applied) until the StatefulSet watch reports them (or ``ttl_seconds`` pass).

    NB: recorded while the planning lock is held, so the next plan counts them; the API writes happen
    after the lock is released (``deploy.reserve_groups``), and an apply that fails forgets its groups.

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

    def forget(self, keys: Iterable[str]) -> None:
        """Drop groups recorded for an apply that did not happen (the API refused or was away)."""
        with self._lock:
            for key in keys:
                self._recent.pop(key, None)

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
    """The kopf indexes ``gpu_nodes`` and ``gpu_slices`` as kopf passes them to handlers (mappings
    of keys to collections of values), and what the own watches keep: the slots pods hold
    (``pods``), our group StatefulSets (``groups``, :func:`group_of`), the allocated ResourceClaims
    (``claims``, :func:`claim_of`) and the ``dra-shares`` replicas' pods (``packed``,
    :func:`packed_pod_of`)."""

    NAMES = ("gpu_nodes", "gpu_slices")

    def __init__(self, indexes: Mapping[str, Any], *, pods: PodSlots, groups: Entries, claims: Entries,
                 packed: Entries) -> None:
        self._indexes = indexes
        self._pods = pods
        self._groups = groups
        self._claims = claims
        self._packed = packed

    def _values(self, name: str) -> list[Any]:
        index = self._indexes[name]
        return [value for key in index for value in index[key]]

    def nodes(self) -> list[dict[str, Any]]:
        return self._values("gpu_nodes")

    def pinned_to(self, node: str, *, ledger: PlacementLedger) -> list[GroupState]:
        """Our groups pinned to ``node`` (``Plan.group_nodes``), whether or not a pod of theirs runs yet;
        with those just planned that the StatefulSet watch has not reported yet (``ledger``)."""
        groups = ledger.merged_with({g.key: g for g in self._groups.values()})
        return [g for g in groups.values() if g.pinned_node == node]

    def gpu_memory_gib(self, product: str) -> float | None:
        """One ``product`` GPU's memory as the nodes label it (``None`` where none says)."""
        return product_memory_gib(nodes=self.nodes(), product=product)

    def inventory(self, *, ledger: PlacementLedger) -> Inventory:
        """The planner's inventory: free slots and devices, minus what placed groups still need
        (the planned service's own groups too: their owed slots are not room for its new ones)."""
        claims = self._claims.values()
        groups = ledger.merged_with({g.key: g for g in self._groups.values()})
        bound, node_of = self._pods.bound_groups()
        allocated_per_group: dict[str, int] = {}
        for claim in claims:
            if claim.get("group"):
                allocated_per_group[claim["group"]] = allocated_per_group.get(claim["group"], 0) + 1
        demand = unbound_demand(groups=groups.values(), bound_pods=bound, group_nodes=node_of,
                                allocated_claims=[c["name"] for c in claims],
                                allocated_per_group=allocated_per_group)
        return build_inventory(nodes=self.nodes(), used_slots=self._pods.used_slots(),
                               resource_slices=self._values("gpu_slices"), resource_claims=claims, demand=demand)

    def starting_pods(self) -> list[StartingPod]:
        """Every ``dra-shares`` pod, with the GPUs its allocated claims hold."""
        devices_of = {c["name"]: tuple(key for _, key in allocated_devices(c)) for c in self._claims.values()}
        return [StartingPod(namespace=p["namespace"], name=p["name"], created=p["created"],
                            devices=tuple(d for claim in p["claims"] for d in devices_of.get(claim, ())),
                            granted=p["granted"], ready=p["ready"], deleting=p["deleting"])
                for p in self._packed.values()]


def busiest_free_product(inventory: Inventory) -> str | None:
    """The product with the most free GPUs (device-plugin slots count 1/slots), for a service
    without ``spec.gpu.product``; ``None`` on a cluster without labelled GPU nodes."""
    free: dict[str, float] = {}
    for pool in inventory.pools:
        free[pool.product] = free.get(pool.product, 0.0) + pool.free / max(pool.slots_per_gpu, 1)
    return max(sorted(free), key=lambda p: free[p]) if free else None

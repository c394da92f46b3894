"""The GPU index entries, the pod slot counts, the placement ledger and the inventory read back."""

from typing import Any

from slm_operator.gpu_index import (
    Entries,
    GpuIndex,
    PlacementLedger,
    PodSlots,
    SlotUse,
    busiest_free_product,
    claim_entry,
    claim_of,
    group_entry,
    node_entry,
    slice_entry,
    slot_use,
)
from slm_operator.planning.groups import GroupState
from slm_operator.planning.inventory import build_inventory
from tests.unit.factories import H100, dra_slice, node
from tests.unit.fakes import kopf_index, own_watches, resource_claim

OURS = {"app.kubernetes.io/managed-by": "slm-operator", "slm.pareto.dev/service": "opt", "slm.pareto.dev/group": "1"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def group(name: str = "opt", index: int = 0, *, mechanism: str = "mps", replicas: int = 4,
          claim: str | None = None) -> GroupState:
    return GroupState(namespace="ns", name=f"{name}-g{index}", service=name, index=index, product=H100,
                      mechanism=mechanism, replicas=replicas, claim=claim)


def test_node_entry_keeps_only_what_planning_reads_and_skips_unlabelled_nodes():
    raw = node("a", sharing="mps", replicas=4)
    taint = {"key": "team", "value": "a", "effect": "NoSchedule"}
    entry = node_entry(name="a", labels=raw["metadata"]["labels"], spec={"unschedulable": True, "taints": [taint]},
                       status=raw["status"] | {"images": ["big"]})
    assert entry == {"a": {"metadata": {"name": "a", "labels": raw["metadata"]["labels"]},
                           "spec": {"unschedulable": True, "taints": [taint]},
                           "status": {"allocatable": raw["status"]["allocatable"],
                                      "conditions": [{"type": "Ready", "status": "True"}]}}}
    assert node_entry(name="cpu", labels={"kubernetes.io/os": "linux"}, spec={}, status={}) is None


def pod(uid: str, *, node: str | None = "a", gpus: int | str = 1, labels: dict[str, str] | None = None,
        phase: str = "Running", resource: str = "nvidia.com/gpu", namespace: str = "ns") -> dict[str, Any]:
    """A pod as the API lists it."""
    limits = {resource: str(gpus), "cpu": "2"} if gpus else {"cpu": "2"}
    spec: dict[str, Any] = {"containers": [{"resources": {"limits": limits}},
                                           {"resources": {"requests": {"memory": "1Gi"}}}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"uid": uid, "namespace": namespace, "name": uid, "labels": labels or {}},
            "spec": spec, "status": {"phase": phase}}


def test_slot_use_counts_gpu_requests_of_bound_unfinished_pods_and_names_our_group():
    assert slot_use(pod("u", labels=OURS)) == SlotUse(node="a", slots=(("nvidia.com/gpu", 1),), group="ns/opt-g1")
    assert slot_use(pod("v")) == SlotUse(node="a", slots=(("nvidia.com/gpu", 1),))  # not ours: no group
    assert slot_use(pod("w", gpus=0, labels=OURS)) is None
    assert slot_use(pod("p", node=None, labels=OURS)) is None  # Pending: holds nothing yet
    for phase in ("Succeeded", "Failed"):
        assert slot_use(pod("f", phase=phase)) is None  # finished: its devices are given back
    odd = slot_use(pod("x", labels=OURS | {"slm.pareto.dev/group": "one"}))
    assert odd is not None and odd.group is None  # a hand-edited label is not a crash


def test_pod_slots_follow_adds_changes_and_deletes_per_node_and_group():
    slots = PodSlots()
    assert not slots.synced
    slots.replace([pod("theirs", node="a", gpus=2), pod("cpu-only", gpus=0), pod("pending", node=None)])
    assert slots.synced and len(slots) == 1, "pods without a slot are not kept"
    assert slots.used_slots() == {("a", "nvidia.com/gpu"): 2}
    ours = pod("r0", node="b", labels=OURS, resource="nvidia.com/gpu.shared")
    slots.apply(event_type="ADDED", obj=ours)
    slots.apply(event_type="ADDED", obj=pod("r1", node="b", labels=OURS, resource="nvidia.com/gpu.shared"))
    assert slots.used_slots() == {("a", "nvidia.com/gpu"): 2, ("b", "nvidia.com/gpu.shared"): 2}
    assert slots.bound_groups() == ({"ns/opt-g1": 2}, {"ns/opt-g1": "b"})
    slots.apply(event_type="MODIFIED", obj=ours)  # a status change: counted once, not twice
    assert slots.used_slots()[("b", "nvidia.com/gpu.shared")] == 2
    slots.apply(event_type="MODIFIED", obj=pod("r0", node="b", labels=OURS, phase="Succeeded"))
    slots.apply(event_type="DELETED", obj=pod("theirs", node="a", gpus=2))
    assert slots.used_slots() == {("b", "nvidia.com/gpu.shared"): 1}
    assert slots.bound_groups() == ({"ns/opt-g1": 1}, {"ns/opt-g1": "b"})
    slots.apply(event_type="DELETED", obj=pod("r1", node="b"))  # the last pod of a group and node
    slots.apply(event_type="DELETED", obj=pod("never-seen"))
    slots.apply(event_type="BOOKMARK", obj={"metadata": {"resourceVersion": "9"}})
    assert slots.used_slots() == {} and slots.bound_groups() == ({}, {}) and len(slots) == 0


def test_a_pod_bound_later_counts_from_then_on():
    slots = PodSlots()
    slots.replace([])
    slots.apply(event_type="ADDED", obj=pod("p", node=None, labels=OURS))
    assert slots.used_slots() == {}
    slots.apply(event_type="MODIFIED", obj=pod("p", node="c", labels=OURS))
    assert slots.used_slots() == {("c", "nvidia.com/gpu"): 1} and slots.bound_groups()[0] == {"ns/opt-g1": 1}


def test_a_listing_replaces_everything_counted_before():
    slots = PodSlots()
    slots.replace([pod("gone", node="a", gpus=3), pod("stays", node="b", labels=OURS)])
    slots.replace([pod("stays", node="b", labels=OURS), pod("new", node="a", gpus=1)])
    assert slots.used_slots() == {("a", "nvidia.com/gpu"): 1, ("b", "nvidia.com/gpu"): 1}
    assert slots.bound_groups() == ({"ns/opt-g1": 1}, {"ns/opt-g1": "b"}) and len(slots) == 2


def test_a_listing_that_fails_halfway_changes_nothing():
    slots = PodSlots()
    slots.replace([pod("kept", node="a")])

    def pages():
        yield pod("new", node="b")
        raise OSError("connection reset")

    try:
        slots.replace(pages())
    except OSError:
        pass
    assert slots.used_slots() == {("a", "nvidia.com/gpu"): 1}


def test_slice_claim_and_group_entries():
    assert slice_entry(name="s", spec={"driver": "other.example.com"}) is None
    assert slice_entry(name="s", spec=dra_slice("d", 1)["spec"]) == {"s": {"spec": dra_slice("d", 1)["spec"]}}
    assert claim_entry(uid="u", namespace="ns", name="c", status={}) is None
    allocation = {"devices": {"results": [{"driver": "gpu.nvidia.com", "pool": "d", "device": "gpu-0"}]}}
    assert claim_entry(uid="u", namespace="ns", name="c", status={"allocation": allocation}) == {
        "u": {"name": "ns/c", "status": {"allocation": allocation}}}
    entry = group_entry(namespace="ns", name="opt-g1", labels=OURS,
                        annotations={"slm.pareto.dev/sharing": "dra", "slm.pareto.dev/gpu-product": H100},
                        spec={"replicas": 2, "template": {"spec": {"resourceClaims": [{"resourceClaimName": "c"}]}}})
    assert entry == {"ns/opt-g1": GroupState(namespace="ns", name="opt-g1", service="opt", index=1, product=H100,
                                             mechanism="dra", replicas=2, claim="c")}


def test_the_ledger_holds_a_group_until_the_watch_reports_it_or_it_expires():
    clock = Clock()
    ledger = PlacementLedger(ttl_seconds=120, clock=clock)
    applied, other = group("opt", 0), group("other", 0)
    ledger.record(applied)
    ledger.record(other)
    assert set(ledger.merged_with({})) == {"ns/opt-g0", "ns/other-g0"}
    watched = group("opt", 0, replicas=4)
    assert ledger.merged_with({watched.key: watched}) == {"ns/opt-g0": watched, "ns/other-g0": other}
    assert len(ledger) == 1  # the watch caught up with opt-g0
    clock.now = 121
    assert ledger.merged_with({}) == {} and len(ledger) == 0


def test_inventory_from_the_indexes_reserves_what_groups_still_need():
    mps = node("m", count=1, sharing="mps", replicas=4)
    indexes = {
        "gpu_nodes": kopf_index([node_entry(name="m", labels=mps["metadata"]["labels"], spec={},
                                            status=mps["status"])]),
        "gpu_slices": {},
    }
    slots = PodSlots()
    slots.replace([pod("p0", node="m", labels=OURS | {"slm.pareto.dev/group": "0"})])
    ledger = PlacementLedger()
    ledger.record(group("opt", 0, replicas=3))  # applied a moment ago; one pod is bound, two are owed to m
    index = GpuIndex(indexes, **own_watches(pods=slots))
    assert index.inventory(ledger=ledger).pools[0].free == 1  # 4 slots - 1 used - 2 owed
    # What the service being planned still owes there is no room for its own new groups either.
    assert index.inventory(ledger=ledger).pools[0].free == 1
    assert index.gpu_memory_gib(H100) is not None and index.gpu_memory_gib("NVIDIA-L4") is None


def test_the_busiest_free_product_counts_shared_slots_as_fractions():
    inventory = build_inventory(nodes=[node("a", product="NVIDIA-L4", count=2),
                                       node("b", count=1, sharing="mps", replicas=8)])
    assert busiest_free_product(inventory) == "NVIDIA-L4"  # 2 whole GPUs beat 8 slots of one
    assert busiest_free_product(build_inventory(nodes=[])) is None


def test_dra_shares_replicas_without_an_allocated_claim_are_pending_demand():
    from slm_operator.planning.shares import ShareRequest

    shared = node("s", count=1, sharing="dra")
    request = ShareRequest(memory_mib=11131, shares=30)
    device = {"name": "gpu-0", "allowMultipleAllocations": True,
              "capacity": {"memory": {"value": "81559Mi"}, "shares": {"value": "120"}}}
    allocated = resource_claim(namespace="ns", name="opt-g0-0-gpu-x", labels=OURS | {
        "slm.pareto.dev/group": "0", "slm.pareto.dev/packed": "true"}, results=[
            {"driver": "gpu.nvidia.com", "pool": "s", "device": "gpu-0",
             "consumedCapacity": {"memory": "11131Mi", "shares": "30"}}])
    index = GpuIndex({
        "gpu_nodes": kopf_index([node_entry(name="s", labels=shared["metadata"]["labels"], spec={},
                                            status=shared["status"])]),
        "gpu_slices": kopf_index([slice_entry(name="s", spec={
            "driver": "gpu.nvidia.com", "nodeName": "s", "pool": {"name": "s"}, "devices": [device]})]),
    }, **own_watches(claims=[allocated]))
    ledger = PlacementLedger()
    ledger.record(GroupState(namespace="ns", name="opt-g0", service="opt", index=0, product=H100,
                             mechanism="dra-shares", replicas=3, share_request=request))
    inventory = index.inventory(ledger=ledger)
    assert inventory.pending_shares == {H100: (request, request)}, "3 replicas, 1 claim allocated"
    (pool,) = inventory.pools
    assert (pool.sharing, pool.devices[0].used_shares, pool.devices[0].allocations) == ("dra-shares", 30, 1)


def test_entries_keep_what_the_entry_function_keeps_per_object_and_a_listing_replaces_them():
    results = [{"driver": "gpu.nvidia.com", "pool": "a", "device": "gpu-0"}]
    claims = Entries(claim_of)
    assert not claims.synced
    claims.replace(iter([resource_claim(namespace="ns", name="c0", results=results),
                         {"metadata": {"uid": "u1", "namespace": "ns", "name": "pending"}, "status": {}}]))
    assert claims.synced and [c["name"] for c in claims.values()] == ["ns/c0"], "an unallocated claim holds nothing"
    claims.apply(event_type="MODIFIED", obj=resource_claim(namespace="ns", name="pending", uid="u1", results=results))
    claims.apply(event_type="BOOKMARK", obj={"metadata": {"resourceVersion": "9"}})
    claims.apply(event_type="DELETED", obj={"metadata": {"uid": "never-seen"}})
    assert sorted(c["name"] for c in claims.values()) == ["ns/c0", "ns/pending"]
    claims.apply(event_type="MODIFIED", obj={"metadata": {"uid": "u1", "namespace": "ns", "name": "pending"}})
    assert [c["name"] for c in claims.values()] == ["ns/c0"], "deallocated: no longer kept"
    claims.replace([resource_claim(namespace="ns", name="c1", results=results)])
    assert [c["name"] for c in claims.values()] == ["ns/c1"] and len(claims) == 1, "c0 went while no watch ran"

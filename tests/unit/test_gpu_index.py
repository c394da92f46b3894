"""The GPU index entries, the placement ledger and the inventory read back from the indexes."""

from slm_operator.gpu_index import (
    GpuIndex,
    PlacementLedger,
    busiest_free_product,
    claim_entry,
    group_entry,
    node_entry,
    pod_entry,
    slice_entry,
)
from slm_operator.planning.groups import GroupState
from slm_operator.planning.inventory import build_inventory
from tests.unit.factories import H100, dra_slice, node
from tests.unit.fakes import kopf_index

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
    entry = node_entry(name="a", labels=raw["metadata"]["labels"], spec={"unschedulable": True, "taints": []},
                       status=raw["status"] | {"images": ["big"]})
    assert entry == {"a": {"metadata": {"name": "a", "labels": raw["metadata"]["labels"]},
                           "spec": {"unschedulable": True},
                           "status": {"allocatable": raw["status"]["allocatable"],
                                      "conditions": [{"type": "Ready", "status": "True"}]}}}
    assert node_entry(name="cpu", labels={"kubernetes.io/os": "linux"}, spec={}, status={}) is None


def test_pod_entry_counts_gpu_requests_and_names_our_group():
    spec = {"nodeName": "a", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "2"}}},
                                            {"resources": {"requests": {"memory": "1Gi"}}}]}
    entry = pod_entry(uid="u", namespace="ns", labels=OURS, spec=spec, status={"phase": "Running"})
    gpu_only = [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}]
    assert entry == {"u": {"spec": {"nodeName": "a", "containers": gpu_only},
                           "status": {"phase": "Running"}, "group": "ns/opt-g1"}}
    theirs = pod_entry(uid="v", namespace="ns", labels={}, spec=spec, status={})
    assert theirs is not None and "group" not in theirs["v"]
    assert pod_entry(uid="w", namespace="ns", labels=OURS, spec={"containers": [{}]}, status={}) is None
    odd = pod_entry(uid="x", namespace="ns", labels=OURS | {"slm.pareto.dev/group": "one"}, spec=spec, status={})
    assert odd is not None and "group" not in odd["x"]  # a hand-edited label is not a crash


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
        "gpu_pods": kopf_index([pod_entry(uid="p0", namespace="ns", labels=OURS | {"slm.pareto.dev/group": "0"},
                                          spec={"nodeName": "m", "containers": [
                                              {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
                                          status={"phase": "Running"})]),
        "gpu_slices": {}, "gpu_claims": {}, "slm_groups": {},
    }
    ledger = PlacementLedger()
    ledger.record(group("opt", 0, replicas=3))  # applied a moment ago; one pod is bound, two are owed to m
    index = GpuIndex(indexes)
    assert index.inventory(ledger=ledger).pools[0].free == 1  # 4 slots - 1 used - 2 owed
    # The service being planned does not reserve against itself: its groups are its existing ones.
    assert index.inventory(ledger=ledger, exclude_service="ns/opt").pools[0].free == 3
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
    allocated = claim_entry(uid="c0", namespace="ns", name="opt-g0-0-gpu-x", labels=OURS | {
        "slm.pareto.dev/group": "0", "slm.pareto.dev/packed": "true"}, status={"allocation": {"devices": {"results": [
            {"driver": "gpu.nvidia.com", "pool": "s", "device": "gpu-0",
             "consumedCapacity": {"memory": "11131Mi", "shares": "30"}}]}}})
    index = GpuIndex({
        "gpu_nodes": kopf_index([node_entry(name="s", labels=shared["metadata"]["labels"], spec={},
                                            status=shared["status"])]),
        "gpu_pods": {}, "gpu_slices": kopf_index([slice_entry(name="s", spec={
            "driver": "gpu.nvidia.com", "nodeName": "s", "pool": {"name": "s"}, "devices": [device]})]),
        "gpu_claims": kopf_index([allocated]), "slm_groups": {},
    })
    ledger = PlacementLedger()
    ledger.record(GroupState(namespace="ns", name="opt-g0", service="opt", index=0, product=H100,
                             mechanism="dra-shares", replicas=3, share_request=request))
    inventory = index.inventory(ledger=ledger, exclude_service="ns/opt")
    assert inventory.pending_shares == {H100: (request, request)}, "3 replicas, 1 claim allocated"
    (pool,) = inventory.pools
    assert (pool.sharing, pool.devices[0].used_shares, pool.devices[0].allocations) == ("dra-shares", 30, 1)

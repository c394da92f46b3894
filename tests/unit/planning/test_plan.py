"""The planner on inventories shaped like real clusters (labels as GPU feature discovery sets them)."""

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slm_operator.constants import GIB, USABLE_MEMORY_FRACTION
from slm_operator.errors import PlanningError, SpecError
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.plan import desired_gpus, make_plan, tokens_per_second_per_gpu
from slm_operator.planning.profiles import skip_profile, static_profile
from slm_operator.spec import parse_spec
from tests.unit.factories import H100, H100_MIB, dra_slice, gpu_pod, node, profile, spec


def test_auto_prefers_dra_when_replicas_share_a_gpu():
    inv = build_inventory(nodes=[node("a", sharing="mps", replicas=4), node("d", sharing="dra")],
                          resource_slices=[dra_slice("d")])
    plan = make_plan(spec=spec(scale={"gpus": 3}), profile=profile(), inventory=inv)
    assert plan.mechanism == "dra" and plan.resource_name is None
    assert plan.replicas_per_gpu == 2 and plan.placeable_gpus == 3 and plan.total_replicas == 6
    assert plan.active_thread_percentage == 50
    # The hard MPS limit is the physical half; vLLM plans within the smaller usable budget.
    assert plan.pinned_memory_limit_mib == H100_MIB // 2
    assert plan.memory_budget_gib * 1024 < plan.pinned_memory_limit_mib
    assert plan.gpu_memory_utilization == pytest.approx(plan.memory_budget_gib * 1024 / H100_MIB, abs=0.001)


def test_dra_capacity_counts_whole_devices_not_slots():
    inv = build_inventory(nodes=[node("d", sharing="dra")], resource_slices=[dra_slice("d", 8)])
    plan = make_plan(spec=spec(scale={"gpus": 8}), profile=profile(replicas_to_saturate=3), inventory=inv)
    assert (plan.mechanism, plan.replicas_per_gpu, plan.placeable_gpus) == ("dra", 3, 8)


def test_slots_too_small_for_a_replica_fall_back_to_whole_gpus():
    # 4 MPS slots pin each client to ~18 GiB usable; this replica needs 20 GiB.
    inv = build_inventory(nodes=[node("m", sharing="mps", replicas=4), node("t", sharing="time-slicing", replicas=4),
                                 node("x")])
    plan = make_plan(spec=spec(), profile=profile(memory_per_replica_gib=20.0), inventory=inv)
    assert plan.mechanism == "exclusive", "a time-sliced slot is no bigger than an MPS one"


def test_time_slicing_budgets_a_slot_share_because_slots_come_from_any_gpu():
    # 3 replicas/GPU wanted, 4 slots/GPU: the plugin may put 4 of our replicas on one GPU, so each
    # replica may only budget a quarter of it, whatever k is.
    inv = build_inventory(nodes=[node("t", count=8, sharing="time-slicing", replicas=4)])
    plan = make_plan(spec=spec(scale={"gpus": 10}), profile=profile(replicas_to_saturate=3), inventory=inv)
    usable = H100_MIB / 1024 * USABLE_MEMORY_FRACTION
    assert plan.memory_budget_gib == pytest.approx(usable / 4, abs=0.01)
    assert plan.placeable_gpus * plan.replicas_per_gpu * plan.memory_budget_gib <= 8 * usable + 0.01
    assert "--gpu-memory-utilization=" in " ".join(plan.vllm_args())


def test_explicit_mps_that_cannot_fit_explains_how_to_fix():
    inv = build_inventory(nodes=[node("m", sharing="mps", replicas=4)])
    with pytest.raises(PlanningError) as err:
        make_plan(spec=spec(gpu={"product": H100, "sharing": "mps"}), profile=profile(memory_per_replica_gib=20.0),
                  inventory=inv)
    assert err.value.reason == "NoSharedGPUs"
    assert "mps slot" in err.value.message and "replicas" in err.value.message


def test_mps_budget_is_the_device_plugin_share_not_total_over_k():
    inv = build_inventory(nodes=[node("m", sharing="mps", replicas=4)])
    plan = make_plan(spec=spec(gpu={"product": H100, "sharing": "mps"}), profile=profile(), inventory=inv)
    assert plan.mechanism == "mps" and plan.replicas_per_gpu == 2
    assert plan.memory_budget_gib == pytest.approx(H100_MIB / 1024 * USABLE_MEMORY_FRACTION / 4, abs=0.01)
    assert "--max-num-seqs=128" in plan.vllm_args()
    kv = int(next(a for a in plan.vllm_args() if a.startswith("--kv-cache-memory-bytes=")).split("=")[1])
    assert kv >= 8.0 * GIB  # never below what B* needs


def test_target_throughput_sizes_gpus_and_is_clamped():
    assert desired_gpus(spec=spec(scale={"targetTokensPerSecond": 30000}), per_gpu=14000) == math.ceil(30000 / 14000)
    assert desired_gpus(spec=spec(scale={"targetTokensPerSecond": 300000, "maxGPUs": 5}), per_gpu=14000) == 5
    assert desired_gpus(spec=spec(scale={"targetTokensPerSecond": 100, "minGPUs": 2}), per_gpu=14000) == 2


def test_target_is_sized_with_the_throughput_of_the_mechanism_chosen():
    # Only exclusive GPUs: one replica per GPU delivers 10,000, not the 14,000 of two replicas.
    inv = build_inventory(nodes=[node("x", count=8)])
    plan = make_plan(spec=spec(scale={"targetTokensPerSecond": 50000}), profile=profile(), inventory=inv)
    assert plan.mechanism == "exclusive" and plan.gpus == 5 and plan.planned_tokens_per_second >= 50000


def test_auto_keeps_the_mechanism_replicas_already_run_on():
    pods = [gpu_pod("m") for _ in range(4)]
    inv = build_inventory(nodes=[node("m", sharing="mps", replicas=4), node("d", sharing="dra")],
                          resource_slices=[dra_slice("d")], pods=pods)
    fresh = make_plan(spec=spec(scale={"gpus": 2}), profile=profile(), inventory=inv)
    kept = make_plan(spec=spec(scale={"gpus": 2}), profile=profile(), inventory=inv, existing_groups=2,
                     current_mechanism="mps")
    assert fresh.mechanism == "dra" and kept.mechanism == "mps" and kept.placeable_gpus == 2


def test_skip_profile_runs_one_replica_per_gpu_with_vllm_sizing_its_own_cache():
    s = parse_spec({"model": "m", "gpu": {"product": H100}, "profiling": {"mode": "skip"}})
    inv = build_inventory(nodes=[node("x"), node("t", sharing="time-slicing", replicas=4), node("d", sharing="dra")],
                          resource_slices=[dra_slice("d")])
    plan = make_plan(spec=s, profile=skip_profile(spec=s, gpu_product=H100), inventory=inv)
    assert plan.mechanism == "exclusive" and plan.replicas_per_gpu == 1
    assert not any(a.startswith(("--kv-cache-memory-bytes", "--gpu-memory-utilization")) for a in plan.vllm_args())


def test_shared_product_label_suffix_is_the_same_gpu():
    shared = node("m", sharing="mps", replicas=4)
    shared["metadata"]["labels"]["nvidia.com/gpu.product"] = f"{H100}-SHARED"
    inv = build_inventory(nodes=[shared])
    assert inv.products() == [H100]


def test_wrong_product_lists_what_the_cluster_has():
    inv = build_inventory(nodes=[node("l4", product="NVIDIA-L4", memory=23034, count=4)])
    with pytest.raises(PlanningError) as err:
        make_plan(spec=spec(), profile=profile(), inventory=inv)
    assert err.value.reason == "NoMatchingGPUs" and "NVIDIA-L4" in err.value.message


def test_partial_placement_is_reported_not_hidden():
    inv = build_inventory(nodes=[node("l4", product="NVIDIA-L4", memory=23034, count=4)])
    p = profile(gpu_product="NVIDIA-L4", replicas_to_saturate=1, memory_per_replica_gib=8.0)
    plan = make_plan(spec=spec(gpu={"product": "NVIDIA-L4"}, scale={"gpus": 6}), profile=p, inventory=inv)
    assert plan.mechanism == "exclusive" and plan.gpus == 6 and plan.placeable_gpus == 4 and plan.degraded


def test_full_nodes_give_insufficient_slots():
    inv = build_inventory(nodes=[node("n", count=2)], pods=[gpu_pod("n"), gpu_pod("n")])
    with pytest.raises(PlanningError) as err:
        make_plan(spec=spec(), profile=profile(replicas_to_saturate=1), inventory=inv)
    assert err.value.reason == "InsufficientSlots"


def test_existing_groups_count_as_placed_when_scaling_out():
    # Our 2 running groups (2 pods each) hold 4 of 8 slots; scaling to 4 groups needs only 2 more.
    pods = [gpu_pod("t") for _ in range(4)]
    inv = build_inventory(nodes=[node("t", count=2, sharing="time-slicing", replicas=4)], pods=pods)
    plan = make_plan(spec=spec(scale={"gpus": 4}), profile=profile(), inventory=inv, existing_groups=2,
                     current_mechanism="time-slicing")
    assert plan.placeable_gpus == 4
    # Counted only for the mechanism they run under: as DRA they would hold nothing.
    other = make_plan(spec=spec(scale={"gpus": 4}), profile=profile(), inventory=inv, existing_groups=2,
                      current_mechanism="dra")
    assert other.placeable_gpus == 2


def test_mid_move_each_mechanism_counts_its_own_groups_whichever_is_current():
    # A group moving from time-slicing to MPS: both run. Asked for time-slicing again, its group
    # counts as placed though the replacement's mechanism (mps) is the current one.
    pods = [gpu_pod("t") for _ in range(2)]
    inv = build_inventory(nodes=[node("t", count=1, sharing="time-slicing", replicas=2)], pods=pods)
    back = make_plan(spec=spec(gpu={"product": H100, "sharing": "time-slicing"}, scale={"gpus": 1}),
                     profile=profile(), inventory=inv, existing_groups=1, current_mechanism="mps",
                     existing_by_mechanism={"mps": 1, "time-slicing": 1})
    assert (back.mechanism, back.placeable_gpus) == ("time-slicing", 1)


def test_model_too_large_for_the_gpu():
    inv = build_inventory(nodes=[node("l4", product="NVIDIA-L4", memory=23034, count=4)])
    with pytest.raises(PlanningError) as err:
        make_plan(spec=spec(gpu={"product": "NVIDIA-L4"}), profile=profile(gpu_product="NVIDIA-L4",
                  memory_per_replica_gib=30.0), inventory=inv)
    assert err.value.reason == "ModelTooLarge"


def test_inventory_skips_cordoned_and_not_ready_nodes_and_allocated_dra_devices():
    cordoned = node("c") | {"spec": {"unschedulable": True}}
    claims = [{"status": {"allocation": {"devices": {"results": [
        {"driver": "gpu.nvidia.com", "pool": "d", "device": "gpu-0"}]}}}}]
    inv = build_inventory(nodes=[cordoned, node("nr", ready=False), node("d", sharing="dra")],
                          resource_slices=[dra_slice("d", 2)], resource_claims=claims)
    assert [(p.node, p.sharing, p.free, p.free_devices) for p in inv.pools] == [("d", "dra", 1, ("gpu-1",))]


def test_static_and_skip_profiles():
    s = parse_spec({"model": "m", "profiling": {"mode": "static", "static": {
        "batchSize": 64, "replicasPerGPU": 4, "memoryPerReplicaGiB": 9, "tokensPerSecondPerGPU": 20000}}})
    p = static_profile(spec=s, gpu_product=H100)
    assert p.tokens_per_second_per_replica == 5000 and p.replicas_to_saturate == 4
    with pytest.raises(SpecError):
        skip_profile(spec=parse_spec({"model": "m", "scale": {"targetTokensPerSecond": 5}}), gpu_product=H100)


@given(saturating=st.integers(1, 8), one=st.floats(1, 1e5), gain=st.floats(1.0, 3.0))
def test_per_gpu_throughput_grows_with_replicas_up_to_saturation(saturating, one, gain):
    p = profile(replicas_to_saturate=saturating, tokens_per_second_per_replica=one,
                tokens_per_second_per_gpu=one * gain)
    values = [tokens_per_second_per_gpu(profile=p, replicas=k) for k in range(1, saturating + 1)]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(one * gain)


def test_capacity_promised_to_unbound_groups_is_not_free():
    from slm_operator.planning.groups import GroupState
    from slm_operator.planning.inventory import unbound_demand

    def group(service, index, mechanism, replicas, claim=None):
        return GroupState(namespace="a", name=f"{service}-g{index}", service=service, index=index, product=H100,
                          mechanism=mechanism, replicas=replicas, claim=claim)

    groups = [group("x", 0, "dra", 2, claim="x-g0-gpu-1"), group("x", 1, "dra", 2, claim="x-g1-gpu-1"),
              group("y", 0, "mps", 4), group("me", 0, "mps", 4)]
    demand = unbound_demand(groups=[g for g in groups if g.service != "me"], bound_pods={"a/y-g0": 1},
                            group_nodes={"a/y-g0": "m"}, allocated_claims=["a/x-g0-gpu-1"])
    # y-g0 has a pod on node m: its 3 other pods will land there (pod affinity), not anywhere.
    assert demand.on_nodes == {"m": 3} and demand.anywhere == {(H100, "dra"): 1}
    # The planned service's own unbound group owes its slots too (not room for its new groups).
    with_me = unbound_demand(groups=groups, bound_pods={"a/y-g0": 1}, group_nodes={"a/y-g0": "m"},
                             allocated_claims=["a/x-g0-gpu-1"])
    assert with_me.anywhere == {(H100, "dra"): 1, (H100, "mps"): 4}
    on_m = build_inventory(nodes=[node("m", count=1, sharing="mps", replicas=4)], pods=[gpu_pod("m")], demand=demand)
    assert on_m.pools[0].free == 0

    inv = build_inventory(nodes=[node("d", sharing="dra")], resource_slices=[dra_slice("d", 2)], demand=demand)
    plan = make_plan(spec=spec(gpu={"product": H100, "sharing": "dra"}, scale={"gpus": 2}), profile=profile(),
                     inventory=inv)
    assert plan.placeable_gpus == 1 and plan.degraded  # one of the two free devices is promised


def test_product_memory_comes_from_the_node_label_smallest_first():
    from slm_operator.planning.inventory import product_memory_gib

    def node(product, memory):
        labels = {"nvidia.com/gpu.product": product}
        if memory is not None:
            labels["nvidia.com/gpu.memory"] = memory
        return {"metadata": {"name": product, "labels": labels}}

    nodes = [node("KIND-CPU-8GB", "8192"), node("KIND-CPU-8GB", "6144"), node("NVIDIA-L4", "23034"), node("X", None)]
    assert product_memory_gib(nodes=nodes, product="KIND-CPU-8GB") == 6.0
    assert product_memory_gib(nodes=nodes, product="NVIDIA-L4") == round(23034 / 1024, 3)
    assert product_memory_gib(nodes=nodes, product="X") is None
    assert product_memory_gib(nodes=nodes, product="absent") is None


def test_new_device_plugin_groups_go_best_fit_to_nodes_with_room_for_a_whole_group():
    from slm_operator.planning.inventory import GpuPool
    from slm_operator.planning.plan import group_nodes

    def pool(name, free):
        return GpuPool(node=name, product=H100, memory_mib=H100_MIB, gpu_count=8, sharing="mps", slots_per_gpu=4,
                       resource_name="nvidia.com/gpu", free=free)
    pools = [pool("b", 8), pool("a", 3), pool("c", 2), pool("d", 1)]
    # The fullest node that still holds a group first; a node with one slot holds no group of 2.
    assert group_nodes(pools=pools, k=2, count=3) == ("c", "a", "b")
    assert group_nodes(pools=pools, k=2, count=9) == ("c", "a", "b", "b", "b", "b")
    # Slots promised to groups the scheduler places come off the roomiest node.
    assert group_nodes(pools=pools, k=2, count=9, reserved=3) == ("c", "a", "b", "b")
    assert group_nodes(pools=pools, k=2, count=0) == ()


def test_a_pinned_group_owes_its_slots_on_its_node_before_a_pod_is_bound():
    from slm_operator.planning.groups import GroupState
    from slm_operator.planning.inventory import unbound_demand

    pinned = GroupState(namespace="a", name="y-g0", service="y", index=0, product=H100, mechanism="mps", replicas=2,
                        pinned_node="m")
    demand = unbound_demand(groups=[pinned], bound_pods={}, allocated_claims=[])
    assert demand.on_nodes == {"m": 2} and demand.anywhere == {}
    # Two nodes of 3 slots, groups of 2: one group per node, each pinned where it fits whole.
    inv = build_inventory(nodes=[node("m", count=1, sharing="mps", replicas=3),
                                 node("n", count=1, sharing="mps", replicas=3)], demand=demand)
    plan = make_plan(spec=spec(gpu={"product": H100, "sharing": "mps"}, scale={"gpus": 2}),
                     profile=profile(replicas_to_saturate=2, memory_per_replica_gib=10.0), inventory=inv)
    assert plan.replicas_per_gpu == 2 and plan.placeable_gpus == 1 and plan.group_nodes == ("n",)


def test_a_node_tainted_against_the_replicas_is_not_planned_on():
    tainted = node("t", sharing="mps", replicas=4)
    tainted["spec"] = {"taints": [{"key": "team", "value": "a", "effect": "NoSchedule"}]}
    gpu_only = node("g", sharing="mps", replicas=4)
    gpu_only["spec"] = {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}  # the replicas tolerate it
    inv = build_inventory(nodes=[tainted, gpu_only])
    assert [p.node for p in inv.pools] == ["g"]

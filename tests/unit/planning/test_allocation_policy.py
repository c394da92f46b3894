"""Device-plugin sharing under the NVIDIA device plugin's allocation policies (distributed, packed).

The plugin hands a pod a slot from any GPU of its node: ``distributed`` (its default) spreads slots
over the GPUs, ``packed`` fills as few as it can, best effort. The planner counts slots per node, so
its plan must hold under either; the status must promise only a node's slot pool, never one GPU.
"""

import dataclasses

import pytest

from slm_operator.constants import USABLE_MEMORY_FRACTION
from slm_operator.planning.groups import GroupState
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.plan import Plan, make_plan, tokens_per_second_per_gpu
from slm_operator.status import readiness, serving
from tests.unit.factories import H100_MIB, dra_slice, node, profile, spec

LABEL = "slm.pareto.dev/gpu-allocation-policy"


def labelled(name, policy, **kwargs):
    n = node(name, **kwargs)
    if policy is not None:
        n["metadata"]["labels"][LABEL] = policy
    return n


def plan_under(policy, *, default="distributed", sharing="mps", count=2, replicas=4, k=2, gpus=4, target=None):
    scale = {"targetTokensPerSecond": target} if target else {"gpus": gpus}
    inv = build_inventory(nodes=[labelled("n", policy, count=count, sharing=sharing, replicas=replicas)])
    return make_plan(spec=spec(gpu={"product": node("x")["metadata"]["labels"]["nvidia.com/gpu.product"],
                                    "sharing": sharing}, scale=scale),
                     profile=profile(replicas_to_saturate=k, memory_per_replica_gib=6.0), inventory=inv,
                     default_allocation_policy=default)


def without_policy(plan: Plan) -> Plan:
    return dataclasses.replace(plan, allocation_policy=None, explanation="")


def place(plan: Plan, *, policy: str, gpus: int, slots: int) -> list[int]:
    """Replicas per physical GPU after the device plugin hands out every group's slots, one pod
    (one slot) at a time: ``distributed`` takes a slot of the least-used GPU, ``packed`` of the
    most-used GPU that has one free."""
    used = [0] * gpus
    for _ in range(plan.placeable_gpus * plan.replicas_per_gpu):
        free = [g for g in range(gpus) if used[g] < slots]
        pick = (min(free, key=lambda g: (used[g], g)) if policy == "distributed"
                else max(free, key=lambda g: (used[g], -g)))
        used[pick] += 1
    return used


@pytest.mark.parametrize("sharing", ["mps", "time-slicing"])
@pytest.mark.parametrize(("slots", "k"), [(4, 2), (4, 4), (2, 3), (8, 3), (3, 3)])
def test_the_plan_is_the_same_under_both_policies_and_holds_per_gpu_either_way(sharing, slots, k):
    count = 2
    plans = {policy: plan_under(policy, sharing=sharing, count=count, replicas=slots, k=k, gpus=64)
             for policy in ("distributed", "packed")}
    assert without_policy(plans["distributed"]) == without_policy(plans["packed"])
    assert (plans["distributed"].allocation_policy, plans["packed"].allocation_policy) == ("distributed", "packed")

    plan = plans["distributed"]
    usable_gib = H100_MIB / 1024 * USABLE_MEMORY_FRACTION
    # A replica's memory is one slot's share, whichever GPU the slot is on.
    assert plan.memory_budget_gib == pytest.approx(usable_gib / slots, abs=0.01)
    assert plan.replicas_per_gpu == min(k, slots) and plan.slots_per_gpu == slots
    # The node is full: every slot holds a replica of some group.
    assert plan.placeable_gpus == count * slots // plan.replicas_per_gpu
    plateau = profile(replicas_to_saturate=k).tokens_per_second_per_gpu
    for policy in ("distributed", "packed"):
        per_gpu = place(plan, policy=policy, gpus=count, slots=slots)
        # What lands on each GPU fits its memory and its plateau, however the plugin spread it.
        # (NB: the status rounds the budget to 0.01 GiB.)
        assert all(n * plan.memory_budget_gib <= usable_gib + n * 0.005 for n in per_gpu), (policy, per_gpu)
        assert all(n <= slots for n in per_gpu)
    # The plan never promises more than the node's GPUs deliver full, however the groups are spread.
    full_gpu = tokens_per_second_per_gpu(profile=profile(replicas_to_saturate=k), replicas=slots)
    assert plan.planned_tokens_per_second <= count * full_gpu + 0.1
    assert plan.planned_tokens_per_second <= count * plateau + 0.1


def test_a_group_smaller_than_a_gpus_slots_is_planned_at_its_slots_share():
    # k* = 2, 4 slots per GPU: two groups fill one GPU (packed) or share two (distributed). Planning
    # each group at a GPU's plateau would promise 4 plateaus from 2 GPUs.
    plan = plan_under(None, count=2, replicas=4, k=2, gpus=4)
    plateau = profile().tokens_per_second_per_gpu
    assert (plan.replicas_per_gpu, plan.placeable_gpus) == (2, 4)
    assert plan.tokens_per_second_per_gpu == pytest.approx(plateau / 2, abs=0.1)
    assert plan.planned_tokens_per_second == pytest.approx(2 * plateau, abs=0.1)
    assert "2/4 of a full GPU" in plan.explanation


def test_a_target_is_sized_with_the_groups_share_not_a_whole_gpu():
    plateau = profile().tokens_per_second_per_gpu
    small = plan_under(None, count=8, replicas=4, k=2, target=3 * plateau)
    assert small.gpus == 6 and small.planned_tokens_per_second >= 3 * plateau
    # Where a GPU has no more slots than k*, a group is one GPU's worth of slots, as before.
    exact = plan_under(None, count=8, replicas=2, k=2, target=3 * plateau)
    assert exact.gpus == 3 and exact.tokens_per_second_per_gpu == pytest.approx(plateau, abs=0.1)


def test_status_promises_a_node_slot_pool_under_distributed_never_one_gpu():
    plan = plan_under(None)  # no label: the operator's default, the plugin's own default
    placement = serving(name="opt", plan=plan, groups=[], endpoint="e").fields["placement"]
    assert placement["packingGuarantee"] == "node-slot-pool"
    assert (placement["allocationPolicy"], placement["slotsPerGPU"]) == ("distributed", 4)
    message = plan.explanation
    assert "replica(s)/GPU" not in message and "one node's device-plugin pool, not one GPU" in message
    assert "1/4 of a GPU" in message and "MPS pins" in message
    assert "may run on different GPUs" in message and "Only DRA" in message


def test_status_under_packed_says_best_effort():
    plan = plan_under("packed")
    placement = serving(name="opt", plan=plan, groups=[], endpoint="e").fields["placement"]
    assert (placement["packingGuarantee"], placement["allocationPolicy"]) == ("node-slot-pool", "packed")
    assert "best effort, not guaranteed" in plan.explanation and "Only DRA" in plan.explanation
    assert "different GPUs" not in plan.explanation
    # The operator's setting says packed for every node without the label.
    assert plan_under(None, default="packed").allocation_policy == "packed"
    # A node's label wins over the operator's setting.
    assert plan_under("distributed", default="packed").allocation_policy == "distributed"


def test_time_slicing_says_memory_is_not_isolated():
    plan = plan_under(None, sharing="time-slicing")
    assert plan.packing_guarantee == "node-slot-pool" and "memory is not isolated" in plan.explanation


def test_nodes_that_differ_are_mixed_and_the_packed_ones_are_named():
    inv = build_inventory(nodes=[labelled("a", "packed", sharing="mps", replicas=4),
                                 labelled("b", None, sharing="mps", replicas=4)])
    plan = make_plan(spec=spec(gpu={"product": node("x")["metadata"]["labels"]["nvidia.com/gpu.product"],
                                    "sharing": "mps"}), profile=profile(), inventory=inv)
    assert plan.allocation_policy == "mixed"
    assert "Packed on a; distributed on the other node(s)" in plan.explanation
    placement = serving(name="opt", plan=plan, groups=[], endpoint="e").fields["placement"]
    assert placement["allocationPolicy"] == "mixed" and placement["packingGuarantee"] == "node-slot-pool"


def test_a_label_that_is_no_policy_is_taken_as_distributed_and_named():
    plan = plan_under("spread", default="packed")
    assert plan.allocation_policy == "distributed"
    assert f"Label {LABEL} of node(s) n ('spread') is neither distributed nor packed" in plan.explanation


def test_dra_and_whole_gpus_promise_one_gpu_and_name_no_policy():
    product = node("x")["metadata"]["labels"]["nvidia.com/gpu.product"]
    dra = make_plan(spec=spec(gpu={"product": product, "sharing": "dra"}), profile=profile(),
                    inventory=build_inventory(nodes=[node("d", sharing="dra")], resource_slices=[dra_slice("d")]))
    exclusive = make_plan(spec=spec(gpu={"product": product, "sharing": "exclusive"}), profile=profile(),
                          inventory=build_inventory(nodes=[labelled("x", "packed")]))
    for plan in (dra, exclusive):
        placement = serving(name="opt", plan=plan, groups=[], endpoint="e").fields["placement"]
        assert placement["packingGuarantee"] == "one-gpu"
        assert "allocationPolicy" not in placement and "slotsPerGPU" not in placement
        assert plan.allocation_policy is None
    assert "2 replica(s)/GPU" in dra.explanation  # one claim: the group does share one GPU


def test_readiness_keeps_what_the_plan_promised():
    plan = plan_under(None)
    placed = serving(name="opt", plan=plan, groups=[], endpoint="e")
    groups = [GroupState(namespace="ns", name="opt-g0", service="opt", index=0, product="P", mechanism="mps",
                         replicas=2, ready_replicas=2, node="n")]
    later = readiness(current={"placement": placed.fields["placement"], "message": plan.explanation,
                               "phase": "Deploying"}, groups=groups)
    assert later is not None
    assert later.fields["placement"]["packingGuarantee"] == "node-slot-pool"
    assert later.fields["placement"]["allocationPolicy"] == "distributed"


def test_the_inventory_reads_the_nodes_label_as_written():
    inv = build_inventory(nodes=[labelled("a", "packed", sharing="mps", replicas=4), labelled("b", None)])
    assert {p.node: p.allocation_policy for p in inv.pools} == {"a": "packed", "b": None}


def test_nodes_with_different_slot_counts_budget_the_smallest_slot():
    # A group may land on either node; MPS pins a client of the 8-slot node to 1/8 of its GPU.
    product = node("x")["metadata"]["labels"]["nvidia.com/gpu.product"]
    inv = build_inventory(nodes=[node("four", sharing="mps", replicas=4), node("eight", sharing="mps", replicas=8)])
    plan = make_plan(spec=spec(gpu={"product": product, "sharing": "mps"}),
                     profile=profile(replicas_to_saturate=4, memory_per_replica_gib=6.0), inventory=inv)
    usable_gib = H100_MIB / 1024 * USABLE_MEMORY_FRACTION
    assert plan.memory_budget_gib == pytest.approx(usable_gib / 8, abs=0.01) and plan.slots_per_gpu == 8
    assert plan.replicas_per_gpu == 4
    # Each group at its 4 slots' share of a full 8-slot GPU: the less the slots are worth.
    assert plan.tokens_per_second_per_gpu == pytest.approx(profile().tokens_per_second_per_gpu / 2, abs=0.1)

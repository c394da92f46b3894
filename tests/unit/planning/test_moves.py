"""``planning.moves``: which groups move, under which index, and when the old ones go."""

from __future__ import annotations

import dataclasses
import datetime

from slm_operator.planning.groups import GroupState
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.moves import LostNode, current_mechanism, lost_nodes, plan_rollout, staying_groups
from slm_operator.planning.plan import Plan, make_plan
from tests.unit.factories import H100, node, profile, spec

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)


def plan(*, gpus: int = 1, sharing: str = "mps", **changes: object) -> Plan:
    inventory = build_inventory(nodes=[node("m", count=8, sharing=sharing, replicas=4)])
    made = make_plan(spec=spec(gpu={"product": H100, "sharing": sharing}, scale={"gpus": gpus}), profile=profile(),
                     inventory=inventory)
    return dataclasses.replace(made, **changes)


def group(index: int, *, mechanism: str = "mps", node: str | None = "m", ready: int = 2, replicas: int = 2,
          product: str = H100, replaces: tuple[int, ...] = ()) -> GroupState:
    return GroupState(namespace="ns", name=f"opt-g{index}", service="opt", index=index, product=product,
                      mechanism=mechanism, replicas=replicas, ready_replicas=ready, node=node, replaces=replaces)


def test_groups_that_fit_are_patched_in_place_and_new_ones_take_the_next_index():
    rollout = plan_rollout(plan=plan(gpus=3), existing=[group(0), group(1)], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(0, ()), (1, ()), (2, ())]
    assert rollout.delete == () and rollout.moving == () and rollout.waiting == ()


def test_scaling_in_removes_the_highest_indexes():
    rollout = plan_rollout(plan=plan(gpus=1), existing=[group(0), group(3), group(5)], lost={})
    assert [g.index for g in rollout.apply] == [0] and [g.name for g in rollout.delete] == ["opt-g3", "opt-g5"]


def test_a_misplaced_group_is_replaced_above_every_index_and_kept_until_its_replacement_is_ready():
    ts = plan(sharing="time-slicing")
    # opt-g1 already runs the plan's mechanism: it is the one group wanted; opt-g0 serves until it is Ready.
    rollout = plan_rollout(plan=ts, existing=[group(0), group(1, mechanism="time-slicing", ready=0)], lost={})
    assert [g.index for g in rollout.apply] == [1] and rollout.delete == () and "opt-g1 Ready" in rollout.moving[0]
    rollout = plan_rollout(plan=ts, existing=[group(0), group(1, mechanism="time-slicing")], lost={})
    assert [g.index for g in rollout.apply] == [1] and [g.name for g in rollout.delete] == ["opt-g0"]

    rollout = plan_rollout(plan=ts, existing=[group(0), group(1)], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(2, (0,))]
    # One group asked: the other is not replaced, and goes once the new one is Ready too.
    assert rollout.delete == () and [g.name for g in rollout.keep] == ["opt-g0", "opt-g1"]
    assert rollout.moving == ("moving group opt-g0 from mps on node m to time-slicing: 0/2 replicas of the new "
                              "group opt-g2 Ready", "moving group opt-g1 from mps on node m to time-slicing: 0/2 "
                              "replicas of the new group opt-g2 Ready")

    starting = group(2, mechanism="time-slicing", ready=1, node="t", replaces=(0,))
    rollout = plan_rollout(plan=ts, existing=[group(0), starting], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(2, (0,))] and rollout.delete == ()
    assert "1/2 replicas of the new group opt-g2 Ready" in rollout.moving[0]

    ready = dataclasses.replace(starting, ready_replicas=2)
    rollout = plan_rollout(plan=ts, existing=[group(0), ready], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(2, ())]
    assert [g.name for g in rollout.delete] == ["opt-g0"]
    assert rollout.moving == ()


def test_a_group_on_a_gone_node_goes_at_once_and_one_on_a_not_ready_node_waits_for_its_replacement():
    mps = plan(gpus=2)
    gone = {"m": LostNode(name="m", state="gone")}
    rollout = plan_rollout(plan=mps, existing=[group(0), group(1, node="n")], lost=gone)
    assert [(g.index, g.replaces) for g in rollout.apply] == [(1, ()), (2, (0,))]
    assert [g.name for g in rollout.delete] == ["opt-g0"] and rollout.moving == ()

    not_ready = {"m": LostNode(name="m", state="NotReady", seconds=400)}
    rollout = plan_rollout(plan=mps, existing=[group(0, ready=0), group(1, node="n")], lost=not_ready)
    assert [(g.index, g.replaces) for g in rollout.apply] == [(1, ()), (2, (0,))] and rollout.delete == ()
    assert "(node m has been NotReady for 400s)" in rollout.moving[0]


def test_without_room_for_a_replacement_the_group_keeps_serving_and_waits():
    ts = plan(gpus=2, sharing="time-slicing", placeable_gpus=1)
    rollout = plan_rollout(plan=ts, existing=[group(0), group(1)], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(2, (0,))] and rollout.delete == ()
    assert [g.name for g in rollout.keep] == ["opt-g0", "opt-g1"]
    assert rollout.waiting == ("group opt-g1 stays on mps on node m until a time-slicing group fits beside it: no "
                               "free GPU for its replacement; free GPUs or add nodes",)


def test_a_dra_shares_statefulset_replaces_every_group_and_is_replaced_by_every_new_group():
    shares = plan(mechanism="dra-shares", replicas=4, placeable_replicas=4)
    rollout = plan_rollout(plan=shares, existing=[group(0), group(1)], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(2, (0, 1))]

    old = group(0, mechanism="dra-shares", replicas=4, ready=4)
    rollout = plan_rollout(plan=plan(gpus=2), existing=[old], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(1, (0,)), (2, (0,))]
    assert "opt-g1, opt-g2" in rollout.moving[0]
    # NB: the node of a dra-shares StatefulSet's first pod says nothing of its other replicas.
    rollout = plan_rollout(plan=shares, existing=[dataclasses.replace(old, node="m")],
                           lost={"m": LostNode(name="m", state="gone")})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(0, ())] and rollout.delete == ()


def test_lost_nodes_are_the_gone_ones_and_those_not_ready_past_the_grace_period():
    def not_ready(name: str, minutes: int) -> dict:
        entry = node(name, ready=False)
        entry["status"]["conditions"][0]["lastTransitionTime"] = (
            NOW - datetime.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
        return entry

    groups = [group(0, node="gone"), group(1, node="late"), group(2, node="recent"), group(3, node="fine"),
              group(4, node=None)]
    lost = lost_nodes(nodes=[not_ready("late", 10), not_ready("recent", 1), node("fine")], groups=groups, now=NOW,
                      grace_seconds=300)
    assert lost == {"gone": LostNode(name="gone", state="gone"),
                    "late": LostNode(name="late", state="NotReady", seconds=600.0)}


def test_the_groups_that_stay_count_as_placed_and_mid_move_the_replacements_mechanism_is_current():
    moving = [group(0), group(1), group(2, mechanism="time-slicing", replaces=(0,))]
    staying = staying_groups(groups=moving, product=H100, lost={})
    assert [g.index for g in staying] == [0, 1, 2] and current_mechanism(staying) == "time-slicing"
    assert staying_groups(groups=[group(0)], product="NVIDIA-L4", lost={}) == []
    assert staying_groups(groups=[group(0)], product=H100, lost={"m": LostNode(name="m", state="gone")}) == []
    assert current_mechanism([group(0), group(1)]) == "mps" and current_mechanism([]) is None


def test_a_group_with_another_number_of_replicas_per_gpu_is_replaced_not_resized_in_place():
    mps = plan()
    assert mps.replicas_per_gpu == 2
    rollout = plan_rollout(plan=mps, existing=[group(0, replicas=3, ready=3)], lost={})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(1, (0,))] and rollout.delete == ()
    assert "from mps (3 replicas per GPU) on node m to mps (2 replicas per GPU)" in rollout.moving[0]


def test_a_dra_group_whose_claim_the_plan_names_otherwise_is_replaced_not_restarted_in_place():
    dra = plan(mechanism="dra")
    old = dataclasses.replace(group(0, mechanism="dra"), claim="opt-g0-gpu-aaaaaaaa")
    rollout = plan_rollout(plan=dra, existing=[old], lost={}, claims={0: "opt-g0-gpu-aaaaaaaa"})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(0, ())]
    rollout = plan_rollout(plan=dra, existing=[old], lost={}, claims={0: "opt-g0-gpu-bbbbbbbb"})
    assert [(g.index, g.replaces) for g in rollout.apply] == [(1, (0,))] and rollout.delete == ()
    assert "from dra on node m to dra (another claim): 0/2 replicas" in rollout.moving[0]


def test_a_group_pinned_to_a_lost_node_moves_before_any_of_its_pods_ran_there():
    pinned = dataclasses.replace(group(0, node=None, ready=0), pinned_node="gone")
    assert pinned.placed_node == "gone"
    lost = lost_nodes(nodes=[node("m")], groups=[pinned], now=NOW, grace_seconds=300)
    assert lost == {"gone": LostNode(name="gone", state="gone")}
    rollout = plan_rollout(plan=plan(), existing=[pinned], lost=lost)
    assert [g.index for g in rollout.apply] == [1] and rollout.delete == (pinned,)


def test_a_group_waiting_for_a_cordoned_node_moves_at_once_and_one_running_there_stays():
    cordoned = node("c")
    cordoned["spec"]["unschedulable"] = True
    tainted = node("t")
    tainted["spec"]["taints"] = [{"key": "maintenance", "effect": "NoSchedule"}]
    waiting = dataclasses.replace(group(0, node=None, ready=0), pinned_node="c")
    running = dataclasses.replace(group(1, node="c"), pinned_node="c")
    on_tainted = dataclasses.replace(group(2, node=None, ready=0), pinned_node="t")
    lost = lost_nodes(nodes=[cordoned, tainted, node("m")], groups=[waiting, running, on_tainted], now=NOW,
                      grace_seconds=300)
    assert lost == {"c": LostNode(name="c", state="cordoned"), "t": LostNode(name="t", state="cordoned")}
    assert staying_groups(groups=[waiting, running, on_tainted], product=H100, lost=lost) == [running]
    rollout = plan_rollout(plan=plan(gpus=2), existing=[waiting, running], lost=lost)
    assert [g.index for g in rollout.apply] == [1, 2], "the running group is kept, a replacement is added"
    assert rollout.delete == (waiting,), "nothing of it runs: it goes at once"
    tolerated = node("g")
    tolerated["spec"]["taints"] = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert lost_nodes(nodes=[tolerated], groups=[dataclasses.replace(waiting, pinned_node="g")], now=NOW,
                      grace_seconds=300) == {}, "the replicas tolerate the GPU taint"

"""Status computation: phases, conditions that keep their transition time, minimal patches."""

from slm_operator.status import condition, merge_conditions, serving_phase, status_patch


def test_transition_time_moves_only_when_status_flips():
    first = merge_conditions(current=[], updates=[condition("Available", False, "NoReplicaReady", "0/2")],
                             generation=1, now="T1")
    same = merge_conditions(current=first, updates=[condition("Available", False, "NoReplicaReady", "0/2 still")],
                            generation=1, now="T2")
    flipped = merge_conditions(current=same, updates=[condition("Available", True, "AllReplicasReady", "2/2")],
                               generation=1, now="T3")
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["T1", "T1", "T3"]


def test_phases():
    args = dict(placeable_gpus=2, requested_gpus=2, explanation="x")
    assert serving_phase(total_replicas=4, ready_replicas=0, **args)[0] == "Deploying"
    assert serving_phase(total_replicas=4, ready_replicas=4, **args)[0] == "Ready"
    partial = dict(placeable_gpus=1, requested_gpus=2, explanation="x")
    assert serving_phase(total_replicas=2, ready_replicas=0, **partial)[0] == "Deploying"
    phase, conds = serving_phase(total_replicas=2, ready_replicas=2, **partial)
    assert phase == "Degraded" and conds[0]["reason"] == "PartialPlacement"


def test_patch_holds_only_changes():
    assert status_patch({"phase": "Ready", "endpoint": "e"}, {"phase": "Ready", "endpoint": "e"}) == {}
    assert status_patch({"phase": "Deploying"}, {"phase": "Ready"}) == {"phase": "Ready"}

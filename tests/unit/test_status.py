"""Status computation: phases, conditions that keep their transition time, minimal patches."""

from slm_operator.status import StatusUpdate, condition, merge_conditions, serving_phase, status_patch, waiting


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


def test_updates_carry_their_reason_and_only_changes_are_patched():
    from slm_operator.errors import SpecError
    from slm_operator.status import desired_patch, failed, pending, profiling

    update = failed("Planned", SpecError("scale", "set exactly one"))
    assert (update.phase, update.warning, update.message) == ("Failed", "InvalidSpec", "spec.scale: set exactly one")
    patch = desired_patch(current={}, update=update, generation=3, now="T1")
    assert patch["phase"] == "Failed" and patch["observedGeneration"] == 3
    assert patch["conditions"][0] | {"lastTransitionTime": None} == {
        "type": "Planned", "status": "False", "reason": "InvalidSpec", "message": "spec.scale: set exactly one",
        "observedGeneration": 3, "lastTransitionTime": None}
    assert desired_patch(current=patch, update=update, generation=3, now="T2") == {}

    waiting = pending("Available", "SecretNotFound", "create it")
    assert waiting.warning is None and waiting.event_message() == "create it"
    running = profiling(current={"profile": {"source": "measured"}}, progress="point 2 of 9")
    assert running.fields == {"profile": {"source": "measured", "progress": "point 2 of 9"}}


def test_a_finished_profile_clears_its_progress_and_joins_later_updates():
    from slm_operator.status import pending, profiled
    from tests.unit.factories import profile

    found = profiled(profile=profile(), current={"profile": {"progress": "point 9 of 9"}})
    assert found.summary["progress"] is None  # a merge patch deletes it
    assert found.summary["batchSize"] == 128 and found.summary["replicasToSaturate"] == 2
    update = pending("Planned", "NoMatchingGPUs", "add nodes").with_profile(found)
    assert [c["type"] for c in update.conditions] == ["Profiled", "Planned"]
    assert update.fields["profile"] is found.summary
    assert pending("Planned", "X", "y").with_profile(None).conditions[0]["type"] == "Planned"


def test_readiness_folds_groups_into_the_stored_placement():
    from slm_operator.planning.groups import GroupState
    from slm_operator.status import readiness

    assert readiness(current={}, groups=[]) is None  # nothing placed yet
    current = {"message": "mps: 2 replica(s)/GPU", "placement": {"gpus": 2, "requestedGPUs": 2, "totalReplicas": 4}}
    groups = [GroupState(namespace="ns", name=f"opt-g{i}", service="opt", index=i, product="P", mechanism="mps",
                         replicas=2, ready_replicas=2 - i, node="n1" if i == 0 else None) for i in range(2)]
    update = readiness(current=current, groups=groups)
    assert update is not None and update.phase == "Deploying"
    placement = update.fields["placement"]
    assert placement["ready"] == "3/4" and placement["nodes"] == ["n1"]
    assert placement["groups"][1] == {"name": "opt-g1", "index": 1, "replicas": 2, "readyReplicas": 1}


def test_routed_says_where_requests_go_and_warns_once_when_the_crd_is_missing():
    from slm_operator.spec import EndpointPickerRef
    from slm_operator.status import StatusUpdate, desired_patch, routed, waiting

    picker = EndpointPickerRef(name="opt-epp", port=9002, failure_mode="FailClose")
    assert routed(name="opt", routing="service", picker=None) is None
    ok = routed(name="opt", routing="inference-pool", picker=picker)
    assert ok is not None and (ok["status"], ok["reason"]) == ("True", "InferencePoolApplied")
    assert "InferencePool opt" in ok["message"] and "opt-epp:9002" in ok["message"]
    missing = routed(name="opt", routing="crd-missing", picker=picker)
    assert missing is not None and (missing["status"], missing["reason"]) == ("False", "InferencePoolCRDMissing")
    assert "inferencepools.inference.networking.k8s.io" in missing["message"]
    assert "kubectl apply -f" in missing["message"] and "Service opt" in missing["message"]

    base = StatusUpdate(phase="Ready", conditions=(condition("Available", True, "AllReplicasReady", "2/2"),),
                        message="plan")
    first = base.with_routing(missing, current={})
    assert first.warning == "InferencePoolCRDMissing" and first.warning_message == missing["message"]
    current = {"phase": "Ready", "conditions": [dict(missing)]}
    assert base.with_routing(missing, current=current).warning is None  # still missing: no new Event
    assert waiting(current) and not waiting({"phase": "Ready", "conditions": [dict(ok)]})

    # Routing turned off: the condition goes; absent already, nothing is written.
    off = base.with_routing(None, current=current)
    patch = desired_patch(current=current, update=off, generation=None, now="t")
    assert [c["type"] for c in patch["conditions"]] == ["Available"]
    settled = {"phase": "Ready", "message": "plan", "conditions": patch["conditions"]}
    assert desired_patch(current=settled, update=off, generation=None, now="t") == {}


def test_serving_writes_the_selector_of_the_engine_pods():
    from slm_operator.status import serving
    from tests.unit.builders.test_children import _plan
    from tests.unit.factories import node

    update = serving(name="opt", plan=_plan([node("n", sharing="mps", replicas=4)]), groups=[], endpoint="e")
    assert update.fields["selector"] == "app.kubernetes.io/component=model-server,slm.pareto.dev/service=opt"
    assert update.fields["placement"]["gpus"] == 1  # the scale subresource's status replicas


def test_a_move_in_progress_is_looked_at_again_and_says_which_groups_move():
    base = StatusUpdate(phase="Ready", conditions=(condition("Available", True, "AllReplicasReady", "2/2"),
                                                   condition("Progressing", False, "Complete", "done")))
    assert base.with_moves(moving=(), waiting=()) is base
    moving = base.with_moves(moving=("moving group opt-g0 ...",), waiting=())
    assert [(c["type"], c["status"], c["reason"]) for c in moving.conditions] == [
        ("Available", "True", "AllReplicasReady"), ("Progressing", "True", "Moving")]
    stuck = base.with_moves(moving=(), waiting=("group opt-g1 stays ...",))
    assert (stuck.conditions[-1]["status"], stuck.conditions[-1]["reason"]) == ("False", "MoveWaitingForCapacity")
    assert waiting({"phase": "Ready", "conditions": list(moving.conditions)})
    # Starting replicas are not polled: readiness and a node NotReady arrive as events.
    assert not waiting({"phase": "Deploying", "conditions": []})
    assert not waiting({"phase": "Ready", "conditions": list(base.conditions)})

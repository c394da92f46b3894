"""Moving a service's GPU groups (sharing, product, node lost, node NotReady), make-before-break,
against the in-memory API: the replacement is created under a new index, the old group keeps
serving until it is Ready, then goes with its claim; no pod's affinity ties the new to the old."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from slm_operator.config import OperatorConfig
from slm_operator.gpu_index import GpuIndex, node_entry, slice_entry
from slm_operator.reconcile import OperatorState, fold_readiness, reconcile_services_on
from tests.unit.factories import H100, dra_slice, gpu_pod, node
from tests.unit.fakes import FakeApi, gpu_index, kopf_index, own_watches
from tests.unit.test_reconcile import STATIC, conditions, reconcile, service, state

A100 = "NVIDIA-A100-SXM4-80GB"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    fake.install(monkeypatch)
    return fake


def statefulsets(api: FakeApi) -> dict[str, dict[str, Any]]:
    return {name: obj for (kind, _, name), obj in api.objects.items() if kind == "StatefulSet"}


def fold(api: FakeApi, st: OperatorState, name: str) -> dict[str, Any]:
    sts = api.objects[("StatefulSet", "ns", name)]
    fold_readiness(state=st, labels=sts["metadata"]["labels"], namespace="ns", name=name, event_type="MODIFIED",
                   status=sts["status"])
    return api.objects[("SLMService", "ns", "opt")]["status"]


def progressing(status: dict[str, Any]) -> dict[str, Any]:
    return {c["type"]: c for c in status["conditions"]}["Progressing"]


def edit(body: dict[str, Any], **gpu: Any) -> dict[str, Any]:
    body["spec"]["gpu"] = body["spec"]["gpu"] | gpu
    body["metadata"]["generation"] += 1
    return body


def node_terms(sts: dict[str, Any]) -> dict[str, list[str]]:
    affinity = sts["spec"]["template"]["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return {e["key"]: e["values"] for e in terms[0]["matchExpressions"]}


def ready_service(api: FakeApi, st: OperatorState, index: Any, *, gpus: int = 1, node_name: str = "m",
                  **gpu: Any) -> dict[str, Any]:
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100, "sharing": "mps"} | gpu,
                         "scale": {"gpus": gpus}, "profiling": STATIC})
    reconcile(api, st, index, body)
    api.run_pods(node_name=node_name, ready=True)
    for name in statefulsets(api):
        fold(api, st, name)
    assert body["status"]["phase"] == "Ready"
    api.writes.clear()
    return body


def test_a_sharing_change_starts_a_new_group_and_removes_the_old_once_it_is_ready(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=2, sharing="mps", replicas=4),
                          node("t", count=2, sharing="time-slicing", replicas=4)), state()
    body = ready_service(api, st, index)

    status = reconcile(api, st, index, edit(body, sharing="time-slicing"))
    # The old group is neither patched nor deleted: it keeps serving.
    assert [w for w in api.writes if w[2] == "opt-g0"] == []
    new = statefulsets(api)["opt-g1"]
    assert new["metadata"]["annotations"]["slm.pareto.dev/replaces"] == "0"
    assert node_terms(new)["nvidia.com/gpu.sharing-strategy"] == ["time-slicing"]
    # Its pods' required pod affinity follows its own group only, never the old group's node.
    pod_affinity = new["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    (term,) = pod_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"]["slm.pareto.dev/group"] == "1"
    assert new["spec"]["selector"]["matchLabels"]["slm.pareto.dev/group"] == "1"
    assert status["phase"] == "Ready" and status["placement"]["mechanism"] == "time-slicing"
    assert (progressing(status)["status"], progressing(status)["reason"]) == ("True", "Moving")
    assert progressing(status)["message"] == (
        "moving group opt-g0 from mps on node m to time-slicing: 0/2 replicas of the new group opt-g1 Ready")

    # The operator restarts mid-move: the same new group, no third one.
    api.writes.clear()
    reconcile(api, state(), index, body)
    assert sorted(statefulsets(api)) == ["opt-g0", "opt-g1"] and ("delete", "StatefulSet", "opt-g0") not in api.writes

    # The new group turns Ready: readiness leaves the move's condition to the reconciler ...
    api.run_pods(node_name="t", ready=True, only="opt-g1")
    status = fold(api, st, "opt-g1")
    assert progressing(status)["reason"] == "Moving" and status["placement"]["ready"] == "2/2"
    # ... whose next look removes the old group.
    status = reconcile(api, st, index, body)
    assert ("delete", "StatefulSet", "opt-g0") in api.writes and sorted(statefulsets(api)) == ["opt-g1"]
    assert status["phase"] == "Ready" and progressing(status)["reason"] == "Complete"
    assert [g["name"] for g in status["placement"]["groups"]] == ["opt-g1"]
    assert "slm.pareto.dev/replaces" not in statefulsets(api)["opt-g1"]["metadata"]["annotations"]


def test_a_product_change_moves_the_group_and_its_claim(api: FakeApi) -> None:
    nodes = [node("m", count=2, sharing="dra"), node("a", product=A100, memory=81920, count=2, sharing="dra")]
    index, st = GpuIndex({
        "gpu_nodes": kopf_index([node_entry(name=n["metadata"]["name"], labels=n["metadata"]["labels"], spec={},
                                            status=n["status"]) for n in nodes]),
        "gpu_slices": kopf_index([slice_entry(name=n, spec=dra_slice(n, count=2)["spec"]) for n in ("m", "a")]),
    }, **own_watches()), state()
    body = ready_service(api, st, index, sharing="dra")
    old_claim = next(name for (kind, _, name) in api.objects if kind == "ResourceClaim")

    status = reconcile(api, st, index, edit(body, product=A100))
    new = statefulsets(api)["opt-g1"]
    assert node_terms(new)["nvidia.com/gpu.product"][0] == A100
    claims = sorted(name for (kind, _, name) in api.objects if kind == "ResourceClaim")
    assert len(claims) == 2 and old_claim in claims  # the old group keeps its GPU until the new one serves
    assert "to dra (NVIDIA-A100-SXM4-80GB)" in progressing(status)["message"]
    assert "from dra (NVIDIA-H100-80GB-HBM3) on node m" in progressing(status)["message"]

    api.run_pods(node_name="a", ready=True, only="opt-g1")
    reconcile(api, st, index, body)
    assert sorted(statefulsets(api)) == ["opt-g1"]
    assert ("delete", "ResourceClaim", old_claim) in api.writes
    uses = statefulsets(api)["opt-g1"]["spec"]["template"]["spec"]["resourceClaims"][0]["resourceClaimName"]
    assert [name for (kind, _, name) in api.objects if kind == "ResourceClaim"] == [uses]


def test_a_group_whose_node_is_gone_is_replaced_at_once(api: FakeApi) -> None:
    st = state()
    ready_service(api, st, gpu_index(node("m", count=1, sharing="mps", replicas=4),
                                     node("n", count=1, sharing="mps", replicas=4)))
    # Node m is deleted: its watch event reconciles the services with a replica there, of watched namespaces.
    index = gpu_index(node("n", count=1, sharing="mps", replicas=4))
    reconcile_services_on(state=st, index=index, node="m", watched=lambda ns: ns != "ns")
    assert api.writes == []
    reconcile_services_on(state=st, index=index, node="m", watched=lambda ns: True)
    status = api.objects[("SLMService", "ns", "opt")]["status"]
    assert ("delete", "StatefulSet", "opt-g0") in api.writes and sorted(statefulsets(api)) == ["opt-g1"]
    assert status["placement"]["mechanism"] == "mps" and [g["name"] for g in status["placement"]["groups"]] == [
        "opt-g1"]


def not_ready(name: str, *, since: datetime.timedelta) -> dict[str, Any]:
    lost = node(name, count=1, sharing="mps", replicas=4, ready=False)
    at = datetime.datetime.now(datetime.timezone.utc) - since
    lost["status"]["conditions"][0]["lastTransitionTime"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return lost


def test_a_group_on_a_node_not_ready_past_the_grace_period_moves(api: FakeApi) -> None:
    st = OperatorState(config=OperatorConfig(profiler_runner="none", node_not_ready_seconds=300))
    healthy = node("n", count=1, sharing="mps", replicas=4)
    body = ready_service(api, st, gpu_index(node("m", count=1, sharing="mps", replicas=4), healthy))
    api.objects[("StatefulSet", "ns", "opt-g0")]["status"] = {"readyReplicas": 0}  # the node stopped answering

    reconcile(api, st, gpu_index(not_ready("m", since=datetime.timedelta(minutes=1)), healthy), body)
    assert sorted(statefulsets(api)) == ["opt-g0"]  # within the grace period: nothing moves

    status = reconcile(api, st, gpu_index(not_ready("m", since=datetime.timedelta(minutes=6)), healthy), body)
    assert sorted(statefulsets(api)) == ["opt-g0", "opt-g1"]
    assert progressing(status)["reason"] == "Moving"
    assert "from mps on node m (node m has been NotReady for 36" in progressing(status)["message"]

    api.run_pods(node_name="n", ready=True, only="opt-g1")
    status = reconcile(api, st, gpu_index(not_ready("m", since=datetime.timedelta(minutes=7)), healthy), body)
    assert sorted(statefulsets(api)) == ["opt-g1"] and status["phase"] == "Ready"


def test_without_room_for_every_replacement_the_old_groups_keep_serving_and_say_why(api: FakeApi) -> None:
    # Room for one time-slicing group (2 slots) beside the two MPS groups.
    nodes = (node("m", count=2, sharing="mps", replicas=4), node("t", count=1, sharing="time-slicing", replicas=2))
    index, st = gpu_index(*nodes), state()
    body = ready_service(api, st, index, gpus=2)
    status = reconcile(api, st, index, edit(body, sharing="time-slicing"))
    assert sorted(statefulsets(api)) == ["opt-g0", "opt-g1", "opt-g2"]
    assert statefulsets(api)["opt-g2"]["metadata"]["annotations"]["slm.pareto.dev/replaces"] == "0"
    assert (progressing(status)["status"], progressing(status)["reason"]) == ("True", "MoveWaitingForCapacity")
    assert "moving group opt-g0" in progressing(status)["message"]
    assert "group opt-g1 stays on mps on node m until a time-slicing group fits" in progressing(status)["message"]

    api.run_pods(node_name="t", ready=True, only="opt-g2")
    # The GPU pods the index sees now: the new group's two time-slicing slots, the old one's MPS slots.
    index = gpu_index(*nodes, pods=[gpu_pod(n) for n in "ttmm"])
    status = reconcile(api, st, index, body)
    assert sorted(statefulsets(api)) == ["opt-g1", "opt-g2"]  # opt-g1 still serves: nothing replaces it yet
    assert (progressing(status)["status"], progressing(status)["reason"]) == ("False", "MoveWaitingForCapacity")
    assert status["phase"] == "Degraded"


def test_with_no_room_at_all_nothing_is_touched_and_the_status_says_so(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=1, sharing="mps", replicas=4)), state()
    body = ready_service(api, st, index)
    status = reconcile(api, st, index, edit(body, sharing="time-slicing"))
    assert api.writes == [] or all(w[0] != "delete" and w[1] != "StatefulSet" for w in api.writes)
    assert sorted(statefulsets(api)) == ["opt-g0"]
    assert conditions(status)["Progressing"] == ("False", "MoveWaitingForCapacity")
    assert "opt-g0" in progressing(status)["message"] and "time-slicing" in progressing(status)["message"]


def test_another_number_of_replicas_per_gpu_moves_the_group_to_a_gpu_with_room_for_them(api: FakeApi) -> None:
    nodes = (node("m", count=1, sharing="mps", replicas=4), node("n", count=1, sharing="mps", replicas=4))
    st = state()
    body = ready_service(api, st, gpu_index(*nodes))
    body["spec"]["profiling"] = {"mode": "static", "static": STATIC["static"] | {"replicasPerGPU": 3}}
    body["metadata"]["generation"] += 1
    # m's GPU has 2 of its 4 slots left: a third replica pinned there by the group's pod affinity
    # would not fit beside the new group; n's GPU has room for the new group of 3.
    index = gpu_index(*nodes, pods=[gpu_pod("m"), gpu_pod("m")])
    status = reconcile(api, st, index, body)
    assert statefulsets(api)["opt-g0"]["spec"]["replicas"] == 2 and [w for w in api.writes if w[2] == "opt-g0"] == []
    assert statefulsets(api)["opt-g1"]["spec"]["replicas"] == 3
    assert progressing(status)["message"] == (
        "moving group opt-g0 from mps (2 replicas per GPU) on node m to mps (3 replicas per GPU): 0/3 replicas "
        "of the new group opt-g1 Ready")

    api.run_pods(node_name="n", ready=True, only="opt-g1")
    status = reconcile(api, st, gpu_index(*nodes, pods=[gpu_pod("m")] * 2 + [gpu_pod("n")] * 3), body)
    assert sorted(statefulsets(api)) == ["opt-g1"] and status["placement"]["ready"] == "3/3"


def test_a_spec_changed_back_mid_move_keeps_the_old_group_and_drops_the_new_one(api: FakeApi) -> None:
    # Every MPS slot is the old group's: planning the way back must count it as placed.
    nodes = (node("m", count=1, sharing="mps", replicas=2), node("t", count=1, sharing="time-slicing", replicas=2))
    st = state()
    body = ready_service(api, st, gpu_index(*nodes))
    index = gpu_index(*nodes, pods=[gpu_pod("m"), gpu_pod("m")])
    reconcile(api, st, index, edit(body, sharing="time-slicing"))
    assert sorted(statefulsets(api)) == ["opt-g0", "opt-g1"]

    status = reconcile(api, st, index, edit(body, sharing="mps"))
    assert status["phase"] == "Ready" and status["placement"]["mechanism"] == "mps"
    assert sorted(statefulsets(api)) == ["opt-g0"] and ("delete", "StatefulSet", "opt-g1") in api.writes
    assert progressing(status)["reason"] == "Complete"


def test_a_group_pinned_to_a_node_that_is_gone_before_its_pods_ran_is_replaced_at_once(api: FakeApi) -> None:
    st = state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100, "sharing": "mps"},
                         "scale": {"gpus": 1}, "profiling": STATIC})
    reconcile(api, st, gpu_index(node("m", count=1, sharing="mps", replicas=4)), body)
    pinned = statefulsets(api)["opt-g0"]
    assert pinned["metadata"]["annotations"]["slm.pareto.dev/node"] == "m"  # no pod of it ran anywhere
    # Node m is deleted, n joins: no pod names m, the watched StatefulSet's pin does.
    n = node("n", count=1, sharing="mps", replicas=4)
    index = GpuIndex({"gpu_nodes": kopf_index([node_entry(name="n", labels=n["metadata"]["labels"], spec={},
                                                          status=n["status"])]),
                      "gpu_slices": {}}, **own_watches(groups=[pinned]))
    api.writes.clear()
    reconcile_services_on(state=st, index=index, node="m", watched=lambda ns: True)
    assert ("delete", "StatefulSet", "opt-g0") in api.writes
    assert statefulsets(api)["opt-g1"]["metadata"]["annotations"]["slm.pareto.dev/node"] == "n"


def test_a_node_cordoned_before_the_watch_reports_a_group_pinned_there_moves_it(api: FakeApi) -> None:
    st = state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100, "sharing": "mps"},
                         "scale": {"gpus": 1}, "profiling": STATIC})
    m, n = node("m", count=1, sharing="mps", replicas=4), node("n", count=1, sharing="mps", replicas=4)
    reconcile(api, st, gpu_index(m), body)
    assert statefulsets(api)["opt-g0"]["metadata"]["annotations"]["slm.pareto.dev/node"] == "m"
    # m is cordoned at once: the StatefulSet watch has not reported opt-g0 (no own_watches groups);
    # the ledger knows it is pinned there. n has joined meanwhile.
    index = GpuIndex({"gpu_nodes": kopf_index([
        node_entry(name="m", labels=m["metadata"]["labels"], spec={"unschedulable": True}, status=m["status"]),
        node_entry(name="n", labels=n["metadata"]["labels"], spec={}, status=n["status"])]),
        "gpu_slices": {}}, **own_watches())
    api.writes.clear()
    reconcile_services_on(state=st, index=index, node="m", watched=lambda ns: True, pinned_only=True)
    assert ("delete", "StatefulSet", "opt-g0") in api.writes, "none of its pods is bound: nothing to keep"
    assert statefulsets(api)["opt-g1"]["metadata"]["annotations"]["slm.pareto.dev/node"] == "n"

"""The handlers' work (reconcile, readiness) against an in-memory API: every outcome, every write.

Here ``slm_operator.kube`` is replaced by ``tests.unit.fakes.FakeApi``, which records each write, so
a test can say exactly which objects, status patches and Events an outcome produces; the real API
server is exercised by tests/integration.
"""

from __future__ import annotations

from typing import Any

import pytest

from slm_operator import kube
from slm_operator.config import OperatorConfig
from slm_operator.errors import ApplyDeferred
from slm_operator.gpu_index import GpuIndex, node_entry, slice_entry
from slm_operator.reconcile import OperatorState, fold_readiness, grant_starts, reconcile_service, reconcile_woken
from tests.unit.factories import H100, gpu_pod, node
from tests.unit.fakes import FakeApi, gpu_index, kopf_index, own_watches, resource_claim

STATIC = {"mode": "static", "static": {"batchSize": 64, "replicasPerGPU": 2, "memoryPerReplicaGiB": 10,
                                       "tokensPerSecondPerGPU": 20000}}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    fake.install(monkeypatch)
    return fake


def service(api: FakeApi, spec: dict[str, Any], *, name: str = "opt") -> dict[str, Any]:
    body = {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1}, "spec": spec}
    api.objects[("SLMService", "ns", name)] = body
    return body


def reconcile(api: FakeApi, state: OperatorState, index: GpuIndex, body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    reconcile_service(state=state, index=index, body=body, spec=body["spec"], name=meta["name"], namespace="ns",
                      uid=meta["uid"], meta=meta, status=body.get("status") or {})
    return body.get("status") or {}


def state() -> OperatorState:
    return OperatorState(config=OperatorConfig(profiler_runner="none"))


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_static_service_deploys_then_turns_ready_without_a_replan(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=2, sharing="mps", replicas=4)), state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "scale": {"gpus": 2},
                         "profiling": STATIC})
    status = reconcile(api, st, index, body)
    assert status["phase"] == "Deploying" and status["placement"]["ready"] == "0/4"
    assert conditions(status) == {"Profiled": ("True", "ProfileStatic"), "Planned": ("True", "Planned"),
                                  "Available": ("False", "NoReplicaReady"),
                                  "Progressing": ("True", "StartingReplicas")}
    assert status["profile"]["batchSize"] == 64 and status["profile"]["replicasToSaturate"] == 2
    assert sorted(w for w in api.writes if w[1] == "StatefulSet") == [
        ("apply", "StatefulSet", "opt-g0"), ("apply", "StatefulSet", "opt-g1")]
    assert len(st.ledger) == 2  # remembered until the StatefulSet watch reports them
    assert api.events == [("Normal", "Deploying")]

    api.writes.clear()
    api.run_pods(node_name="m", ready=True)
    sts = api.objects[("StatefulSet", "ns", "opt-g0")]
    fold_readiness(state=st, labels=sts["metadata"]["labels"], namespace="ns", name="opt-g0", event_type="MODIFIED",
                   status=sts["status"])
    status = api.objects[("SLMService", "ns", "opt")]["status"]
    assert status["phase"] == "Ready" and status["placement"]["ready"] == "4/4"
    assert status["placement"]["nodes"] == ["m"] and [g["node"] for g in status["placement"]["groups"]] == ["m", "m"]
    assert api.writes == [] and api.events[-1] == ("Normal", "Ready")  # readiness writes the status only

    patches = len(api.patches)
    fold_readiness(state=st, labels=sts["metadata"]["labels"], namespace="ns", name="opt-g0", event_type="MODIFIED",
                   status=sts["status"])
    reconcile(api, st, index, api.objects[("SLMService", "ns", "opt")])
    assert len(api.patches) == patches  # nothing changed: no status write at all


def test_a_bad_spec_fails_with_its_field_and_creates_nothing(api: FakeApi) -> None:
    body = service(api, {"model": "facebook/opt-1.3b", "scale": {"gpus": 1, "targetTokensPerSecond": 5}})
    status = reconcile(api, state(), gpu_index(node("m")), body)
    assert status["phase"] == "Failed" and conditions(status)["Planned"] == ("False", "InvalidSpec")
    assert "spec.scale" in status["message"] and api.writes == []
    assert api.events == [("Warning", "Failed"), ("Warning", "InvalidSpec")]


def test_a_missing_secret_or_gpu_waits_and_says_what_to_do(api: FakeApi) -> None:
    body = service(api, {"model": "facebook/opt-1.3b", "engine": {"hfTokenSecretRef": {"name": "hf"}}})
    status = reconcile(api, state(), gpu_index(node("m")), body)
    assert status["phase"] == "Pending" and conditions(status)["Available"] == ("False", "SecretNotFound")
    assert "kubectl create secret generic hf" in status["message"]

    body = service(api, {"model": "facebook/opt-1.3b", "engine": {"apiKeySecretRef": {"name": "api"}}}, name="key")
    status = reconcile(api, state(), gpu_index(node("m")), body)
    assert conditions(status)["Available"] == ("False", "SecretNotFound") and "apiKeySecretRef" in status["message"]

    body = service(api, {"model": "facebook/opt-1.3b", "profiling": STATIC}, name="nogpu")
    status = reconcile(api, state(), gpu_index(), body)
    assert status["phase"] == "Pending" and conditions(status)["Planned"] == ("False", "NoMatchingGPUs")
    assert api.writes == []


def test_no_placement_is_pending_and_keeps_what_profiling_found(api: FakeApi) -> None:
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": "NVIDIA-L4"}, "profiling": STATIC})
    status = reconcile(api, state(), gpu_index(node("m")), body)
    assert status["phase"] == "Pending" and conditions(status)["Planned"] == ("False", "NoMatchingGPUs")
    assert conditions(status)["Profiled"] == ("True", "ProfileStatic") and status["profile"]["batchSize"] == 64


def test_unknown_models_and_gpus_fail_with_their_own_reason(api: FakeApi) -> None:
    index = gpu_index(node("m", product="ACME-X1"))
    body = service(api, {"model": "facebook/opt-1.3b", "profiling": {"mode": "estimate"}})
    status = reconcile(api, state(), index, body)
    assert status["phase"] == "Failed" and conditions(status)["Profiled"] == ("False", "UnknownGPUProduct")
    body = service(api, {"model": "acme/never-heard-of", "gpu": {"product": H100},
                         "profiling": {"mode": "estimate"}}, name="nomodel")
    status = reconcile(api, state(), gpu_index(node("m")), body)
    assert conditions(status)["Profiled"] == ("False", "UnknownModel")


def test_a_bug_is_not_reported_as_the_users_fault(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    import slm_operator.reconcile as reconcile_module

    def broken(**_: Any) -> None:
        raise ValueError("estimator bug")

    monkeypatch.setattr(reconcile_module, "obtain_profile", broken)
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}})
    with pytest.raises(ValueError, match="estimator bug"):
        reconcile(api, state(), gpu_index(node("m")), body)
    assert "status" not in body  # kopf logs and retries it; no InvalidSpec, no Failed


def test_a_refused_child_fails_instead_of_looping(api: FakeApi) -> None:
    api.reject = "StatefulSet"
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "profiling": STATIC})
    status = reconcile(api, state(), gpu_index(node("m", sharing="mps", replicas=4)), body)
    assert status["phase"] == "Failed" and conditions(status)["Progressing"] == ("False", "ApplyFailed")
    assert "HTTP 422" in status["message"] and ("Warning", "ApplyFailed") in api.events


def test_scaling_in_removes_whole_groups(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=4, sharing="mps", replicas=4)), state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "scale": {"gpus": 3},
                         "profiling": STATIC})
    reconcile(api, st, index, body)
    body["spec"]["scale"] = {"gpus": 1}
    body["metadata"]["generation"] = 2
    status = reconcile(api, st, index, body)
    assert ("delete", "StatefulSet", "opt-g1") in api.writes and ("delete", "StatefulSet", "opt-g2") in api.writes
    assert [g["name"] for g in status["placement"]["groups"]] == ["opt-g0"]
    assert status["observedGeneration"] == 2


def test_a_model_no_batch_size_fits_fails_once_with_its_reason(api: FakeApi) -> None:
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "profiling": {"mode": "estimate"},
                         "slo": {"maxInterTokenLatencyMs": 0.01}})
    status = reconcile(api, state(), gpu_index(node("m")), body)
    assert status["phase"] == "Failed" and conditions(status)["Profiled"] == ("False", "NoFeasibleBatchSize")
    assert "SLO" in status["message"] and api.writes == []


def test_readiness_never_moves_a_failed_service_and_a_failed_write_is_folded_again(
        api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    index, st = gpu_index(node("m", count=1, sharing="mps", replicas=4)), state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "scale": {"gpus": 1},
                         "profiling": STATIC})
    assert reconcile(api, st, index, body)["phase"] == "Deploying"
    sts = api.objects[("StatefulSet", "ns", "opt-g0")]
    labels = sts["metadata"]["labels"]

    # The API fails while the pods turn Ready: the fold raises, and the same event later is folded.
    api.run_pods(node_name="m", ready=True)
    real_patch = api.patch_service_status

    def outage(**_: Any) -> kube.Outcome:
        raise ConnectionError("API server unreachable")

    monkeypatch.setattr(kube, "patch_service_status", outage)
    with pytest.raises(ConnectionError):
        fold_readiness(state=st, labels=labels, namespace="ns", name="opt-g0", event_type="MODIFIED",
                       status=sts["status"])
    assert api.objects[("SLMService", "ns", "opt")]["status"]["phase"] == "Deploying"
    monkeypatch.setattr(kube, "patch_service_status", real_patch)
    fold_readiness(state=st, labels=labels, namespace="ns", name="opt-g0", event_type="MODIFIED",
                   status=sts["status"])
    assert api.objects[("SLMService", "ns", "opt")]["status"]["phase"] == "Ready"

    # A spec the reconciler refuses: Failed, and the old pods' readiness does not turn it Ready again.
    failed = api.objects[("SLMService", "ns", "opt")]
    failed["spec"] = failed["spec"] | {"scale": {"gpus": 1, "targetTokensPerSecond": 5}}
    assert reconcile(api, st, index, failed)["phase"] == "Failed"
    sts["status"] = {"readyReplicas": 1}
    fold_readiness(state=st, labels=labels, namespace="ns", name="opt-g0", event_type="MODIFIED", status=sts["status"])
    sts["status"] = {"readyReplicas": 2}
    fold_readiness(state=st, labels=labels, namespace="ns", name="opt-g0", event_type="MODIFIED", status=sts["status"])
    assert api.objects[("SLMService", "ns", "opt")]["status"]["phase"] == "Failed"


def test_a_transient_refusal_is_degraded_with_its_reason_and_the_retry_heals_it(
        api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    index, st = gpu_index(node("m", sharing="mps", replicas=4)), state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "profiling": STATIC})
    real_apply = api.apply

    def quota(obj: dict[str, Any]) -> kube.Outcome:
        if obj["kind"] == "StatefulSet":
            raise ApplyDeferred("Forbidden", "StatefulSet ns/opt-g0: HTTP 403 (exceeded quota); retrying")
        return real_apply(obj)

    monkeypatch.setattr(kube, "apply", quota)
    status = reconcile(api, st, index, body)
    assert status["phase"] == "Degraded" and conditions(status)["Progressing"] == ("False", "Forbidden")
    assert "exceeded quota" in status["message"] and ("Warning", "Forbidden") in api.events
    monkeypatch.setattr(kube, "apply", real_apply)
    status = reconcile(api, st, index, api.objects[("SLMService", "ns", "opt")])  # the retry timer
    assert status["phase"] == "Deploying" and conditions(status)["Progressing"][0] == "True"


def test_routing_adds_an_inference_pool_and_removing_it_deletes_the_pool(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=1, sharing="mps", replicas=4)), state()
    spec = {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "profiling": STATIC,
            "routing": {"inferencePool": {"endpointPicker": {"failureMode": "FailOpen"}}}}
    body = service(api, spec)
    status = reconcile(api, st, index, body)
    pool = api.objects[("InferencePool", "ns", "opt")]
    assert pool["spec"]["endpointPickerRef"] == {"kind": "Service", "name": "opt-epp", "port": {"number": 9002},
                                                 "failureMode": "FailOpen"}
    assert conditions(status)["Routed"] == ("True", "InferencePoolApplied")
    assert status["selector"] == "app.kubernetes.io/component=model-server,slm.pareto.dev/service=opt"

    api.writes.clear()
    body["spec"] = {k: v for k, v in spec.items() if k != "routing"}
    status = reconcile(api, st, index, body)
    assert ("delete", "InferencePool", "opt") in api.writes and ("InferencePool", "ns", "opt") not in api.objects
    assert "Routed" not in conditions(status)

    api.writes.clear()
    reconcile(api, st, index, body)  # routing stays off: no pool is looked up or deleted again
    assert [w for w in api.writes if w[1] == "InferencePool"] == []


def test_a_pool_someone_else_made_is_not_deleted(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=1, sharing="mps", replicas=4)), state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "profiling": STATIC})
    api.objects[("InferencePool", "ns", "opt")] = {"metadata": {"name": "opt", "ownerReferences": [
        {"uid": "someone-else", "controller": True}]}}
    body["status"] = {"conditions": [{"type": "Routed", "status": "True", "reason": "InferencePoolApplied"}]}
    reconcile(api, st, index, body)
    assert ("InferencePool", "ns", "opt") in api.objects


def test_without_the_inference_pool_crd_the_service_serves_and_says_how_to_install_it(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=1, sharing="mps", replicas=4)), state()
    api.unserved.add("InferencePool")
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "profiling": STATIC,
                         "routing": {"inferencePool": {}}})
    status = reconcile(api, st, index, body)
    assert status["phase"] == "Deploying" and ("apply", "Service", "opt") in api.writes
    assert [w for w in api.writes if w[1] == "StatefulSet"] == [("apply", "StatefulSet", "opt-g0")]
    routed = {c["type"]: c for c in status["conditions"]}["Routed"]
    assert (routed["status"], routed["reason"]) == ("False", "InferencePoolCRDMissing")
    assert api.events == [("Normal", "Deploying"), ("Warning", "InferencePoolCRDMissing")]

    reconcile(api, st, index, body)  # still missing: no second Warning
    assert api.events.count(("Warning", "InferencePoolCRDMissing")) == 1

    api.unserved.clear()  # the CRD is installed; the retry timer reconciles again
    status = reconcile(api, st, index, body)
    assert conditions(status)["Routed"] == ("True", "InferencePoolApplied")
    assert ("InferencePool", "ns", "opt") in api.objects


def test_a_failed_profiler_job_fails_once_and_deleting_it_profiles_again(api: FakeApi) -> None:
    from slm_operator.errors import ProfilePending

    index = gpu_index(node("m", count=2, sharing="mps", replicas=4))
    st = OperatorState(config=OperatorConfig(profiler_runner="job", profiler_namespace="slm-system"))
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}})
    with pytest.raises(ProfilePending):
        reconcile(api, st, index, body)
    status = api.objects[("SLMService", "ns", "opt")]["status"]
    assert status["phase"] == "Profiling" and "progress" in status["profile"]
    ((_, _, job_name), job), = [(k, o) for k, o in api.objects.items() if k[0] == "Job"]
    # All slots of one MPS GPU: the only kind this product has.
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4}

    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    status = reconcile(api, st, index, body)
    assert status["phase"] == "Failed" and conditions(status)["Profiled"] == ("False", "ProfilingFailed")
    # No stale "running" left in a Failed status (a null in the merge patch deletes it).
    assert api.patches[-1]["profile"] == {"progress": None}
    warnings = [e for e in api.events if e[0] == "Warning"]
    patches = len(api.patches)
    reconcile(api, st, index, body)  # the retry-profiling timer looks again: nothing new to say
    assert len(api.patches) == patches and [e for e in api.events if e[0] == "Warning"] == warnings

    api.delete(api_version="batch/v1", kind="Job", name=job_name, namespace="slm-system")
    with pytest.raises(ProfilePending):
        reconcile(api, st, index, body)
    assert api.objects[("SLMService", "ns", "opt")]["status"]["phase"] == "Profiling"
    assert ("Job", "slm-system", job_name) in api.objects


def shared_index(*, claims: list[dict[str, Any]] = (), pods: list[dict[str, Any]] = ()) -> GpuIndex:
    """One MPS node and one node of 2 consumable GPUs (120 shares each) of the same product."""
    shared = node("s", count=2, sharing="dra")
    slice_spec = {"driver": "gpu.nvidia.com", "nodeName": "s", "pool": {"name": "s"},
                  "devices": [{"name": f"gpu-{i}", "allowMultipleAllocations": True,
                               "capacity": {"memory": {"value": "81559Mi"}, "shares": {"value": "120"}}}
                              for i in range(2)]}
    nodes = [node_entry(name=n["metadata"]["name"], labels=n["metadata"]["labels"], spec={}, status=n["status"])
             for n in (node("m", count=2, sharing="mps", replicas=4), shared)]
    slices = kopf_index([slice_entry(name="s", spec=slice_spec)])
    return GpuIndex({"gpu_nodes": kopf_index(nodes), "gpu_slices": slices}, **own_watches(claims=claims, packed=pods))


def test_dra_shares_applies_a_claim_template_before_its_statefulset_and_switches_cleanly(api: FakeApi) -> None:
    st = state()
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "scale": {"gpus": 1},
                         "profiling": STATIC})
    status = reconcile(api, st, shared_index(), body)
    assert status["placement"]["mechanism"] == "dra-shares" and status["placement"]["totalReplicas"] == 2
    kinds = [kind for verb, kind, _ in api.writes if verb == "apply"]
    assert kinds.index("ResourceClaimTemplate") < kinds.index("StatefulSet")
    template = next(name for verb, kind, name in api.writes if kind == "ResourceClaimTemplate")

    # Asked for MPS now: a StatefulSet's podManagementPolicy cannot change, so a new group (its own
    # index) replaces the dra-shares one, which serves (with its template) until the new one is Ready.
    api.run_pods(node_name="s", ready=True)
    body["spec"]["gpu"]["sharing"] = "mps"
    body["metadata"]["generation"] = 2
    api.writes.clear()
    status = reconcile(api, st, shared_index(), body)
    assert status["placement"]["mechanism"] == "mps"
    assert [w for w in api.writes if w[0] == "delete"] == []
    assert api.objects[("StatefulSet", "ns", "opt-g1")]["spec"]["podManagementPolicy"] == "OrderedReady"
    api.run_pods(node_name="m", ready=True, only="opt-g1")
    reconcile(api, st, shared_index(), body)
    assert ("delete", "StatefulSet", "opt-g0") in api.writes
    assert ("delete", "ResourceClaimTemplate", template) in api.writes
    assert [n for (k, _, n) in api.objects if k in ("StatefulSet", "ResourceClaimTemplate")] == ["opt-g1"]


def test_start_permission_goes_to_one_waiting_pod_per_gpu(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    annotated: list[tuple[str, str, dict[str, str]]] = []

    def annotate(*, api_version: str, kind: str, name: str, namespace: str | None,
                 annotations: dict[str, str]) -> Any:
        annotated.append((namespace or "", name, annotations))
        return kube.Outcome.APPLIED
    monkeypatch.setattr(kube, "annotate", annotate)

    def pod(ns: str, name: str, created: str) -> dict[str, Any]:
        return {"metadata": {"uid": f"{ns}/{name}", "namespace": ns, "name": name, "creationTimestamp": created,
                             "labels": {"slm.pareto.dev/packed": "true"}},
                "status": {"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": f"{name}-c"}]}}

    def allocated(ns: str, name: str, device: str) -> dict[str, Any]:
        return resource_claim(namespace=ns, name=f"{name}-c",
                              results=[{"driver": "gpu.nvidia.com", "pool": "s", "device": device}])

    index = shared_index(claims=[allocated("a", "x-0", "gpu-0"), allocated("b", "y-0", "gpu-0"),
                                 allocated("b", "y-1", "gpu-1")],
                         pods=[pod("a", "x-0", "t2"), pod("b", "y-0", "t1"), pod("b", "y-1", "t3"),
                               pod("c", "z-0", "t0")])
    st = state()
    grant_starts(state=st, index=index, watched=lambda ns: ns != "unwatched")
    assert [(ns, name, a["slm.pareto.dev/start-device"]) for ns, name, a in annotated] == [
        ("b", "y-0", "gpu.nvidia.com/s/gpu-0"), ("b", "y-1", "gpu.nvidia.com/s/gpu-1")]
    # The watch has not shown the grants yet: the next event grants nobody else on those GPUs.
    grant_starts(state=st, index=index, watched=lambda ns: True)
    assert len(annotated) == 2


def test_a_service_waiting_for_gpus_is_registered_and_a_wake_up_places_it(api: FakeApi) -> None:
    st = state()
    spec = {"model": "facebook/opt-1.3b", "gpu": {"product": H100, "sharing": "exclusive"}, "scale": {"gpus": 1},
            "profiling": STATIC}
    full = gpu_index(node("m", count=1), pods=[gpu_pod("m")])
    body = service(api, spec, name="late")
    status = reconcile(api, st, full, body)
    assert status["phase"] == "Pending" and conditions(status)["Planned"] == ("False", "InsufficientSlots")
    assert "ns/late" in st.waiters and st.waiters.due() == []

    st.waiters.grew({H100})  # the waker saw a GPU freed
    assert st.waiters.due() == ["ns/late"]
    reconcile_woken(state=st, index=gpu_index(node("m", count=1)), key="ns/late")
    assert api.objects[("SLMService", "ns", "late")]["status"]["phase"] == "Deploying"
    assert "ns/late" not in st.waiters and ("apply", "StatefulSet", "late-g0") in api.writes

    # A service deleted while it waited leaves the queue on its next wake-up, with no write.
    gone = service(api, spec, name="gone")
    reconcile(api, st, full, gone)
    assert "ns/gone" in st.waiters
    del api.objects[("SLMService", "ns", "gone")]
    writes = len(api.writes)
    reconcile_woken(state=st, index=gpu_index(node("m", count=1)), key="ns/gone")
    assert "ns/gone" not in st.waiters and len(api.writes) == writes


def test_groups_planned_back_to_back_are_pinned_each_to_a_node_with_room_for_all_its_pods(api: FakeApi) -> None:
    # Two nodes of 3 MPS slots, groups of 2: the second service must not count the slot left beside
    # the first group as room for a group (the scheduler could put both first pods on one node).
    st = state()
    index = gpu_index(node("m", count=1, sharing="mps", replicas=3), node("n", count=1, sharing="mps", replicas=3))
    nodes = []
    for name in ("a", "b", "c"):
        status = reconcile(api, st, index, service(api, {"model": "facebook/opt-1.3b", "scale": {"gpus": 1},
                                                         "gpu": {"product": H100, "sharing": "mps"},
                                                         "profiling": STATIC}, name=name))
        sts = api.objects.get(("StatefulSet", "ns", f"{name}-g0"))
        nodes.append(sts["metadata"]["annotations"].get("slm.pareto.dev/node") if sts else status["phase"])
    assert sorted(nodes[:2]) == ["m", "n"] and nodes[2] == "Pending"


def test_a_service_scaled_out_before_its_first_group_starts_does_not_pin_two_groups_to_one_free_gpu(
        api: FakeApi) -> None:
    st = state()
    index = gpu_index(node("m", count=2), node("n", count=1))
    spec = {"model": "facebook/opt-1.3b", "gpu": {"product": H100, "sharing": "exclusive"}, "scale": {"gpus": 1},
            "profiling": STATIC}
    body = service(api, spec, name="grow")
    reconcile(api, st, index, body)
    pinned = api.objects[("StatefulSet", "ns", "grow-g0")]["metadata"]["annotations"]["slm.pareto.dev/node"]
    assert pinned == "n"  # best fit: the node with one free GPU
    body["spec"] = spec | {"scale": {"gpus": 2}}
    body["metadata"]["generation"] = 2
    reconcile(api, st, index, body)  # g0 has no pod bound yet: n's one GPU is owed to it
    assert api.objects[("StatefulSet", "ns", "grow-g1")]["metadata"]["annotations"]["slm.pareto.dev/node"] == "m"

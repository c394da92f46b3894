"""The handlers' work (reconcile, readiness) against an in-memory API: every outcome, every write.

The real API server is exercised by tests/integration; here ``slm_operator.kube`` is replaced by
:class:`FakeApi`, which keeps objects in a dict and records each write, so a test can say exactly
which objects, status patches and Events an outcome produces.
"""

from __future__ import annotations

from typing import Any

import pytest

from slm_operator import kube, reporter
from slm_operator.config import OperatorConfig
from slm_operator.errors import ApplyRejected
from slm_operator.gpu_index import GpuIndex, node_entry
from slm_operator.reconcile import OperatorState, fold_readiness, reconcile_service
from tests.unit.factories import H100, node
from tests.unit.test_gpu_index import kopf_index

STATIC = {"mode": "static", "static": {"batchSize": 64, "replicasPerGPU": 2, "memoryPerReplicaGiB": 10,
                                       "tokensPerSecondPerGPU": 20000}}


class FakeApi:
    """Objects by (kind, namespace, name); writes recorded in order."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.secrets: set[str] = set()
        self.reject: str | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("apply", "delete", "get", "list_objects", "patch_service_status", "secret_exists",
                     "get_service"):
            monkeypatch.setattr(kube, name, getattr(self, name))
        monkeypatch.setattr(reporter.kopf, "event", self.event)

    def event(self, _body: Any, *, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason))

    def apply(self, obj: dict[str, Any]) -> kube.Outcome:
        meta = obj["metadata"]
        if obj["kind"] == self.reject:
            raise ApplyRejected(f"{obj['kind']} {meta['namespace']}/{meta['name']} rejected (HTTP 422): invalid")
        self.writes.append(("apply", obj["kind"], meta["name"]))
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        # NB: like server-side apply, a write of the spec leaves the status the controllers set.
        self.objects[key] = obj | {k: v for k, v in self.objects.get(key, {}).items() if k == "status"}
        return kube.Outcome.APPLIED

    def delete(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> kube.Outcome:
        self.writes.append(("delete", kind, name))
        return kube.Outcome.DELETED if self.objects.pop((kind, namespace, name), None) else kube.Outcome.NOT_FOUND

    def get(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def list_objects(self, *, api_version: str, kind: str, namespace: str | None = None,
                     label_selector: str | None = None) -> list[dict[str, Any]]:
        wanted = dict(pair.split("=", 1) for pair in (label_selector or "").split(",") if pair)
        return [obj for (k, ns, _), obj in sorted(self.objects.items())
                if k == kind and ns == namespace
                and wanted.items() <= (obj["metadata"].get("labels") or {}).items()]

    def patch_service_status(self, *, name: str, namespace: str, status: dict[str, Any]) -> kube.Outcome:
        self.patches.append(dict(status))
        service = self.objects[("SLMService", namespace, name)]
        service["status"] = service.get("status", {}) | dict(status)
        return kube.Outcome.APPLIED

    def secret_exists(self, *, name: str, namespace: str) -> bool:
        return name in self.secrets

    def get_service(self, *, name: str, namespace: str) -> dict[str, Any] | None:
        return self.objects.get(("SLMService", namespace, name))

    # --- what the cluster does on its own ---------------------------------------------------------------

    def run_pods(self, *, node_name: str, ready: bool) -> None:
        """Every group's pods scheduled on ``node_name``; their StatefulSets report readiness."""
        for (kind, ns, name), sts in list(self.objects.items()):
            if kind != "StatefulSet":
                continue
            labels = sts["spec"]["template"]["metadata"]["labels"]
            for i in range(sts["spec"]["replicas"]):
                self.objects[("Pod", ns, f"{name}-{i}")] = {
                    "metadata": {"name": f"{name}-{i}", "namespace": ns, "labels": labels},
                    "spec": {"nodeName": node_name}}
            sts["status"] = {"readyReplicas": sts["spec"]["replicas"] if ready else 0}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    fake.install(monkeypatch)
    return fake


def gpu_index(*nodes: dict[str, Any]) -> GpuIndex:
    entries = [node_entry(name=n["metadata"]["name"], labels=n["metadata"]["labels"], spec={}, status=n["status"])
               for n in nodes]
    return GpuIndex({"gpu_nodes": kopf_index(entries), "gpu_pods": {}, "gpu_slices": {}, "gpu_claims": {},
                     "slm_groups": {}})


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

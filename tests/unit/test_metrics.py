"""The operator's metrics: their names and labels, and that the work records what it does.

Counters are process-wide (one registry), so each test reads a value before and after what it does.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

import kopf
import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from slm_operator import handlers, kube, metrics
from slm_operator.config import OperatorConfig
from slm_operator.constants import PROFILE_CONFIGMAP_PREFIX, PROFILE_KEY
from slm_operator.errors import ProfilePending
from slm_operator.gpu_index import Entries
from slm_operator.planning.inventory import build_inventory
from slm_operator.profile_source import obtain_profile
from slm_operator.reconcile import OperatorState
from tests.unit.factories import H100, H100_MIB, dra_slice, gpu_pod, node, profile, spec
from tests.unit.fakes import FakeApi, gpu_index
from tests.unit.test_reconcile import STATIC, reconcile, service

#: Labels that would grow with the cluster's pods or nodes: none of our metrics may have them.
UNBOUNDED = {"pod", "node", "uid", "container", "instance", "claim", "group"}
PER_SERVICE = {"slm_operator_service_phase", "slm_operator_service_planned_tokens_per_second",
               "slm_operator_service_batch_size"}


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def exposed_families() -> dict[str, Any]:
    """Family name (counters with ``_total``, as queries spell them) -> the family, as a scrape sees it."""
    families = text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode())
    return {f.name + ("_total" if f.type == "counter" else ""): f for f in families}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    fake.install(monkeypatch)
    return fake


READY = {"phase": "Ready",
         "profile": {"batchSize": 64, "gpuProduct": H100, "source": "static"},
         "placement": {"mechanism": "mps", "gpus": 2, "replicasPerGPU": 2, "plannedTokensPerSecond": 40000.0}}


# --- names and labels --------------------------------------------------------------------------------


def test_every_metric_is_listed_prefixed_and_documented() -> None:
    families = exposed_families()
    ours = {name for name in families if not name.startswith("slm_operator_process_")}
    assert ours == set(metrics.METRIC_NAMES)
    assert all(name.startswith("slm_operator_") for name in families)
    assert all(family.documentation for family in families.values())
    # The process collector is there too, under our prefix (memory of the operator pod).
    assert "slm_operator_process_resident_memory_bytes" in families


def test_labels_are_bounded(api: FakeApi) -> None:
    metrics.watch_services(metrics.service_entry(namespace="ns", name="labels", status=READY).items)
    metrics.watch_inventory(lambda: build_inventory(nodes=[node("n", sharing="mps", replicas=4)]))
    try:
        for name, family in exposed_families().items():
            labels = {label for sample in family.samples for label in sample.labels} - {"le"}
            assert not labels & UNBOUNDED, (name, labels)
            if name not in PER_SERVICE:
                assert not labels & {"namespace", "slm_service"}, (name, labels)
    finally:
        metrics.watch_services(None)
        metrics.watch_inventory(None)


# --- what the work records -----------------------------------------------------------------------


def test_a_reconcile_is_timed_by_its_outcome_and_counts_its_profile(api: FakeApi) -> None:
    index, st = gpu_index(node("m", count=2, sharing="mps", replicas=4)), OperatorState(
        config=OperatorConfig(profiler_runner="none"))
    before = (value("slm_operator_reconcile_duration_seconds_count", outcome="Deploying"),
              value("slm_operator_profile_runs_total", source="static", result="succeeded"))
    body = service(api, {"model": "facebook/opt-1.3b", "gpu": {"product": H100}, "scale": {"gpus": 2},
                         "profiling": STATIC}, name="timed")
    assert reconcile(api, st, index, body)["phase"] == "Deploying"
    after = (value("slm_operator_reconcile_duration_seconds_count", outcome="Deploying"),
             value("slm_operator_profile_runs_total", source="static", result="succeeded"))
    assert after == (before[0] + 1, before[1] + 1)


def test_a_failed_reconcile_is_counted_with_its_phase(api: FakeApi) -> None:
    st = OperatorState(config=OperatorConfig(profiler_runner="none"))
    before = value("slm_operator_reconcile_duration_seconds_count", outcome="Failed")
    failed_before = value("slm_operator_profile_runs_total", source="estimated", result="failed")
    body = service(api, {"model": "example-org/no-such-model", "gpu": {"product": H100},
                         "profiling": {"mode": "estimate"}}, name="bad")
    status = reconcile(api, st, gpu_index(node("m")), body)
    assert status["phase"] == "Failed" and "Profiled" in {c["type"] for c in status["conditions"]}
    assert value("slm_operator_reconcile_duration_seconds_count", outcome="Failed") == before + 1
    assert value("slm_operator_profile_runs_total", source="estimated", result="failed") == failed_before + 1


def test_an_estimate_is_counted_and_timed() -> None:
    before = (value("slm_operator_profile_runs_total", source="estimated", result="succeeded"),
              value("slm_operator_profile_duration_seconds_count", source="estimated"))
    obtain_profile(spec=spec(profiling={"mode": "estimate"}), gpu_product=H100, cfg=OperatorConfig())
    assert (value("slm_operator_profile_runs_total", source="estimated", result="succeeded"),
            value("slm_operator_profile_duration_seconds_count", source="estimated")) == (before[0] + 1, before[1] + 1)


def test_a_profiler_job_is_started_then_its_result_is_a_cache_hit_and_a_timed_measurement(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[dict[str, Any]] = []

    def create(obj: dict[str, Any]) -> kube.Outcome:
        created.append(obj)
        return kube.Outcome.APPLIED

    monkeypatch.setattr(kube, "create", create)
    cfg = OperatorConfig(profiler_runner="job")
    wanted = spec(profiling={"mode": "auto"}, model="facebook/opt-125m")
    names = ("slm_operator_profile_runs_total", "slm_operator_profile_cache_lookups_total",
             "slm_operator_profile_duration_seconds_count")

    def snapshot() -> tuple[float, ...]:
        return (value(names[0], source="measured", result="started"),
                value(names[0], source="measured", result="succeeded"),
                value(names[0], source="cache", result="succeeded"),
                value(names[1], result="miss"), value(names[1], result="hit"),
                value(names[2], source="measured"))

    start = snapshot()
    with pytest.raises(ProfilePending):
        obtain_profile(spec=wanted, gpu_product=H100, cfg=cfg)
    (job,) = created
    assert [b - a for a, b in zip(start, snapshot(), strict=True)] == [1, 0, 0, 1, 0, 0]

    # The Job writes its result ConfigMap; the next reconcile reads it from the cache.
    name = job["metadata"]["name"]
    assert name.startswith(PROFILE_CONFIGMAP_PREFIX)
    api.objects[("ConfigMap", cfg.profiler_namespace, name)] = {
        "metadata": {"name": name}, "data": {PROFILE_KEY: json.dumps(profile(source="measured").to_dict())}}
    assert obtain_profile(spec=wanted, gpu_product=H100, cfg=cfg).source == "measured"
    assert [b - a for a, b in zip(start, snapshot(), strict=True)] == [1, 1, 1, 1, 1, 1]
    # Later reads are cache hits only: the measurement was counted once.
    obtain_profile(spec=wanted, gpu_product=H100, cfg=cfg)
    assert [b - a for a, b in zip(start, snapshot(), strict=True)] == [1, 1, 2, 1, 2, 1]


def test_api_calls_count_requests_and_error_answers_by_verb_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    class Missing:
        def get(self, **_: Any) -> Any:
            raise ApiException(status=404, reason="Not Found")

        def create(self, **_: Any) -> Any:
            raise ApiException(status=409, reason="Conflict")

        def delete(self, **_: Any) -> Any:
            raise ConnectionRefusedError("no API server")

    monkeypatch.setattr(kube, "_resource", lambda api_version, kind: Missing())
    before = (value("slm_operator_api_requests_total", verb="get"),
              value("slm_operator_api_errors_total", verb="get", code="404"),
              value("slm_operator_api_errors_total", verb="create", code="409"),
              value("slm_operator_api_errors_total", verb="delete", code="none"))
    assert kube.get(api_version="v1", kind="ConfigMap", name="x", namespace="ns") is None
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ns"}}
    assert kube.create(obj) is kube.Outcome.CONFLICT
    with pytest.raises(ConnectionRefusedError):
        kube.delete(api_version="v1", kind="ConfigMap", name="x", namespace="ns")
    after = (value("slm_operator_api_requests_total", verb="get"),
             value("slm_operator_api_errors_total", verb="get", code="404"),
             value("slm_operator_api_errors_total", verb="create", code="409"),
             value("slm_operator_api_errors_total", verb="delete", code="none"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1]


# --- per-service gauges ----------------------------------------------------------------------------


# --- per-service gauges ----------------------------------------------------------------------------


def served(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"uid": f"{namespace}/{name}", "namespace": namespace, "name": name}, "status": status}


def test_service_gauges_are_read_from_the_watch_of_served_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the watch of SLMServices keeps is what a scrape shows; a deleted service's series go, an
    unwatched namespace's service has none."""
    monkeypatch.setattr(handlers, "_WATCHED", {"ns", "other"})
    services = Entries(handlers._service_entry)
    services.replace([served("ns", "opt", READY), served("ns", "new", {"phase": "Pending"}),
                      served("other", "old", READY | {"phase": "Degraded"}), served("unwatched", "x", READY)])
    metrics.watch_services(services.items)
    try:
        phases = {p: value("slm_operator_service_phase", namespace="ns", slm_service="opt", phase=p)
                  for p in metrics.PHASES}
        assert phases == {p: (1.0 if p == "Ready" else 0.0) for p in metrics.PHASES}
        assert value("slm_operator_service_phase", namespace="ns", slm_service="new", phase="Pending") == 1
        assert {p: value("slm_operator_services", phase=p) for p in ("Ready", "Pending", "Degraded", "Failed")} == {
            "Ready": 1, "Pending": 1, "Degraded": 1, "Failed": 0}
        assert value("slm_operator_service_planned_tokens_per_second", namespace="ns", slm_service="opt") == 40000
        assert value("slm_operator_service_batch_size", namespace="ns", slm_service="opt") == 64
        assert metrics.REGISTRY.get_sample_value("slm_operator_service_batch_size",
                                                 {"namespace": "ns", "slm_service": "new"}) is None
        # Two services of two GPUs each at k=2 (Ready and Degraded): four GPUs placed.
        assert value("slm_operator_placed_gpus", product=H100, mechanism="mps", replicas_per_gpu="2") == 4

        services.apply(event_type="DELETED", obj=served("other", "old", {}))
        gone = {"namespace": "other", "slm_service": "old", "phase": "Degraded"}
        assert metrics.REGISTRY.get_sample_value("slm_operator_service_phase", gone) is None
        assert value("slm_operator_placed_gpus", product=H100, mechanism="mps", replicas_per_gpu="2") == 2
    finally:
        metrics.watch_services(None)
    assert value("slm_operator_services", phase="Ready") == 0


# --- the GPU inventory -------------------------------------------------------------------------------


def test_inventory_totals_are_what_the_planner_can_still_take() -> None:
    from slm_operator.planning.inventory import Demand

    inventory = build_inventory(
        nodes=[node("mps", count=8, sharing="mps", replicas=4), node("dra", count=8, sharing="dra"),
               node("l4", product="NVIDIA-L4", memory=23034, count=4)],
        pods=[gpu_pod("mps", slots=3), gpu_pod("l4", slots=1), gpu_pod("l4", slots=1, phase="Succeeded")],
        resource_slices=[dra_slice("dra")],
        demand=Demand(anywhere={(H100, "mps"): 5}),
    )
    totals = metrics.inventory_totals(inventory)
    assert set(totals) == {(H100, "mps"), (H100, "dra"), ("NVIDIA-L4", "none")}
    mps = totals[(H100, "mps")]
    assert (mps.gpus, mps.slots, mps.free_slots, mps.reserved_slots) == (8, 32, 32 - 3 - 5, 5)
    assert mps.free_memory_bytes == pytest.approx(24 * H100_MIB / 4 * 1024**2)
    l4 = totals[("NVIDIA-L4", "none")]
    assert (l4.gpus, l4.slots, l4.free_slots, l4.free_memory_bytes) == (4, 4, 3, 3 * 23034 * 1024**2)
    assert totals[(H100, "dra")].free_slots == 8


def test_inventory_gauges_are_built_at_scrape_time_and_retry_a_racing_read() -> None:
    reads: list[int] = []

    def source() -> Any:
        reads.append(1)
        if len(reads) == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return build_inventory(nodes=[node("l4", product="NVIDIA-L4", memory=23034, count=4)])

    metrics.watch_inventory(source)
    try:
        assert value("slm_operator_inventory_free_slots", product="NVIDIA-L4", sharing="none") == 4
        assert value("slm_operator_inventory_gpus", product="NVIDIA-L4", sharing="none") == 4
        assert len(reads) == 3  # the racing read taken again, then one read per scrape
    finally:
        metrics.watch_inventory(None)
    assert "slm_operator_inventory_gpus" in exposed_families()  # declared even with no source
    assert value("slm_operator_inventory_gpus", product="NVIDIA-L4", sharing="none") == 0


# --- the endpoint and the start-up settings ------------------------------------------------------------


def test_serve_answers_on_its_port() -> None:
    from hack.localcluster.processes import pick_free_ports

    (port,) = pick_free_ports(count=1)
    stop = metrics.serve(port=port, addr="127.0.0.1")
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        stop()
    assert 'slm_operator_build_info{version="' in text


def test_startup_settings_post_no_event_per_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's own log lines ("failed temporarily" at every poll) are not Events; ours still are."""
    from kopf._core.engines.posting import K8sPoster

    monkeypatch.setattr(handlers, "STATE", OperatorState(config=OperatorConfig(metrics_port=0)))
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings, **{name: {} for name in handlers.GpuIndex.NAMES})
    try:
        assert settings.posting.enabled and settings.posting.loggers is False
        # every watch and every request of kopf's own has a timeout
        assert settings.watching.server_timeout and settings.watching.client_timeout > settings.watching.server_timeout
        assert settings.watching.connect_timeout and settings.networking.request_timeout
        record = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1,
                                   "Handler 'reconcile' failed temporarily: profiling", None, None)
        record.settings = settings
        record.k8s_ref = {"kind": "SLMService", "name": "opt", "namespace": "ns"}
        assert not K8sPoster().filter(record)
        assert handlers._serving == []  # metrics_port 0: no endpoint
        assert value("slm_operator_inventory_gpus", product=H100, sharing="mps") == 0  # empty indexes
    finally:
        metrics.watch_inventory(None)
        metrics.watch_services(None)

"""The chart's metrics endpoint, monitors and dashboards, rendered by `helm template`, and the dashboards' JSON.

Rendering needs the helm binary (hack/build-binaries.sh): without it these tests skip, or fail where
SLM_REQUIRE_CLUSTER=1 (`make test`) says the binaries must be there. The dashboard checks need no helm.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from slm_operator import metrics
from slm_operator.builders.children import build_group_statefulset, build_service, owner_reference
from slm_operator.config import OperatorConfig
from slm_operator.constants import LABEL_GROUP, LABEL_SERVICE
from slm_operator.gpu_index import PlacementLedger
from slm_operator.planning.plan import make_plan
from slm_operator.planning.profiles import static_profile
from slm_operator.profiling.metrics import METRIC_NAMES as VLLM_METRIC_NAMES
from tests.unit.factories import H100, node, spec
from tests.unit.fakes import gpu_index
from tests.unit.test_chart_drift import CHART, HELM, helm_template, objects, one

#: NVIDIA dcgm-exporter's names the packing board may draw (with profiling metrics on); nothing else of DCGM.
DCGM_NAMES = {"DCGM_FI_PROF_DRAM_ACTIVE"}
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
ALL_ON = ("--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true",
          "--set", "monitoring.dashboards.enabled=true")


def requires_helm() -> None:
    if HELM is None:
        reason = "helm not built: run `bash hack/build-binaries.sh`"
        if os.environ.get("SLM_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"SLM_REQUIRE_CLUSTER=1 but {reason}", pytrace=False)
        pytest.skip(reason)


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def engine_pod_template() -> dict[str, Any]:
    """A vLLM pod as the operator builds it (builders.children), from a static plan."""
    wanted = spec(profiling={"mode": "static", "static": {"batchSize": 32, "replicasPerGPU": 2,
                                                           "memoryPerReplicaGiB": 6, "tokensPerSecondPerGPU": 9000}})
    inventory = gpu_index(node("n", sharing="mps", replicas=4)).inventory(ledger=PlacementLedger())
    plan = make_plan(spec=wanted, profile=static_profile(spec=wanted, gpu_product=H100), inventory=inventory)
    sts = build_group_statefulset(name="opt", namespace="ns", index=0, spec=wanted, plan=plan,
                                  image="vllm/vllm-openai:v0.11.0", owner=owner_reference(name="opt", uid="u"),
                                  engine_defaults=OperatorConfig().engine_defaults())
    template: dict[str, Any] = sts["spec"]["template"]
    return template


def prometheus_label(label: str) -> str:
    """How Prometheus's Kubernetes discovery names a pod label: __meta_kubernetes_pod_label_<sanitised>."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)


# --- defaults ------------------------------------------------------------------------------------


def test_metrics_are_on_and_monitors_and_dashboards_off_by_default() -> None:
    requires_helm()
    docs = objects()
    assert not kinds(docs) & {"PodMonitor", "ServiceMonitor"}
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["metrics"] == 8081 == OperatorConfig.from_env(env).metrics_port


def test_metrics_can_be_turned_off_or_moved() -> None:
    requires_helm()
    (container,) = one(objects("--set", "metrics.enabled=false"), "Deployment")["spec"]["template"]["spec"][
        "containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert OperatorConfig.from_env(env).metrics_port == 0
    assert "metrics" not in {p["name"] for p in container["ports"]}
    (container,) = one(objects("--set", "metrics.port=9102"), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == 9102
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert OperatorConfig.from_env(env).metrics_port == 9102


@pytest.mark.parametrize(("flags", "complaint"), [
    (["--set", "metrics.port=8080"], "healthPort"),
    (["--set", "metrics.port=80"], "port"),
    (["--set", "monitoring.podMonitor.interval=fast"], "interval"),
    (["--set", "monitoring.serviceMonitor.enabled=true", "--set", "metrics.enabled=false"], "metrics.enabled"),
    (["--set", "monitoring.dashboards.namespace=Grafana"], "namespace"),
])
def test_bad_monitoring_values_are_refused_by_name(flags: list[str], complaint: str) -> None:
    requires_helm()
    result = helm_template(*flags, check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


# --- the monitors select what the operator builds ------------------------------------------------------


def test_pod_monitor_selects_the_vllm_pods_the_builders_make_on_their_http_port() -> None:
    requires_helm()
    monitor = one(objects(*ALL_ON), "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    pod = engine_pod_template()
    assert selector.items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = pod["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]} and endpoint["path"] == "/metrics"
    # The relabelled series carry the labels the packing board filters by.
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel == {"slm_service": [prometheus_label(LABEL_SERVICE)], "slm_group": [prometheus_label(LABEL_GROUP)],
                       "node": ["__meta_kubernetes_pod_node_name"]}
    # Nothing else the operator makes matches (its Service is not a pod, but its labels say what a pod would).
    service = build_service(name="opt", namespace="ns", owner=owner_reference(name="opt", uid="u"))
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_pod_monitor_looks_in_the_watched_namespaces_only() -> None:
    requires_helm()
    monitor = one(objects(*ALL_ON, "--set", "operator.watchNamespaces={team-a,team-b}"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    monitor = one(objects(*ALL_ON, "--set", "monitoring.podMonitor.namespaces={llm}",
                          "--set", "monitoring.podMonitor.labels.release=kps"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm"]}
    assert monitor["metadata"]["labels"]["release"] == "kps"


def test_service_monitor_reaches_the_operator_metrics_port() -> None:
    requires_helm()
    docs = objects(*ALL_ON, "--set", "metrics.port=9102")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "slm-operator-metrics")
    deployment = one(docs, "Deployment")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["slm-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == "metrics" and endpoint["honorLabels"] is True
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == 9102


def test_network_policy_admits_scrapes_of_the_metrics_port() -> None:
    requires_helm()
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    policy = one(objects("--set", "networkPolicy.enabled=true",
                         "--set-json", f"networkPolicy.metricsFrom=[{json.dumps(peer)}]"), "NetworkPolicy")["spec"]
    health, scrape = policy["ingress"]
    assert scrape == {"ports": [{"port": 8081, "protocol": "TCP"}], "from": [peer]}
    policy = one(objects("--set", "networkPolicy.enabled=true", "--set", "metrics.enabled=false"),
                 "NetworkPolicy")["spec"]
    assert policy["ingress"] == [health]


def test_dashboards_render_as_configmaps_for_grafanas_sidecar() -> None:
    requires_helm()
    docs = objects(*ALL_ON, "--set", "monitoring.dashboards.namespace=grafana",
                   "--set", "monitoring.dashboards.annotations.grafana_folder=SLM")
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert set(maps) == {f"slm-operator-dashboard-{path.stem}" for path in DASHBOARDS}
    for path in DASHBOARDS:
        cm = maps[f"slm-operator-dashboard-{path.stem}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "grafana"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "SLM"}
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())


# --- the dashboards' JSON and the metrics they query ------------------------------------------------------


def dashboard(path: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: its panels' targets and its variables' queries."""
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", ())]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            found.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return found


_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values() query) reads."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges
    text = re.sub(r"label_values\(([^,()]*),\s*\w+\)", r"(\1)", text)  # label_values(metric, label)
    # An identifier that is not a function (no "(" after it) is a metric name.
    found = re.findall(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(?!\s*\()", text)
    return set(found) - _KEYWORDS


def known(name: str) -> bool:
    vllm = {n for names in VLLM_METRIC_NAMES.values() for n in names}
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    operator_samples = {s.name for family in metrics.REGISTRY.collect() for s in family.samples}
    return (name in vllm or f"{base}_sum" in vllm  # a histogram the parser reads by its _sum
            or name in metrics.METRIC_NAMES or name in operator_samples
            or (base != name and base in metrics.METRIC_NAMES)  # an operator histogram's series
            or name in DCGM_NAMES)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_is_valid_grafana_json(path: Any) -> None:
    board = dashboard(path)
    assert board["uid"].startswith("slm-") and board["title"].startswith("SLM / ")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert all(p.get("description") for p in board["panels"]), "every panel says how to read it"
    assert any(v["type"] == "datasource" for v in board["templating"]["list"])
    for p in board["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_queries_only_metrics_that_exist(path: Any) -> None:
    """Each name is exported by the operator (slm_operator.metrics), by vLLM (the names the project's
    parser knows, profiling/metrics.py), or is one of the DCGM names listed here."""
    names = set()
    for expr in queries(dashboard(path)):
        found = metric_names(expr)
        assert found, f"no metric found in {expr!r}"
        names |= found
    unknown = sorted(n for n in names if not known(n))
    assert not unknown, unknown


def test_the_packing_board_draws_the_issues_panels() -> None:
    exprs = " ".join(queries(dashboard(CHART / "dashboards" / "packing.json")))
    for name in ("vllm:num_requests_running", "slm_operator_service_batch_size", "vllm:kv_cache_usage_perc",
                 "vllm:num_preemptions_total", "vllm:inter_token_latency_seconds_bucket",
                 "slm_operator_service_planned_tokens_per_second", "vllm:generation_tokens_total",
                 "DCGM_FI_PROF_DRAM_ACTIVE"):
        assert name in exprs, name
    # Filtered by the labels the PodMonitor adds, per service and per GPU group.
    assert 'slm_service="$service"' in exprs and 'slm_group=~"$group"' in exprs


def test_the_name_checker_catches_a_misspelt_metric() -> None:
    assert metric_names('sum(rate(vllm:num_preemption_total{namespace="x"}[5m]))') == {"vllm:num_preemption_total"}
    assert not known("vllm:num_preemption_total") and not known("slm_operator_service_phases")
    assert known("vllm:inter_token_latency_seconds_bucket") and known("slm_operator_reconcile_duration_seconds_bucket")

"""The running operator's /metrics and Events, read from outside as Prometheus and `kubectl describe` would.

The operator is the harness's local process (its metrics port is a free one, SLM_METRICS_PORT); the
GPU inventory it reports is checked against the simulated nodes of hack/gpu-nodes.yaml and the GPU
pods the API server has on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.operator_harness import ROOT, apply_yaml, get_json, wait_phase
from tests.integration.test_operator_lifecycle import H100, static_service
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration
L4 = "NVIDIA-L4"
MIB = 1024**2


def scrape(operator) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from one scrape of the operator's /metrics."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(operator.scrape()) for s in family.samples}


def sample(values: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return values.get((name, frozenset(labels.items())))


def simulated_gpus() -> dict[tuple[str, str], tuple[int, int, str, int]]:
    """(product, sharing) -> (GPUs, slots, node, MiB per GPU), as hack/gpu-nodes.yaml declares them."""
    nodes = yaml.safe_load((ROOT / "hack" / "gpu-nodes.yaml").read_text())["nodes"]
    found = {}
    for spec in nodes:
        gpu = spec.get("gpu")
        if gpu:
            sharing = gpu.get("sharing", "none")
            slots = gpu["count"] * (gpu.get("replicas", 1) if sharing in ("mps", "time-slicing") else 1)
            found[(gpu["product"], sharing)] = (gpu["count"], slots, spec["name"], gpu["memoryMiB"])
    return found


def gpu_slots_used(cluster, node: str) -> int:
    """nvidia.com/gpu slots the pods bound to ``node`` ask for (finished pods hold none)."""
    pods = get_json(cluster, "pods", "-A", "--field-selector", f"spec.nodeName={node}")["items"]
    return sum(int((c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
               for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
               for c in p["spec"]["containers"])


def test_metrics_show_the_service_its_plan_and_the_gpu_inventory(cluster, operator, namespace):
    svc = static_service("watched", sharing="exclusive")
    svc["spec"]["gpu"]["product"] = L4
    svc["spec"]["profiling"]["static"] |= {"replicasPerGPU": 1, "memoryPerReplicaGiB": 4, "batchSize": 48}
    apply_yaml(cluster, namespace, svc)
    status = wait_phase(cluster, namespace, "watched", ("Ready",), operator=operator)["status"]

    def ready_in_metrics() -> dict | None:
        now = scrape(operator)
        ready = sample(now, "slm_operator_service_phase", namespace=namespace, slm_service="watched", phase="Ready")
        return now if ready == 1 else None
    values = wait_for(ready_in_metrics, timeout=30, message="the Ready phase in /metrics")
    assert sample(values, "slm_operator_service_phase", namespace=namespace, slm_service="watched",
                  phase="Deploying") == 0
    assert sample(values, "slm_operator_service_planned_tokens_per_second", namespace=namespace,
                  slm_service="watched") == status["placement"]["plannedTokensPerSecond"] > 0
    assert sample(values, "slm_operator_service_batch_size", namespace=namespace, slm_service="watched") == 48
    assert (sample(values, "slm_operator_placed_gpus", product=L4, mechanism="exclusive", replicas_per_gpu="1")
            or 0) >= 1
    assert (sample(values, "slm_operator_services", phase="Ready") or 0) >= 1
    # NB: the reconcile that applied the group ends Deploying, or Ready when the simulated pod was
    # Ready before it read the groups back; starting services are no longer polled, so no later
    # reconcile need end Deploying.
    assert sum(sample(values, "slm_operator_reconcile_duration_seconds_count", outcome=phase) or 0
               for phase in ("Deploying", "Ready")) >= 1
    assert (sample(values, "slm_operator_profile_runs_total", source="static", result="succeeded") or 0) >= 1
    assert (sample(values, "slm_operator_api_requests_total", verb="apply") or 0) >= 2  # Service, StatefulSet
    assert (sample(values, "slm_operator_api_requests_total", verb="patch") or 0) >= 1  # the status

    # The inventory: every simulated (product, sharing) pool, with the GPUs and slots its node declares.
    declared = simulated_gpus()
    for (product, sharing), (gpus, slots, _, _) in declared.items():
        assert sample(values, "slm_operator_inventory_gpus", product=product, sharing=sharing) == gpus, (product,
                                                                                                       sharing)
        assert sample(values, "slm_operator_inventory_slots", product=product, sharing=sharing) == slots
    # Free L4 slots: what the node has, less what the API server's pods there ask for (ours included).
    _, l4_slots, l4_node, l4_mib = declared[(L4, "none")]

    def inventory_caught_up() -> tuple[float, float] | None:
        now = scrape(operator)
        free = sample(now, "slm_operator_inventory_free_slots", product=L4, sharing="none")
        memory = sample(now, "slm_operator_inventory_free_memory_bytes", product=L4, sharing="none")
        used = gpu_slots_used(cluster, l4_node)
        return (free, memory) if used >= 1 and free == l4_slots - used and memory is not None else None
    free, memory = wait_for(inventory_caught_up, timeout=30, message="free L4 slots in /metrics = the node's")
    assert memory == free * l4_mib * MIB

    # Deleted: its series go.
    cluster.kubectl("delete", "slmservice", "watched", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: sample(scrape(operator), "slm_operator_service_phase", namespace=namespace,
                            slm_service="watched", phase="Ready") is None,
             timeout=30, message="the deleted service's series to go")


def service_events(cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return get_json(cluster, "events", "-n", namespace, "--field-selector",
                    f"involvedObject.kind=SLMService,involvedObject.name={name}")["items"]


def test_a_measured_service_posts_an_event_per_phase_not_per_profile_poll(cluster, operator, namespace):
    logged_before = len(operator.log_tail(lines=10**6).splitlines())
    # NB: a workload of its own, so no earlier test's cached profile is reused: this one is measured.
    apply_yaml(cluster, namespace, {
        "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": "polled"},
        "spec": {"model": "facebook/opt-125m", "gpu": {"product": H100, "sharing": "mps"},
                 "workload": {"inputTokens": 96, "outputTokens": 24},
                 "profiling": {"mode": "auto", "batchSizes": [1, 4, 16]}, "scale": {"gpus": 1}}})
    obj = wait_phase(cluster, namespace, "polled", ("Ready",), timeout=240, operator=operator)
    assert obj["status"]["profile"]["source"] == "measured"
    # The profile was polled (kopf logs each poll as "failed temporarily", at ERROR) ...
    polls = [line for line in operator.log_tail(lines=10**6).splitlines()[logged_before:]
             if "Handler 'reconcile' failed temporarily: profiling" in line]
    assert len(polls) >= 2, polls
    # ... and yet the Events are our phase changes, once each: none of kopf's log lines.
    events = service_events(cluster, namespace, "polled")
    reasons = [e["reason"] for e in events]
    assert "Logging" not in reasons and all(e["type"] == "Normal" for e in events), reasons
    assert {"Profiling", "Ready"} <= set(reasons) and len(reasons) == len(set(reasons)), reasons
    assert all(e.get("count", 1) == 1 for e in events), [(e["reason"], e.get("count")) for e in events]
    described = cluster.kubectl("describe", "slms", "polled", "-n", namespace).stdout
    for text in ("Replicas To Saturate:", "Profile Ref:", "Replicas Per GPU:", "Planned Tokens Per Second:",
                 "Groups:", "Endpoint:", "AllReplicasReady"):
        assert text in described, (text, described)

    values = scrape(operator)
    for result in ("started", "succeeded"):
        assert (sample(values, "slm_operator_profile_runs_total", source="measured", result=result) or 0) >= 1
    assert (sample(values, "slm_operator_profile_duration_seconds_count", source="measured") or 0) >= 1
    assert (sample(values, "slm_operator_profile_cache_lookups_total", result="miss") or 0) >= 1
    assert (sample(values, "slm_operator_reconcile_duration_seconds_count", outcome="Profiling") or 0) >= 2


def test_describe_and_metrics_say_why_a_service_is_pending(cluster, operator, namespace):
    svc = static_service("nowhere")
    svc["spec"]["gpu"]["product"] = "NVIDIA-B200"  # no such node in hack/gpu-nodes.yaml
    apply_yaml(cluster, namespace, svc)
    status = wait_phase(cluster, namespace, "nowhere", ("Pending",), operator=operator)["status"]
    planned = {c["type"]: c for c in status["conditions"]}["Planned"]
    assert planned["status"] == "False" and planned["reason"] == "NoMatchingGPUs"
    described = cluster.kubectl("describe", "slms", "nowhere", "-n", namespace).stdout
    # The story in one place: why it waits, the profile it would be planned from, the Event.
    for text in ("Pending", "NoMatchingGPUs", status["message"].split(";")[0], "Batch Size:", "Explanation:",
                 "Replicas To Saturate:"):
        assert text in described, (text, described)
    assert "Events:" in described and described.count("Logging") == 0
    wait_for(lambda: sample(scrape(operator), "slm_operator_service_phase", namespace=namespace,
                            slm_service="nowhere", phase="Pending") == 1,
             timeout=30, message="the Pending phase in /metrics")

"""Placement per sharing mechanism, checked from what the real scheduler did (node slots, DRA allocations)."""

from __future__ import annotations

import pytest

from tests.integration.operator_harness import apply_yaml, get_json, slms, wait_phase
from tests.integration.test_operator_lifecycle import H100, children, ready_pods, static_service

pytestmark = pytest.mark.integration


def _args(pod: dict) -> list[str]:
    return pod["spec"]["containers"][0]["args"]


def test_time_slicing_replicas_share_slots_on_one_node(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("ts", gpus=2, sharing="time-slicing"))
    obj = wait_phase(cluster, namespace, "ts", ("Ready",), operator=operator)
    pods = ready_pods(cluster, namespace, "ts", 4)
    assert {p["spec"]["nodeName"] for p in pods} == {"gpu-h100-1"}
    for pod in pods:
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    by_group: dict[str, set[str]] = {}
    for pod in pods:
        by_group.setdefault(pod["metadata"]["labels"]["slm.pareto.dev/group"], set()).add(pod["spec"]["nodeName"])
    assert len(by_group) == 2 and all(len(nodes) == 1 for nodes in by_group.values())
    # Without memory isolation the k budgets of a GPU must sum below what it has.
    budget = int(next(a for a in _args(pods[0]) if a.startswith("--kv-cache-memory-bytes=")).split("=")[1])
    assert budget * obj["status"]["placement"]["replicasPerGPU"] < 81559 * 1024**2
    # The status promises one node's slot pool, not one GPU: the device plugin picks the GPU behind
    # each slot, by its allocation policy (the operator's default: the plugin's, distributed).
    placement = obj["status"]["placement"]
    assert (placement["packingGuarantee"], placement["allocationPolicy"], placement["slotsPerGPU"]) == (
        "node-slot-pool", "distributed", 4)
    assert "may run on different GPUs" in obj["status"]["message"] and "Only DRA" in obj["status"]["message"]
    wide = cluster.kubectl("get", "slms", "ts", "-n", namespace, "-o", "wide").stdout
    assert "PACKING" in wide and "node-slot-pool" in wide


def test_dra_group_pods_share_one_allocated_device(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("dra", gpus=2, sharing="dra"))
    obj = wait_phase(cluster, namespace, "dra", ("Ready",), operator=operator)
    assert obj["status"]["placement"]["mechanism"] == "dra"
    assert obj["status"]["placement"]["packingGuarantee"] == "one-gpu"
    assert "allocationPolicy" not in obj["status"]["placement"]
    pods = ready_pods(cluster, namespace, "dra", 4)
    claims = {c["metadata"]["name"]: c for c in children(cluster, namespace, "resourceclaims", "dra")}
    assert sorted(c.rsplit("-", 1)[0] for c in claims) == ["dra-g0-gpu", "dra-g1-gpu"]
    devices = set()
    for claim in claims.values():
        results = claim["status"]["allocation"]["devices"]["results"]
        assert len(results) == 1 and results[0]["driver"] == "gpu.nvidia.com"
        devices.add((results[0]["pool"], results[0]["device"]))
        reserved = {r["name"] for r in claim["status"].get("reservedFor", [])}
        group = claim["metadata"]["labels"]["slm.pareto.dev/group"]
        assert reserved == {p["metadata"]["name"] for p in pods
                            if p["metadata"]["labels"]["slm.pareto.dev/group"] == group}
    assert len(devices) == 2, "each GPU group got its own physical GPU"
    assert {p["spec"]["nodeName"] for p in pods} == {"gpu-h100-dra-0"}
    params = claims[min(claims)]["spec"]["devices"]["config"][0]["opaque"]["parameters"]
    assert params["sharing"]["mpsConfig"]["defaultActiveThreadPercentage"] == 50


def test_exclusive_on_another_product_and_not_enough_gpus_is_degraded(cluster, operator, namespace):
    svc = static_service("l4", gpus=6, sharing="exclusive")
    svc["spec"]["gpu"]["product"] = "NVIDIA-L4"
    svc["spec"]["profiling"]["static"] |= {"replicasPerGPU": 1, "memoryPerReplicaGiB": 4}
    apply_yaml(cluster, namespace, svc)
    obj = wait_phase(cluster, namespace, "l4", ("Degraded",), timeout=120, operator=operator)
    placement = obj["status"]["placement"]
    assert (placement["gpus"], placement["requestedGPUs"], placement["replicasPerGPU"]) == (4, 6, 1)
    planned = {c["type"]: c for c in obj["status"]["conditions"]}["Planned"]
    assert planned["reason"] == "PartialPlacement" and "4 of 6" in planned["message"]
    pods = ready_pods(cluster, namespace, "l4", 4)
    assert {p["spec"]["nodeName"] for p in pods} == {"gpu-l4-0"}
    warnings = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "type=Warning").stdout
    assert "Degraded" in warnings


def test_auto_profiles_once_with_the_simulated_engine_and_reuses_the_cache(cluster, operator, namespace):
    def auto(name):
        return {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": name},
                "spec": {"model": "facebook/opt-125m", "gpu": {"product": H100, "sharing": "mps"},
                         "workload": {"inputTokens": 128, "outputTokens": 64},
                         "profiling": {"mode": "auto"}, "scale": {"gpus": 1}}}
    apply_yaml(cluster, namespace, auto("first"))
    first = wait_phase(cluster, namespace, "first", ("Ready",), timeout=240, operator=operator)
    profile = first["status"]["profile"]
    assert profile["source"] == "measured" and profile["engine"] == "simulated"
    assert profile["batchSize"] >= 1 and profile["profileRef"].startswith("configmap/")
    cached = get_json(cluster, "configmap", "-n", "slm-system", profile["profileRef"].split("/")[-1])
    assert "profile.json" in cached["data"]

    apply_yaml(cluster, namespace, auto("second"))
    second = wait_phase(cluster, namespace, "second", ("Ready",), timeout=60, operator=operator)
    assert second["status"]["profile"]["profileRef"] == profile["profileRef"]
    assert second["status"]["profile"]["batchSize"] == profile["batchSize"]


def test_estimate_mode_plans_from_the_roofline_model(cluster, operator, namespace):
    apply_yaml(cluster, namespace, {
        "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": "est"},
        "spec": {"model": "facebook/opt-1.3b", "gpu": {"product": H100, "sharing": "dra"},
                 "profiling": {"mode": "estimate"}, "scale": {"targetTokensPerSecond": 20000, "maxGPUs": 2}}})
    obj = wait_phase(cluster, namespace, "est", ("Ready", "Degraded"), timeout=90, operator=operator)
    assert obj["status"]["profile"]["source"] == "estimated"
    assert 1 <= obj["status"]["placement"]["gpus"] <= 2
    assert slms(cluster, namespace, "est")["status"]["placement"]["plannedTokensPerSecond"] > 0

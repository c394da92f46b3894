"""The fleet benchmark's pure parts: the workload it generates and how it counts GPUs and targets."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fleet_measure import fleet_packing, quantity
from bench.fleet_workload import ANNOTATION_TARGET_GPU, node_config, service_manifests
from bench.scale_workload import H100, MEMORY_MIB
from hack.localcluster import config as nodeconfig
from slm_operator.constants import LABEL_SERVICE, USABLE_MEMORY_FRACTION


def test_the_workload_is_a_fleet_of_mostly_small_targets_over_five_classes() -> None:
    manifests = service_manifests(services=300, namespaces=10, seed=7)
    fractions = [float(m["metadata"]["annotations"][ANNOTATION_TARGET_GPU]) for m in manifests]
    assert len(manifests) == 300
    assert sum(f < 0.5 for f in fractions) / len(fractions) > 0.75, "most services need less than half a GPU"
    assert max(fractions) > 1.0, "a heavy tail: some need more than one GPU"
    assert len({m["spec"]["model"] for m in manifests}) >= 5
    for m in manifests:
        per_gpu = m["spec"]["profiling"]["static"]["tokensPerSecondPerGPU"]
        fraction = float(m["metadata"]["annotations"][ANNOTATION_TARGET_GPU])
        assert m["spec"]["scale"]["targetTokensPerSecond"] == pytest.approx(fraction * per_gpu, abs=per_gpu * 1e-4)
    assert manifests == service_manifests(services=300, namespaces=10, seed=7), "deterministic"


def test_the_node_config_is_valid_and_every_gpu_is_consumable() -> None:
    doc = node_config(nodes=40, gpus_per_node=8)
    nodeconfig.parse_config(data=doc, source="test")
    assert len(doc["nodes"]) == 40
    assert {n["gpu"]["sharing"] for n in doc["nodes"]} == {"dra-shares"}


def test_quantities() -> None:
    assert quantity("12Gi") == 12 * 2**30
    assert quantity("250m") == pytest.approx(0.25)
    assert quantity(3) == 3
    with pytest.raises(ValueError, match="not a quantity"):
        quantity("lots")


def _service(name: str, *, target: float, replicas: int, share: float, memory: float, planned: float) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"model": "facebook/opt-125m", "gpu": {"product": H100, "sharing": "auto"},
                 "profiling": {"mode": "static", "static": {"batchSize": 256, "replicasPerGPU": 4,
                                                            "memoryPerReplicaGiB": memory,
                                                            "tokensPerSecondPerGPU": 40000.0}},
                 "scale": {"targetTokensPerSecond": target}},
        "status": {"phase": "Ready", "placement": {"mechanism": "dra-shares", "totalReplicas": replicas,
                                                   "sharePerReplica": share, "memoryPerReplicaGiB": memory,
                                                   "plannedTokensPerSecond": planned}},
    }


def _pod(service: str, index: int, node: str | None) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": f"{service}-{index}", "labels": {LABEL_SERVICE: service}},
            "spec": {"nodeName": node} if node else {}}


def _claim(node: str, device: str, **consumed: str) -> dict[str, Any]:
    return {"status": {"allocation": {"devices": {"results": [
        {"driver": "gpu.nvidia.com", "pool": node, "device": device, "consumedCapacity": consumed}]}}}}


def _slice(node: str, devices: int) -> dict[str, Any]:
    return {"spec": {"driver": "gpu.nvidia.com", "pool": {"name": node}, "devices": [
        {"name": f"gpu-{i}", "capacity": {"memory": {"value": "81559Mi"}, "shares": {"value": "100"}}}
        for i in range(devices)]}}


def test_packing_counts_devices_the_lower_bound_and_the_baselines() -> None:
    # a: 3 replicas x 0.25 on gpu-0; b: 1 replica x 0.25 on gpu-0 and one on gpu-1 (5 x 0.25 = 1.25 GPUs of shares)
    services = [_service("a", target=25000, replicas=3, share=0.25, memory=6, planned=30000),
                _service("b", target=15000, replicas=2, share=0.25, memory=6, planned=20000)]
    pods = [_pod("a", i, "n0") for i in range(3)] + [_pod("b", 0, "n0"), _pod("b", 1, "n0")]
    claims = [_claim("n0", "gpu-0", shares="25", memory="6Gi") for _ in range(4)] + [
        _claim("n0", "gpu-1", shares="25", memory="6Gi")]
    nodes = {"n0": {"name": "n0", "gpu": {"product": H100, "memoryMiB": MEMORY_MIB[H100], "count": 8}}}
    out = fleet_packing(services=services, pods=pods, claims=claims, slices=[_slice("n0", 8)], nodes=nodes)
    assert out["gpusOccupied"] == 2
    assert out["lowerBoundGpus"] == 2  # ceil(max(1.25 shares, 30 GiB / 73.3 GiB))
    assert out["packingRatio"] == 1.0
    assert out["groupModeGpus"] == 2  # each service alone: one whole-GPU group
    assert out["gpuPerServiceGpus"] == 5  # one replica per GPU at 10,000 tok/s: 3 + 2
    assert out["servicesTargetMet"] == 2
    assert out["overcommittedDevices"] == 0


def test_memory_can_set_the_lower_bound_and_overcommit_is_reported() -> None:
    usable = MEMORY_MIB[H100] / 1024 * USABLE_MEMORY_FRACTION
    services = [_service("m", target=10000, replicas=3, share=0.25, memory=usable / 2, planned=30000)]
    pods = [_pod("m", i, "n0") for i in range(3)]
    claims = [_claim("n0", "gpu-0", shares="25", memory="40Gi") for _ in range(3)]
    nodes = {"n0": {"name": "n0", "gpu": {"product": H100, "memoryMiB": MEMORY_MIB[H100], "count": 8}}}
    out = fleet_packing(services=services, pods=pods, claims=claims, slices=[_slice("n0", 8)], nodes=nodes)
    assert out["lowerBoundGpus"] == 2  # 1.5 GPUs of memory beats 0.75 of shares
    assert out["overcommittedDevices"] == 1  # 120 GiB claimed on one 79.6 GiB device
    assert out["overcommitExamples"][0]["capacity"] == "memory"


def test_a_service_whose_bound_replicas_miss_its_target_is_unmet_whatever_its_status_says() -> None:
    services = [_service("u", target=25000, replicas=3, share=0.25, memory=6, planned=30000)]
    pods = [_pod("u", 0, "n0"), _pod("u", 1, "n0"), _pod("u", 2, None)]
    nodes = {"n0": {"name": "n0", "gpu": {"product": H100, "memoryMiB": MEMORY_MIB[H100], "count": 8}}}
    out = fleet_packing(services=services, pods=pods, claims=[], slices=[], nodes=nodes)
    assert out["servicesTargetMetByStatus"] == 1
    assert out["servicesTargetMet"] == 0
    assert out["servicesTargetUnmet"][0]["boundReplicas"] == 2

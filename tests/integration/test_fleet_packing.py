"""Fleet packing (``dra-shares``): replicas of several SLMServices share simulated GPUs, placed by the
real scheduler through DRA consumable capacity, and start one after another per GPU.

The GPUs are hack/gpu-nodes.yaml's consumable ones, published like NVIDIA's DRA driver does with
``--consumable-shares``: gpu-a100-shares-0 (2 × A100 80GB, 81920 MiB and 120 shares each) and
gpu-a10g-memshares-0 (2 × A10G, 23028 MiB, memory only). No other test uses these products.
KWOK keeps a ``dra-shares`` pod not Ready until the operator grants its start, then makes it Ready
3 s later (hack/localcluster/kwok-stages.yaml), like a vLLM loading.
"""

from __future__ import annotations

import datetime
import itertools
import secrets
from collections.abc import Iterator

import pytest

from hack.localcluster.cluster import wait_for
from tests.integration.operator_harness import apply_yaml, get_json, slms, wait_phase
from tests.integration.test_operator_lifecycle import children

pytestmark = pytest.mark.integration

A100, A100_NODE, A100_MIB, A100_SHARES = "NVIDIA-A100-SXM4-80GB", "gpu-a100-shares-0", 81920, 120
A10G, A10G_NODE, A10G_MIB = "NVIDIA-A10G", "gpu-a10g-memshares-0", 23028


def shared_service(name: str, *, product: str = A100, k: int = 4, memory_gib: float = 10, target: float,
                   per_gpu: float = 20000) -> dict:
    """A service with a static profile (k replicas saturate a GPU at ``per_gpu`` tok/s) and a target."""
    return {
        "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": name},
        "spec": {
            "model": "facebook/opt-125m",
            "gpu": {"product": product, "sharing": "auto"},
            "profiling": {"mode": "static", "static": {"batchSize": 64, "replicasPerGPU": k,
                                                         "memoryPerReplicaGiB": memory_gib,
                                                         "tokensPerSecondPerGPU": per_gpu}},
            "scale": {"targetTokensPerSecond": target},
        },
    }


@pytest.fixture
def other_namespace(cluster) -> Iterator[str]:
    """A second namespace: services of another team. NB: it enforces the `restricted` Pod Security level,
    so the dra-shares pods there (start gate, downwardAPI volume, per-pod claim) must pass it."""
    name = f"t-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             timeout=30, message=f"ServiceAccount default in {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def allocations(cluster, node: str) -> list[tuple[str, dict]]:
    """(device, consumedCapacity) of every allocated claim on ``node``'s GPUs, all namespaces."""
    found = []
    for claim in get_json(cluster, "resourceclaims", "-A")["items"]:
        for result in ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results", []):
            if result["pool"] == node:
                found.append((result["device"], result.get("consumedCapacity") or {}))
    return found


@pytest.fixture
def free_gpus(cluster) -> None:
    """The shared GPUs are free (an earlier test's namespaces may still be going)."""
    wait_for(lambda: not allocations(cluster, A100_NODE) and not allocations(cluster, A10G_NODE),
             timeout=120, message="no claims left on the shared GPUs")


def devices_of(cluster, namespace: str, name: str, count: int) -> list[str]:
    """The device each of the service's ``count`` claims is allocated on, once all are."""
    def allocated():
        claims = children(cluster, namespace, "resourceclaims", name)
        results = [r for c in claims
                   for r in ((c.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results", [])]
        return sorted(r["device"] for r in results) if len(claims) == count == len(results) else None
    return wait_for(allocated, timeout=90, interval=0.5, message=f"{count} allocated claims of {name}")


def mib(quantity: str) -> float:
    for unit, factor in (("Ki", 1 / 1024), ("Mi", 1), ("Gi", 1024)):
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity) / 2**20


def check_within_capacity(cluster, node: str, *, memory_mib: int, shares: int | None) -> None:
    per_device: dict[str, list[float]] = {}
    for device, consumed in allocations(cluster, node):
        total = per_device.setdefault(device, [0.0, 0.0])
        total[0] += mib(consumed.get("memory", "0"))
        total[1] += float(consumed.get("shares", 0))
    for device, (memory, used_shares) in per_device.items():
        assert memory <= memory_mib, f"{device}: {memory} MiB of {memory_mib}"
        if shares is not None:
            assert used_shares <= shares, f"{device}: {used_shares} shares of {shares}"


def test_services_of_two_namespaces_share_a_gpu_the_next_one_and_scale_in_frees_shares(
        cluster, operator, namespace, other_namespace, free_gpus):
    # A: 9000 tok/s at 5000 per replica (20000 / k*=4) with 10% headroom -> 2 replicas of 1/4 GPU.
    apply_yaml(cluster, namespace, shared_service("chat", target=9000))
    # B, another team: 4000 tok/s -> 1 replica.
    apply_yaml(cluster, other_namespace, shared_service("embed", target=4000))
    chat = wait_phase(cluster, namespace, "chat", ("Ready",), operator=operator)
    wait_phase(cluster, other_namespace, "embed", ("Ready",), operator=operator)
    assert devices_of(cluster, namespace, "chat", 2) == ["gpu-0", "gpu-0"]
    assert devices_of(cluster, other_namespace, "embed", 1) == ["gpu-0"], "both services share one GPU"

    placement = slms(cluster, namespace, "chat")["status"]["placement"]
    assert placement["mechanism"] == "dra-shares" and chat["status"]["placement"]["mechanism"] == "dra-shares"
    assert (placement["totalReplicas"], placement["requestedReplicas"], placement["sharePerReplica"]) == (2, 2, 0.25)
    # 10 GiB budget + its part of the 8% no replica may budget: ceil(10 * 1024 / 0.92) MiB.
    assert placement["memoryPerReplicaGiB"] == round(11131 / 1024, 2) and placement["capacityMode"] == "shares"
    assert placement["plannedTokensPerSecond"] == 10000.0, "2 replicas x the plateau / k*, not 2 solo replicas"
    assert placement["gpus"] == 1
    assert placement["devices"] == [{"node": A100_NODE, "device": "gpu-0", "replicas": 2}]
    claim = children(cluster, namespace, "resourceclaims", "chat")[0]
    assert claim["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"] == {
        "memory": "11131Mi", "shares": "30"}
    pods = children(cluster, namespace, "pods", "chat")
    assert {p["spec"]["nodeName"] for p in pods} == {A100_NODE}
    assert all(p["spec"]["resourceClaims"][0]["resourceClaimTemplateName"].startswith("chat-share-") for p in pods)

    # C: half a GPU per replica (k*=2, 30 GiB), 2 replicas: gpu-0 has 30 of 120 shares left, so gpu-1.
    apply_yaml(cluster, namespace, shared_service("rerank", k=2, memory_gib=30, target=18000))
    wait_phase(cluster, namespace, "rerank", ("Ready",), operator=operator)
    assert devices_of(cluster, namespace, "rerank", 2) == ["gpu-1", "gpu-1"]
    check_within_capacity(cluster, A100_NODE, memory_mib=A100_MIB, shares=A100_SHARES)

    # D needs half a GPU too: nothing has room, so it waits (Pending) instead of over-promising.
    apply_yaml(cluster, other_namespace, shared_service("summarize", k=2, memory_gib=30, target=9000))
    pending = wait_phase(cluster, other_namespace, "summarize", ("Pending",), operator=operator)
    planned = {c["type"]: c for c in pending["status"]["conditions"]}["Planned"]
    assert planned["reason"] == "InsufficientSlots" and "no NVIDIA-A100-SXM4-80GB GPU has room" in planned["message"]

    # Scale A in to one replica: its second claim goes with its pod, and D then fits on gpu-0.
    apply_yaml(cluster, namespace, shared_service("chat", target=4000))
    wait_for(lambda: len(children(cluster, namespace, "resourceclaims", "chat")) == 1, timeout=60,
             message="chat's second claim released")
    wait_phase(cluster, other_namespace, "summarize", ("Ready",), timeout=120, operator=operator)
    assert devices_of(cluster, other_namespace, "summarize", 1) == ["gpu-0"]
    check_within_capacity(cluster, A100_NODE, memory_mib=A100_MIB, shares=A100_SHARES)
    assert slms(cluster, namespace, "chat")["status"]["placement"]["totalReplicas"] == 1


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_replicas_of_two_services_start_one_after_another_per_gpu(cluster, operator, namespace, other_namespace,
                                                                  free_gpus):
    """Memory-only GPUs (A10G): the 1/4 share is reserved as memory; six replicas arrive at once."""
    seen_starting: list[int] = []

    def starting_per_device() -> dict[str, int]:
        counts: dict[str, int] = {}
        # NB: one list of every namespace's replicas: one consistent snapshot of the cluster.
        for pod in get_json(cluster, "pods", "-A", "-l", "slm.pareto.dev/packed=true")["items"]:
            if pod["metadata"]["namespace"] in (namespace, other_namespace):
                annotations = pod["metadata"].get("annotations") or {}
                ready = any(c["type"] == "Ready" and c["status"] == "True"
                            for c in pod.get("status", {}).get("conditions", []))
                if annotations.get("slm.pareto.dev/start") == "granted" and not ready:
                    device = annotations["slm.pareto.dev/start-device"]
                    counts[device] = counts.get(device, 0) + 1
        seen_starting.append(max(counts.values(), default=0))
        return counts

    # 3 replicas each of a 3 GiB model at k*=4: each claim reserves a quarter of the GPU as memory.
    apply_yaml(cluster, namespace, shared_service("a", product=A10G, memory_gib=3, target=13000))
    apply_yaml(cluster, other_namespace, shared_service("b", product=A10G, memory_gib=3, target=13000))

    def all_ready() -> bool:
        starting_per_device()
        return all(slms(cluster, ns, n).get("status", {}).get("phase") == "Ready"
                   for ns, n in ((namespace, "a"), (other_namespace, "b")))
    wait_for(all_ready, timeout=150, interval=0.3, message="both services Ready")
    assert max(seen_starting) == 1, "never two replicas starting on one GPU at once"

    pods = [p for ns in (namespace, other_namespace) for p in get_json(cluster, "pods", "-n", ns)["items"]]
    assert len(pods) == 6
    by_device: dict[str, list[tuple[datetime.datetime, datetime.datetime]]] = {}
    for pod in pods:
        annotations = pod["metadata"]["annotations"]
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        by_device.setdefault(annotations["slm.pareto.dev/start-device"], []).append(
            (_time(annotations["slm.pareto.dev/start-granted-at"]), _time(ready["lastTransitionTime"])))
    assert sorted(len(v) for v in by_device.values()) == [2, 4], "4 quarter-GPU claims fill gpu-0, 2 go to gpu-1"
    for device, starts in by_device.items():
        starts.sort()
        for (_, ready_before), (granted, _) in itertools.pairwise(starts):
            # NB: Ready times have whole seconds (KWOK); a grant follows the Ready before it.
            assert granted >= ready_before, f"{device}: granted at {granted} before the previous Ready {ready_before}"

    placement = slms(cluster, namespace, "a")["status"]["placement"]
    assert placement["capacityMode"] == "memory" and placement["sharePerReplica"] == 0.25
    assert placement["memoryPerReplicaGiB"] == round(A10G_MIB / 4 / 1024, 2)
    assert "memory only" in slms(cluster, namespace, "a")["status"]["message"]
    claim = children(cluster, namespace, "resourceclaims", "a")[0]
    assert claim["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"] == {"memory": "5757Mi"}
    check_within_capacity(cluster, A10G_NODE, memory_mib=A10G_MIB, shares=None)

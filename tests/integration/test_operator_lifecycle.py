"""The operator's lifecycle on the real control plane: apply, update, delete, restart, bad states."""

from __future__ import annotations

import pytest

from tests.integration.operator_harness import apply_yaml, get_json, slms, wait_phase
from tests.kubetest import wait_for

H100 = "NVIDIA-H100-80GB-HBM3"
pytestmark = pytest.mark.integration


def static_service(name: str, *, gpus: int = 1, sharing: str = "mps", **spec) -> dict:
    return {
        "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": name},
        "spec": {
            "model": "facebook/opt-125m",
            "gpu": {"product": H100, "sharing": sharing},
            "profiling": {"mode": "static", "static": {"batchSize": 64, "replicasPerGPU": 2,
                                                         "memoryPerReplicaGiB": 6, "tokensPerSecondPerGPU": 20000}},
            "scale": {"gpus": gpus},
        } | spec,
    }


def children(cluster, namespace: str, kind: str, name: str) -> list[dict]:
    return get_json(cluster, kind, "-n", namespace, "-l", f"slm.pareto.dev/service={name}")["items"]


def ready_pods(cluster, namespace: str, name: str, count: int) -> list[dict]:
    def ready():
        pods = children(cluster, namespace, "pods", name)
        ok = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in p.get("status", {}).get("conditions", []))]
        return ok if len(ok) == count and len(pods) == count else None
    return wait_for(ready, timeout=90, interval=0.5, message=f"{count} ready pods of {name}")


def test_apply_gives_owned_children_ready_pods_and_a_filled_status(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("opt"))
    obj = wait_phase(cluster, namespace, "opt", ("Ready",), operator=operator)
    uid = obj["metadata"]["uid"]

    sets = children(cluster, namespace, "statefulsets", "opt")
    services = get_json(cluster, "services", "-n", namespace)["items"]
    assert [s["metadata"]["name"] for s in sets] == ["opt-g0"]
    assert [s["metadata"]["name"] for s in services] == ["opt"]
    for child in sets + services:
        refs = child["metadata"]["ownerReferences"]
        assert refs[0]["uid"] == uid and refs[0]["controller"] is True

    pods = ready_pods(cluster, namespace, "opt", 2)
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert nodes == {"gpu-h100-0"}  # the MPS node, both replicas together
    args = pods[0]["spec"]["containers"][0]["args"]
    assert "--max-num-seqs=64" in args and any(a.startswith("--kv-cache-memory-bytes=") for a in args)

    status = obj["status"]
    assert status["placement"]["mechanism"] == "mps" and status["placement"]["ready"] == "2/2"
    assert status["profile"]["source"] == "static" and status["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Profiled": "True", "Planned": "True", "Available": "True", "Progressing": "False"}
    wide = cluster.kubectl("get", "slms", "opt", "-n", namespace, "-o", "wide").stdout
    for column, value in (("BATCH", "64"), ("READY", "2/2"), ("PHASE", "Ready"), ("SHARING", "mps")):
        assert column in wide.splitlines()[0] and value in wide.splitlines()[1], wide
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=SLMService").stdout
    assert "Ready" in events


def test_scale_out_keeps_ready_replicas_and_scale_in_removes_whole_groups(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("s"))
    wait_phase(cluster, namespace, "s", ("Ready",), operator=operator)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in ready_pods(cluster, namespace, "s", 2)}

    apply_yaml(cluster, namespace, static_service("s", gpus=3))
    wait_for(lambda: slms(cluster, namespace, "s")["status"]["placement"]["ready"] == "6/6", timeout=120,
             message="6/6 ready after scale out")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in ready_pods(cluster, namespace, "s", 6)}
    assert all(after[name] == uid for name, uid in before.items()), "scale out restarted a Ready replica"
    assert sorted(s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "s")) == [
        "s-g0", "s-g1", "s-g2"]

    apply_yaml(cluster, namespace, static_service("s", gpus=1))
    wait_for(lambda: [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "s")] == ["s-g0"],
             timeout=60, message="scale in to one group")
    remaining = {p["metadata"]["name"]: p["metadata"]["uid"] for p in ready_pods(cluster, namespace, "s", 2)}
    assert remaining == before


def test_spec_change_patches_children(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("u"))
    wait_phase(cluster, namespace, "u", ("Ready",), operator=operator)
    changed = static_service("u", engine={"args": ["--enforce-eager"]})
    changed["spec"]["profiling"]["static"]["batchSize"] = 32
    apply_yaml(cluster, namespace, changed)

    def patched():
        sts = children(cluster, namespace, "statefulsets", "u")[0]
        args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        return "--max-num-seqs=32" in args and "--enforce-eager" in args
    wait_for(patched, timeout=60, message="StatefulSet args follow the spec")
    obj = wait_for(lambda: (o := slms(cluster, namespace, "u"))["status"].get("observedGeneration") ==
                   o["metadata"]["generation"] and o, timeout=60, message="observedGeneration catches up")
    assert obj["status"]["profile"]["batchSize"] == 32


def test_delete_cascades_to_every_child(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("d", sharing="dra"))
    wait_phase(cluster, namespace, "d", ("Ready",), operator=operator)
    assert children(cluster, namespace, "resourceclaims", "d")
    cluster.kubectl("delete", "slmservice", "d", "-n", namespace, "--wait=true", "--timeout=60s")
    for kind in ("statefulsets", "services", "resourceclaims", "pods"):
        wait_for(lambda k=kind: not children(cluster, namespace, k, "d"), timeout=90,
                 message=f"{kind} of a deleted SLMService are garbage-collected")


def test_operator_killed_mid_reconcile_converges_without_duplicates(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("k", gpus=3, sharing="time-slicing"))
    wait_for(lambda: children(cluster, namespace, "statefulsets", "k"), timeout=60, interval=0.05,
             message="the first child exists")
    operator.kill()
    operator.start()
    obj = wait_phase(cluster, namespace, "k", ("Ready",), timeout=120, operator=operator)
    sets = sorted(s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "k"))
    assert sets == ["k-g0", "k-g1", "k-g2"]
    assert len(get_json(cluster, "services", "-n", namespace)["items"]) == 1
    assert obj["status"]["placement"]["ready"] == "6/6"


def test_missing_secret_is_a_condition_then_converges(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("sec", engine={"hfTokenSecretRef": {"name": "hf-token"}}))
    obj = wait_phase(cluster, namespace, "sec", ("Pending",), operator=operator)
    cond = {c["type"]: c for c in obj["status"]["conditions"]}["Available"]
    assert cond["status"] == "False" and cond["reason"] == "SecretNotFound" and "hf-token" in cond["message"]
    assert not children(cluster, namespace, "statefulsets", "sec")
    cluster.kubectl("create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=HF_TOKEN=x")
    wait_phase(cluster, namespace, "sec", ("Ready",), timeout=90, operator=operator)


def test_unknown_gpu_product_is_reported_with_the_products_available(cluster, operator, namespace):
    bad = static_service("g")
    bad["spec"]["gpu"]["product"] = "NVIDIA-B200"
    apply_yaml(cluster, namespace, bad)
    obj = wait_phase(cluster, namespace, "g", ("Pending",), operator=operator)
    cond = {c["type"]: c for c in obj["status"]["conditions"]}["Planned"]
    assert cond["reason"] == "NoMatchingGPUs" and H100 in cond["message"]

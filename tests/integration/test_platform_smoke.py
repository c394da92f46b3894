"""The test platform itself: the real scheduler places pods on KWOK's simulated GPU nodes.

Expectations come from the cluster's own node objects (allocatable GPUs, labels), never from
copies of hack/gpu-nodes.yaml, so these tests hold for any node config with GPU nodes of two
products and a DRA node.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.localcluster.processes import is_listening
from tests import kubetest
from tests.kubetest import Cluster, wait_for

GPU = "nvidia.com/gpu"
PRODUCT = "nvidia.com/gpu.product"
IMAGE = "registry.k8s.io/pause:3.10"  # NB: never pulled; KWOK only pretends to run containers.


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def allocatable_gpus(node: dict[str, Any]) -> int:
    return int(node["status"].get("allocatable", {}).get(GPU, "0"))


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def ready_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    pod = get_json(cluster, "pod", name, "-n", namespace)
    return pod if is_ready(pod) else None


def gpu_pod(name: str, *, gpus: int, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": IMAGE, "resources": {"limits": {GPU: str(gpus)}}}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_gpu_deployment_is_placed_on_gpu_nodes_and_becomes_ready(cluster: Cluster, namespace: str) -> None:
    gpu_nodes = {n["metadata"]["name"] for n in get_json(cluster, "nodes")["items"] if allocatable_gpus(n) > 0}
    assert gpu_nodes, "the cluster has no node with nvidia.com/gpu"
    template = gpu_pod("unused", gpus=1)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "gpu-app"}},
            "template": {"metadata": {"labels": {"app": "gpu-app"}}, "spec": template["spec"]},
        },
    }
    apply(cluster, namespace, deployment)

    wait_for(
        lambda: get_json(cluster, "deployment", "gpu-app", "-n", namespace)["status"].get("readyReplicas") == 2,
        timeout=60,
        message="2 ready replicas of gpu-app",
    )
    pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=gpu-app")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert is_ready(pod)
        assert pod["spec"]["nodeName"] in gpu_nodes
        assert pod["status"]["phase"] == "Running"
        assert pod["status"].get("podIP"), "KWOK should give the pod an IP"


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(cluster: Cluster, namespace: str) -> None:
    most = max(allocatable_gpus(n) for n in get_json(cluster, "nodes")["items"])
    apply(cluster, namespace, gpu_pod("too-big", gpus=most + 1))

    def failed_scheduling() -> list[dict[str, Any]]:
        events = get_json(cluster, "events", "-n", namespace,
                          "--field-selector", "involvedObject.name=too-big")["items"]
        return [e for e in events if e["reason"] == "FailedScheduling"]

    events = wait_for(failed_scheduling, timeout=30, message="a FailedScheduling event for too-big")
    assert f"Insufficient {GPU}" in events[0]["message"]
    pod = get_json(cluster, "pod", "too-big", "-n", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_node_selector_on_gpu_product_is_honoured(cluster: Cluster, namespace: str) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(cluster, "nodes")["items"]}
    products = {n["metadata"]["labels"].get(PRODUCT) for n in nodes.values() if allocatable_gpus(n) > 0}
    # NB: only meaningful if some GPU node does NOT match the selector.
    assert "NVIDIA-L4" in products and len(products - {None}) >= 2, products
    apply(cluster, namespace, gpu_pod("on-l4", gpus=1, node_selector={PRODUCT: "NVIDIA-L4"}))

    pod = wait_for(
        lambda: ready_pod(cluster, namespace, "on-l4"),
        timeout=30,
        message="pod on-l4 Ready",
    )
    assert nodes[pod["spec"]["nodeName"]]["metadata"]["labels"][PRODUCT] == "NVIDIA-L4"


def test_serviceaccount_without_rolebinding_is_forbidden(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = cluster.kubectl("create", "token", "nobody", "-n", namespace, "--duration=10m").stdout.strip()
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = kubetest.ca_file_of(kubeconfig=cluster.kubeconfig, directory=str(tmp_path))
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(configuration) as api:
        # The token authenticates (so the 403 below is authorization, not a bad token) ...
        review = client.AuthenticationV1Api(api).create_self_subject_review(body=client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"
        # ... but without a RoleBinding it may not even list pods in its own namespace.
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(api).list_namespaced_pod(namespace)
    assert denied.value.status == 403


def test_dra_claim_is_allocated_a_device_on_the_dra_node_by_the_scheduler(cluster: Cluster, namespace: str) -> None:
    claim_template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "one-gpu"},
        "spec": {
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dra-pod"},
        "spec": {
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}],
            "containers": [{"name": "main", "image": IMAGE, "resources": {"claims": [{"name": "gpu"}]}}],
        },
    }
    apply(cluster, namespace, claim_template, pod)

    ready = wait_for(
        lambda: ready_pod(cluster, namespace, "dra-pod"),
        timeout=60,
        message="pod dra-pod Ready",
    )
    node_name = ready["spec"]["nodeName"]
    node = get_json(cluster, "node", node_name)
    assert node["metadata"]["labels"].get("nvidia.com/dra.present") == "true"
    assert allocatable_gpus(node) == 0, "a DRA node advertises no device-plugin GPUs"

    claim_name = ready["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    claim = get_json(cluster, "resourceclaim", claim_name, "-n", namespace)
    results = claim["status"]["allocation"]["devices"]["results"]
    assert len(results) == 1
    assert results[0]["driver"] == "gpu.nvidia.com"
    assert results[0]["pool"] == node_name
    assert any(r["uid"] == ready["metadata"]["uid"] for r in claim["status"]["reservedFor"])
    slices = [s for s in get_json(cluster, "resourceslices")["items"] if s["spec"].get("nodeName") == node_name]
    assert results[0]["device"] in {d["name"] for s in slices for d in s["spec"]["devices"]}


def test_kubectl_lists_gpu_nodes_with_their_product(cluster: Cluster) -> None:
    labelled = {
        n["metadata"]["name"]: n["metadata"]["labels"][PRODUCT]
        for n in get_json(cluster, "nodes")["items"]
        if PRODUCT in n["metadata"]["labels"]
    }
    assert labelled
    header, *rows = cluster.kubectl("get", "nodes", "-L", PRODUCT).stdout.splitlines()
    column = header.split().index("GPU.PRODUCT")
    shown = {row.split()[0]: row.split()[column] for row in rows if len(row.split()) > column}
    assert {name: shown.get(name) for name in labelled} == labelled


# ---------------------------------------------------------------- a second cluster's lifecycle


@pytest.fixture
def bin_dir() -> str:
    found, why = kubetest.find_binaries()
    if found is None:
        if os.environ.get("SLM_REQUIRE_CLUSTER") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return found


@pytest.fixture
def one_node_config(tmp_path: Path) -> str:
    path = tmp_path / "nodes.yaml"
    path.write_text(
        yaml.safe_dump(
            {"nodes": [
                {"name": "solo", "gpu": {"product": "NVIDIA-L4", "memoryMiB": 23034, "count": 1, "sharing": "none"}}
            ]}
        )
    )
    return str(path)


def test_second_cluster_up_twice_then_down_leaves_no_process_or_port(
    bin_dir: str, one_node_config: str, tmp_path: Path
) -> None:
    run_dir = str(tmp_path / "second")
    try:
        first = kubetest.cluster_script("up", "--bin", bin_dir, "--run-dir", run_dir, "--config", one_node_config)
        assert f"export KUBECONFIG={run_dir}/kubeconfig" in first.stdout
        state = json.loads((Path(run_dir) / "state.json").read_text())
        pids = {name: proc["pid"] for name, proc in state["processes"].items()}
        ports = sorted({p for proc in state["processes"].values() for p in proc["ports"]})
        assert {pid for pid, _ in kubetest.processes_mentioning(text=run_dir)} == set(pids.values())
        assert all(is_listening(port=port) for port in ports)

        again = kubetest.cluster_script("up", "--bin", bin_dir, "--run-dir", run_dir, "--config", one_node_config)
        assert "already running" in again.stdout
        state_again = json.loads((Path(run_dir) / "state.json").read_text())
        assert {name: proc["pid"] for name, proc in state_again["processes"].items()} == pids

        status = kubetest.cluster_script("status", "--run-dir", run_dir)
        assert "nodes: 1/1 Ready" in status.stdout
    finally:
        down = kubetest.cluster_script("down", "--run-dir", run_dir, check=False)
    assert down.returncode == 0, down.stderr
    assert kubetest.processes_mentioning(text=run_dir) == []
    assert [port for port in ports if is_listening(port=port)] == []

    repeat = kubetest.cluster_script("down", "--run-dir", run_dir)
    assert "not running" in repeat.stdout
    stopped = kubetest.cluster_script("status", "--run-dir", run_dir, check=False)
    assert stopped.returncode == 3


def test_failure_part_way_through_up_stops_what_had_started(bin_dir: str, one_node_config: str, tmp_path: Path) -> None:
    # A bin folder whose kwok fails at once: etcd, the API server and the controllers start first.
    broken = tmp_path / "bin"
    broken.mkdir()
    for name in os.listdir(bin_dir):
        (broken / name).symlink_to(Path(bin_dir) / name)
    (broken / "kwok").unlink()
    (broken / "kwok").write_text("#!/bin/sh\necho 'kwok: simulated start failure' >&2\nexit 1\n")
    (broken / "kwok").chmod(stat.S_IRWXU)
    run_dir = str(tmp_path / "broken")

    result = kubetest.cluster_script("up", "--bin", str(broken), "--run-dir", run_dir, "--config", one_node_config,
                                     check=False)

    assert result.returncode == 2
    assert "kwok exited with code 1" in result.stderr
    assert "simulated start failure" in result.stderr  # the failing component's log is shown
    assert "kube-apiserver" in result.stdout and "terminated" in result.stdout
    assert kubetest.processes_mentioning(text=run_dir) == []

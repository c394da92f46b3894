"""slm_operator.kube against the real API server: expected answers are outcomes, not exceptions."""

from __future__ import annotations

import time

import pytest

from slm_operator import kube
from slm_operator.gpu_index import Entries, PodSlots, claim_of, group_of, packed_pod_of

pytestmark = pytest.mark.integration


@pytest.fixture
def admin_kube(cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    for cached in (kube.api_client, kube._dynamic, kube._resource):
        cached.cache_clear()
    yield kube
    for cached in (kube.api_client, kube._dynamic, kube._resource):
        cached.cache_clear()


def _cm(namespace: str, value: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "io", "namespace": namespace},
            "data": {"k": value}}


def test_apply_is_idempotent_and_create_reports_conflict(admin_kube, namespace):
    assert admin_kube.apply(_cm(namespace, "a")) is kube.Outcome.APPLIED
    first = admin_kube.get(api_version="v1", kind="ConfigMap", name="io", namespace=namespace)
    admin_kube.apply(_cm(namespace, "a"))
    again = admin_kube.get(api_version="v1", kind="ConfigMap", name="io", namespace=namespace)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"], "a no-op apply wrote"
    assert admin_kube.create(_cm(namespace, "b")) is kube.Outcome.CONFLICT
    assert admin_kube.get(api_version="v1", kind="ConfigMap", name="io", namespace=namespace)["data"] == {"k": "a"}


def test_missing_objects_are_outcomes(admin_kube, namespace):
    assert admin_kube.get(api_version="v1", kind="ConfigMap", name="nope", namespace=namespace) is None
    assert admin_kube.delete(api_version="v1", kind="ConfigMap", name="nope", namespace=namespace) is (
        kube.Outcome.NOT_FOUND)
    assert admin_kube.secret_exists(name="nope", namespace=namespace) is False
    assert admin_kube.patch_service_status(name="nope", namespace=namespace, status={"phase": "Ready"}) is (
        kube.Outcome.NOT_FOUND)


def _gpu_node(admin_kube) -> str:
    """A node that offers whole device-plugin GPUs."""
    nodes = admin_kube.list_objects(api_version="v1", kind="Node")
    return next(n["metadata"]["name"] for n in nodes
                if int((n["status"].get("allocatable") or {}).get("nvidia.com/gpu") or 0) > 0)


def _gpu_pod(namespace: str, name: str, node: str) -> dict:
    labels = {"app.kubernetes.io/managed-by": "slm-operator", "slm.pareto.dev/service": "watched",
              "slm.pareto.dev/group": "0"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def _eventually(check, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the watch did not see it in time"
        time.sleep(0.2)


def test_the_pod_watch_counts_gpu_slots_of_bound_pods_as_they_come_and_go(admin_kube, namespace):
    slots = PodSlots()
    watcher = admin_kube.start_watch(store=slots, kind=admin_kube.POD_SLOT_PODS)
    try:
        assert slots.wait_synced(60), "the first listing"
        node = _gpu_node(admin_kube)
        before = slots.used_slots().get((node, "nvidia.com/gpu"), 0)
        assert admin_kube.create(_gpu_pod(namespace, "holder", node)) is kube.Outcome.APPLIED
        _eventually(lambda: slots.used_slots().get((node, "nvidia.com/gpu"), 0) == before + 1)
        assert slots.bound_groups()[0].get(f"{namespace}/watched-g0") == 1
        admin_kube.delete(api_version="v1", kind="Pod", name="holder", namespace=namespace)
        _eventually(lambda: slots.used_slots().get((node, "nvidia.com/gpu"), 0) == before)
        assert f"{namespace}/watched-g0" not in slots.bound_groups()[0]
    finally:
        watcher.stop()



def _group_statefulset(namespace: str, name: str, *, ours: bool = True) -> dict:
    labels = {"slm.pareto.dev/service": "watched", "slm.pareto.dev/group": "0"}
    if ours:
        labels["app.kubernetes.io/managed-by"] = "slm-operator"
    pod_labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"replicas": 0, "serviceName": name, "selector": {"matchLabels": pod_labels},
                     "template": {"metadata": {"labels": pod_labels},
                                  "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}}}


def test_the_group_claim_and_packed_pod_watches_list_and_follow_the_real_api(admin_kube, namespace):
    # NB: no SLMService watch here (this cluster has no CRD); test_metrics runs it in the operator.
    groups, claims, packed = Entries(group_of), Entries(claim_of), Entries(packed_pod_of)
    watchers = [admin_kube.start_watch(store=groups, kind=admin_kube.GROUP_STATEFULSETS),
                admin_kube.start_watch(store=claims, kind=admin_kube.RESOURCE_CLAIMS),
                admin_kube.start_watch(store=packed, kind=admin_kube.PACKED_PODS)]
    try:
        assert all(s.wait_synced(60) for s in (groups, claims, packed)), "the first listings"
        keys = lambda: {g.key for g in groups.values()}  # noqa: E731
        assert admin_kube.create(_group_statefulset(namespace, "theirs", ours=False)) is kube.Outcome.APPLIED
        assert admin_kube.create(_group_statefulset(namespace, "watched-g0")) is kube.Outcome.APPLIED
        _eventually(lambda: f"{namespace}/watched-g0" in keys())
        assert f"{namespace}/theirs" not in keys(), "created first, yet not seen: the server's label selector"
        admin_kube.delete(api_version="apps/v1", kind="StatefulSet", name="watched-g0", namespace=namespace)
        _eventually(lambda: f"{namespace}/watched-g0" not in keys())
    finally:
        for watcher in watchers:
            watcher.stop()

"""slm_operator.kube against the real API server: expected answers are outcomes, not exceptions."""

from __future__ import annotations

import pytest

from slm_operator import kube

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

"""`helm install` of charts/slm-operator on a real API server, and its RBAC checked with `kubectl auth can-i`.

The chart is installed as its own release into a fresh namespace, so these tests do not depend on
(or disturb) the slm-system release the operator tests use. Least privilege is proven both ways:
the ServiceAccounts can do what the operator and the profiler need, and cannot do the rest.
"""

from __future__ import annotations

import json
import pathlib
import secrets
from collections.abc import Iterator

import pytest

from tests.kubetest import wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "slm-operator"
CRD_NAME = "slmservices.slm.pareto.dev"


class Release:
    def __init__(self, *, name: str, namespace: str) -> None:
        self.name, self.namespace = name, namespace
        # NB: the chart's fullname: release name + "-slm-operator" (the release name lacks it).
        self.fullname = f"{name}-slm-operator"
        self.operator_account = f"system:serviceaccount:{namespace}:{self.fullname}"
        self.profiler_account = f"system:serviceaccount:{namespace}:slm-profiler"


@pytest.fixture(scope="module")
def release(cluster) -> Iterator[Release]:
    suffix = secrets.token_hex(3)
    rel = Release(name=f"h{suffix}", namespace=f"helm-{suffix}")
    cluster.helm("install", rel.name, str(CHART), "--namespace", rel.namespace, "--create-namespace", timeout=120)
    try:
        yield rel
    finally:
        cluster.helm("uninstall", rel.name, "--namespace", rel.namespace, check=False, timeout=120)
        cluster.kubectl("delete", "namespace", rel.namespace, "--wait=false", "--ignore-not-found", check=False)


def test_helm_lint_is_clean(cluster) -> None:
    result = cluster.helm("lint", "--strict", str(CHART))
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    assert "0 chart(s) failed" in result.stdout


def test_release_is_deployed_with_its_objects(cluster, release) -> None:
    status = json.loads(cluster.helm("status", release.name, "-n", release.namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    names = set(cluster.kubectl("get", "serviceaccounts,deployments,roles,rolebindings", "-n", release.namespace,
                                "-o", "name").stdout.split())
    assert {f"serviceaccount/{release.fullname}", "serviceaccount/slm-profiler",
            f"deployment.apps/{release.fullname}", f"role.rbac.authorization.k8s.io/{release.fullname}-profiler",
            f"rolebinding.rbac.authorization.k8s.io/{release.fullname}-profiler"} <= names
    cluster.kubectl("get", "clusterrole", release.fullname)
    cluster.kubectl("get", "clusterrolebinding", release.fullname)
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


def test_deployment_runs_the_operator_as_configured(cluster, release) -> None:
    deployment = json.loads(
        cluster.kubectl("get", "deployment", release.fullname, "-n", release.namespace, "-o", "json").stdout
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == release.fullname
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLM_PROFILER_NAMESPACE"] == release.namespace
    assert env["SLM_PROFILER_SERVICE_ACCOUNT"] == "slm-profiler"
    assert container["args"] == ["--liveness", "http://0.0.0.0:8080/healthz"]


# What the operator must be able to do (namespace None = in every namespace).
OPERATOR_CAN = [
    ("patch", "slmservices.slm.pareto.dev", "status", None),
    ("watch", "slmservices.slm.pareto.dev", None, None),
    ("patch", "slmservices.slm.pareto.dev", None, None),
    ("create", "statefulsets.apps", None, None),
    ("delete", "statefulsets.apps", None, None),
    ("create", "services", None, None),
    ("watch", "pods", None, None),
    ("get", "secrets", None, "default"),
    ("list", "nodes", None, None),
    ("create", "resourceclaims.resource.k8s.io", None, None),
    ("list", "resourceslices.resource.k8s.io", None, None),
    ("create", "events", None, None),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None, None),
]

# What it must not be able to do: no pods or Secrets of its own making, no reading every Secret,
# no touching nodes, no deleting users' SLMServices, no escalation through RBAC or workloads.
OPERATOR_CANNOT = [
    ("create", "pods", None, None),
    ("delete", "pods", None, None),
    ("create", "secrets", None, "default"),
    ("list", "secrets", None, None),
    ("watch", "secrets", None, None),
    ("delete", "nodes", None, None),
    ("patch", "nodes", None, None),
    ("create", "slmservices.slm.pareto.dev", None, None),
    ("delete", "slmservices.slm.pareto.dev", None, None),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, None),
    ("create", "rolebindings.rbac.authorization.k8s.io", None, "default"),
    ("create", "deployments.apps", None, None),
    ("update", "jobs.batch", None, None),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("create", "pods", "exec", None),
    ("create", "serviceaccounts", "token", None),
    # Removed with the RBAC split (docs/install.md, "RBAC"): never used by the code or kopf.
    ("update", "slmservices.slm.pareto.dev", "status", None),
    ("get", "deviceclasses.resource.k8s.io", None, None),
    ("create", "events.events.k8s.io", None, None),
    ("watch", "namespaces", None, None),
    # Jobs and ConfigMaps only in the release namespace (tests/integration/test_rbac.py checks that side).
    ("create", "configmaps", None, "default"),
    ("create", "jobs.batch", None, "default"),
]


@pytest.mark.parametrize(("verb", "resource", "subresource", "namespace"), OPERATOR_CAN,
                         ids=[f"{v}-{r}{'-' + s if s else ''}" for v, r, s, _ in OPERATOR_CAN])
def test_operator_can(cluster, release, verb, resource, subresource, namespace) -> None:
    assert cluster.can_i(account=release.operator_account, verb=verb, resource=resource,
                 namespace=namespace, subresource=subresource)


@pytest.mark.parametrize(("verb", "resource", "subresource", "namespace"), OPERATOR_CANNOT,
                         ids=[f"{v}-{r}{'-' + s if s else ''}" for v, r, s, _ in OPERATOR_CANNOT])
def test_operator_cannot(cluster, release, verb, resource, subresource, namespace) -> None:
    assert not cluster.can_i(account=release.operator_account, verb=verb, resource=resource,
                     namespace=namespace, subresource=subresource)


def test_profiler_writes_configmaps_in_its_namespace_only(cluster, release) -> None:
    def allowed(verb: str, resource: str, namespace: str) -> bool:
        return cluster.can_i(account=release.profiler_account, verb=verb, resource=resource, namespace=namespace)

    for verb in ("get", "create", "update", "patch"):
        assert allowed(verb, "configmaps", release.namespace), verb
    assert not allowed("list", "configmaps", release.namespace)
    assert not allowed("delete", "configmaps", release.namespace)
    assert not allowed("create", "configmaps", "default")
    assert not allowed("get", "secrets", release.namespace)
    assert not allowed("get", "slmservices.slm.pareto.dev", release.namespace)
    assert not allowed("create", "pods", release.namespace)


def test_uninstall_keeps_the_crd_and_removes_cluster_rbac(cluster) -> None:
    """Helm never deletes CRDs from crds/, so uninstalling cannot delete every user's SLMServices."""
    suffix = secrets.token_hex(3)
    name, namespace = f"u{suffix}", f"helm-u{suffix}"
    cluster.helm("install", name, str(CHART), "--namespace", namespace, "--create-namespace", timeout=120)
    try:
        cluster.kubectl("get", "clusterrole", f"{name}-slm-operator")
        cluster.helm("uninstall", name, "--namespace", namespace, timeout=120)
        wait_for(lambda: cluster.kubectl("get", "clusterrole", f"{name}-slm-operator", check=False).returncode != 0,
                 timeout=30, message="the ClusterRole to go with the release")
        cluster.kubectl("get", "crd", CRD_NAME)
    finally:
        cluster.helm("uninstall", name, "--namespace", namespace, check=False, timeout=120)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)

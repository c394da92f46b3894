"""The operator's RBAC on a real API server: what its ServiceAccount can and cannot do, in both modes.

Two releases of charts/slm-operator:

* the suite's shared one (``slm-operator`` in ``slm-system``, default values): cluster-wide mode,
  the operator writes SLMService children in every namespace;
* one of its own here, with ``operator.watchNamespaces`` set to two fresh namespaces: the writes
  are bound with a RoleBinding in each, nothing is written cluster-wide.

Each is checked with ``kubectl auth can-i --as=system:serviceaccount:<ns>:<sa>``, and the
namespaced one also by running the operator with its ServiceAccount's token: it serves SLMServices
of a watched namespace end to end (children, DRA claims, status, Events, a profiler Job and its
result in the release namespace, scale-in) without one Forbidden, and leaves an unwatched one
untouched.
docs/install.md ("RBAC") lists the rules and why each is there.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator

import pytest

from tests.integration.operator_harness import (
    OPERATOR_NAMESPACE,
    RELEASE,
    ROOT,
    OperatorProcess,
    apply_yaml,
    serviceaccount_kubeconfig,
    slms,
    wait_phase,
)
from tests.integration.test_operator_lifecycle import H100, static_service
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration

CHART = ROOT / "charts" / "slm-operator"
#: Namespaces no release watches: the operator must never be able to write there.
FOREIGN = ("kube-system", "default")


@dataclasses.dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    watched: tuple[str, ...]

    @property
    def fullname(self) -> str:
        # NB: the chart's fullname: the release name + "-slm-operator", unless it already contains it.
        return self.name if "slm-operator" in self.name else f"{self.name}-slm-operator"

    @property
    def account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"


def create_namespace(cluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=baseline")


@pytest.fixture(scope="module")
def namespaced(cluster) -> Iterator[Release]:
    """A second release that serves two namespaces only (they must exist before its RoleBindings)."""
    suffix = secrets.token_hex(3)
    release = Release(name=f"rbac{suffix}", namespace=f"rbac-{suffix}",
                      watched=(f"rbac-{suffix}-a", f"rbac-{suffix}-b"))
    for namespace in release.watched:
        create_namespace(cluster, namespace)
    try:
        cluster.helm("install", release.name, str(CHART), "--namespace", release.namespace, "--create-namespace",
                     "--set", f"operator.watchNamespaces={{{','.join(release.watched)}}}", timeout=120)
        yield release
    finally:
        cluster.helm("uninstall", release.name, "--namespace", release.namespace, check=False, timeout=120)
        for namespace in (release.namespace, *release.watched):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def clusterwide(installed_chart) -> Release:
    """The suite's shared release: default values, so cluster-wide mode."""
    return Release(name=RELEASE, namespace=OPERATOR_NAMESPACE, watched=())


# Read cluster-wide in both modes: the GPU inventory and kopf's watches.
READS = [
    ("list", "nodes"), ("watch", "nodes"),
    ("list", "pods"), ("watch", "pods"),
    ("list", "statefulsets.apps"), ("watch", "statefulsets.apps"),
    ("list", "resourceclaims.resource.k8s.io"), ("watch", "resourceclaims.resource.k8s.io"),
    ("list", "resourceslices.resource.k8s.io"), ("watch", "resourceslices.resource.k8s.io"),
    ("get", "slmservices.slm.pareto.dev"), ("list", "slmservices.slm.pareto.dev"),
    ("watch", "slmservices.slm.pareto.dev"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
]

# Written for an SLMService, in its namespace: the watched ones (or every one in cluster-wide mode).
WRITES = [
    ("create", "statefulsets.apps"), ("patch", "statefulsets.apps"), ("delete", "statefulsets.apps"),
    ("create", "services"), ("patch", "services"),
    ("create", "resourceclaims.resource.k8s.io"), ("patch", "resourceclaims.resource.k8s.io"),
    ("delete", "resourceclaims.resource.k8s.io"),
    ("create", "resourceclaimtemplates.resource.k8s.io"), ("patch", "resourceclaimtemplates.resource.k8s.io"),
    ("delete", "resourceclaimtemplates.resource.k8s.io"),
    ("patch", "pods"),
    ("get", "networkpolicies.networking.k8s.io"), ("create", "networkpolicies.networking.k8s.io"),
    ("patch", "networkpolicies.networking.k8s.io"), ("delete", "networkpolicies.networking.k8s.io"),
    ("create", "events"),
    ("patch", "slmservices.slm.pareto.dev"),
    ("patch", "slmservices.slm.pareto.dev/status"),
    ("update", "slmservices.slm.pareto.dev/finalizers"),
    ("get", "secrets"),
]

# In the release namespace only, in both modes: profiler Jobs and the profile cache.
RELEASE_NAMESPACE_ONLY = [
    ("get", "jobs.batch"), ("create", "jobs.batch"),
    # A profiler Job that cannot run, or a completed one whose result was deleted (docs/profiling.md).
    ("delete", "jobs.batch"),
    ("get", "configmaps"), ("create", "configmaps"), ("patch", "configmaps"),
]

# Never, anywhere, in either mode: what the code does not do (the old chart granted some of these)
# and what would escalate.
NEVER = [
    ("list", "secrets"), ("watch", "secrets"), ("create", "secrets"),
    ("create", "pods"), ("delete", "pods"), ("create", "pods/exec"), ("create", "serviceaccounts/token"),
    ("update", "statefulsets.apps"), ("update", "services"), ("delete", "services"),
    ("update", "resourceclaims.resource.k8s.io"), ("update", "pods"),
    ("update", "resourceclaimtemplates.resource.k8s.io"),
    ("update", "slmservices.slm.pareto.dev"), ("update", "slmservices.slm.pareto.dev/status"),
    ("create", "slmservices.slm.pareto.dev"), ("delete", "slmservices.slm.pareto.dev"),
    ("update", "configmaps"), ("delete", "configmaps"), ("list", "configmaps"),
    ("update", "jobs.batch"), ("list", "jobs.batch"),
    ("patch", "events"), ("create", "events.events.k8s.io"),
    ("get", "deviceclasses.resource.k8s.io"), ("list", "namespaces"), ("watch", "namespaces"),
    ("get", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("patch", "nodes"), ("delete", "nodes"),
    ("create", "deployments.apps"), ("create", "daemonsets.apps"),
    ("create", "rolebindings.rbac.authorization.k8s.io"), ("create", "clusterroles.rbac.authorization.k8s.io"),
]


def ids(table: list[tuple[str, str]]) -> list[str]:
    return [f"{verb}-{resource}" for verb, resource in table]


# --- namespaced mode (operator.watchNamespaces set) -------------------------------------------------


@pytest.mark.parametrize(("verb", "resource"), READS, ids=ids(READS))
def test_namespaced_mode_reads_the_inventory_cluster_wide(cluster, namespaced, verb, resource):
    assert cluster.can_i(account=namespaced.account, verb=verb, resource=resource, namespace=None)


@pytest.mark.parametrize(("verb", "resource"), WRITES, ids=ids(WRITES))
def test_namespaced_mode_writes_only_in_the_watched_namespaces(cluster, namespaced, verb, resource):
    for namespace in namespaced.watched:
        assert cluster.can_i(account=namespaced.account, verb=verb, resource=resource, namespace=namespace), namespace
    for namespace in FOREIGN:
        assert not cluster.can_i(account=namespaced.account, verb=verb, resource=resource,
                                 namespace=namespace), namespace
    assert not cluster.can_i(account=namespaced.account, verb=verb, resource=resource,
                             namespace=None), "granted cluster-wide"


@pytest.mark.parametrize(("verb", "resource"), RELEASE_NAMESPACE_ONLY, ids=ids(RELEASE_NAMESPACE_ONLY))
def test_namespaced_mode_runs_jobs_and_caches_profiles_in_the_release_namespace_only(cluster, namespaced, verb,
                                                                                      resource):
    assert cluster.can_i(account=namespaced.account, verb=verb, resource=resource, namespace=namespaced.namespace)
    for namespace in (*namespaced.watched, *FOREIGN):
        assert not cluster.can_i(account=namespaced.account, verb=verb, resource=resource,
                                 namespace=namespace), namespace
    assert not cluster.can_i(account=namespaced.account, verb=verb, resource=resource,
                             namespace=None), "granted cluster-wide"


def test_namespaced_mode_creates_claim_templates_for_services_and_profilers_only(cluster, namespaced):
    """A dra-shares service's replicas claim from a template in its namespace; a profiler Job on a DRA
    node from one in the release namespace (owned by the Job). Nowhere else."""
    verb, resource = "create", "resourceclaimtemplates.resource.k8s.io"
    for namespace in (namespaced.namespace, *namespaced.watched):
        assert cluster.can_i(account=namespaced.account, verb=verb, resource=resource, namespace=namespace), namespace
    for namespace in FOREIGN:
        assert not cluster.can_i(account=namespaced.account, verb=verb, resource=resource,
                                 namespace=namespace), namespace
    assert not cluster.can_i(account=namespaced.account, verb=verb, resource=resource,
                             namespace=None), "granted cluster-wide"


@pytest.mark.parametrize(("verb", "resource"), NEVER, ids=ids(NEVER))
def test_namespaced_mode_never(cluster, namespaced, verb, resource):
    for namespace in (None, namespaced.namespace, *namespaced.watched):
        assert not cluster.can_i(account=namespaced.account, verb=verb, resource=resource,
                                 namespace=namespace), namespace


def test_namespaced_mode_binds_nothing_that_writes_cluster_wide(cluster, namespaced):
    """The only ClusterRoleBinding of the release is the read-only one; the writer is bound per namespace."""
    bindings = cluster.get_json("clusterrolebindings", "-l", f"app.kubernetes.io/instance={namespaced.name}")["items"]
    assert [b["roleRef"]["name"] for b in bindings] == [namespaced.fullname]
    role = cluster.get_json("clusterrole", namespaced.fullname)
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} <= {"get", "list", "watch"}
    assert not any("secrets" in rule["resources"] for rule in role["rules"])
    for namespace in namespaced.watched:
        binding = cluster.get_json("rolebinding", f"{namespaced.fullname}-write", "-n", namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": f"{namespaced.fullname}-write"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": namespaced.fullname,
                                        "namespace": namespaced.namespace}]


# --- cluster-wide mode (the default) -----------------------------------------------------------------


@pytest.mark.parametrize(("verb", "resource"), READS + WRITES, ids=ids(READS + WRITES))
def test_clusterwide_mode_reads_and_writes_in_every_namespace(cluster, clusterwide, verb, resource):
    assert cluster.can_i(account=clusterwide.account, verb=verb, resource=resource, namespace=None)


@pytest.mark.parametrize(("verb", "resource"), RELEASE_NAMESPACE_ONLY, ids=ids(RELEASE_NAMESPACE_ONLY))
def test_clusterwide_mode_still_runs_jobs_and_caches_profiles_in_the_release_namespace_only(
    cluster, clusterwide, verb, resource,
):
    assert cluster.can_i(account=clusterwide.account, verb=verb, resource=resource, namespace=clusterwide.namespace)
    for namespace in FOREIGN:
        assert not cluster.can_i(account=clusterwide.account, verb=verb, resource=resource,
                                 namespace=namespace), namespace


@pytest.mark.parametrize(("verb", "resource"), NEVER, ids=ids(NEVER))
def test_clusterwide_mode_never(cluster, clusterwide, verb, resource):
    for namespace in (None, clusterwide.namespace, "kube-system"):
        assert not cluster.can_i(account=clusterwide.account, verb=verb, resource=resource,
                                 namespace=namespace), namespace


# --- the operator itself, with the namespaced release's token ----------------------------------------


def test_operator_serves_its_namespaces_with_namespaced_rbac(cluster, operator, namespaced, namespace, tmp_path):
    """Everything a reconcile does (children, status, Events, kopf's annotations, a profiler Job and its
    cached result in the release namespace, scale-in) passes with the namespaced rules, and an
    SLMService elsewhere is neither served nor annotated."""
    operator.stop()  # one operator at a time: the shared one serves every namespace
    kubeconfig = serviceaccount_kubeconfig(cluster, path=tmp_path / "kubeconfig", account=namespaced.fullname,
                                           namespace=namespaced.namespace)
    scoped = OperatorProcess(kubeconfig=kubeconfig, work_dir=tmp_path, extra_env={
        "SLM_WATCH_NAMESPACE": ",".join(namespaced.watched), "SLM_PROFILER_NAMESPACE": namespaced.namespace,
        "SLM_PROFILER_RUNNER": "job"})
    scoped.start()
    try:
        served = namespaced.watched[0]
        apply_yaml(cluster, namespace, static_service("elsewhere"))
        apply_yaml(cluster, served, static_service("static", sharing="dra"))
        apply_yaml(cluster, served, {
            "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": "auto"},
            "spec": {"model": "facebook/opt-125m", "gpu": {"product": H100, "sharing": "mps"},
                     "workload": {"inputTokens": 96, "outputTokens": 48}, "scale": {"gpus": 1}}})

        static = wait_phase(cluster, served, "static", ("Ready",), timeout=90, operator=scoped)
        assert static["status"]["placement"]["mechanism"] == "dra"
        claims = cluster.get_json("resourceclaims", "-n", served, "-l", "slm.pareto.dev/service=static")["items"]
        assert len(claims) == 1
        events = cluster.kubectl("get", "events", "-n", served, "--field-selector",
                                 "involvedObject.kind=SLMService").stdout
        assert "Ready" in events

        # The profiler Job starts in the release namespace; KWOK runs no container, so the test writes
        # its result as the Job would, with the release's slm-profiler token.
        profiling = wait_phase(cluster, served, "auto", ("Profiling",), operator=scoped)
        progress = profiling["status"]["profile"]["progress"]
        job_name = progress.split(f"{namespaced.namespace}/", 1)[1].split()[0]
        job = wait_for(lambda: cluster.get_json("job", job_name, "-n", namespaced.namespace), timeout=30,
                       message=f"profiler Job {job_name}")
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == "slm-profiler"
        as_profiler = serviceaccount_kubeconfig(cluster, path=tmp_path / "profiler-kubeconfig",
                                                account="slm-profiler", namespace=namespaced.namespace)
        measured = {"source": "measured", "engine": "vllm", "gpuProduct": H100, "batchSize": 32,
                    "tokensPerSecondPerReplica": 9000.0, "tokensPerSecondPerGPU": 15000.0,
                    "replicasToSaturate": 2, "memoryPerReplicaGiB": 8.0, "explanation": "written by the test"}
        cluster.kubectl("--kubeconfig", str(as_profiler), "apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": job_name, "namespace": namespaced.namespace},
            "data": {"profile.json": json.dumps(measured)}}))
        auto = wait_phase(cluster, served, "auto", ("Ready",), timeout=60, operator=scoped)
        assert auto["status"]["profile"]["profileRef"] == f"configmap/{namespaced.namespace}/{job_name}"

        # Scale in to zero GPUs: the StatefulSet and its claim are deleted.
        cluster.kubectl("patch", "slmservice", "static", "-n", served, "--type=merge",
                        "-p", '{"spec": {"scale": {"gpus": 0}}}')
        wait_for(lambda: not cluster.get_json("statefulsets,resourceclaims", "-n", served, "-l",
                                              "slm.pareto.dev/service=static")["items"],
                 timeout=60, message="the static service's group and claim to be deleted")

        elsewhere = slms(cluster, namespace, "elsewhere")
        assert not elsewhere.get("status"), elsewhere["status"]
        assert not [a for a in elsewhere["metadata"].get("annotations", {}) if a.startswith("slm.pareto.dev/")]
        assert not cluster.get_json("statefulsets", "-n", namespace)["items"]
        log = scoped.log_path.read_text(errors="replace")
        assert "Forbidden" not in log, scoped.log_tail(80)
    finally:
        scoped.stop()
        operator.start()

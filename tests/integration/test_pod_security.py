"""Every pod the operator makes passes the ``restricted`` Pod Security Standard, as the API server's
own PodSecurity admission judges it: the vLLM replicas of an SLMService and the profiler Job, each
in a namespace that enforces ``restricted``. A negative control shows the admission bites there.

NB: PodSecurity enforces on pods, not on the StatefulSets and Jobs that make them: a refused pod
shows up as a FailedCreate Event of its controller, so the tests look for the pods themselves.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from slm_operator.builders.children import build_network_policy, owner_reference
from slm_operator.builders.profiler_job import build_profiler_job
from slm_operator.profiling.types import ProfileRequest, Workload
from slm_operator.spec import NetworkPolicySpec
from tests.integration.operator_harness import apply_yaml, get_json, wait_phase
from tests.integration.test_operator_lifecycle import children, ready_pods, static_service
from tests.kubetest import Cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def restricted(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace that enforces (and warns about) the ``restricted`` level."""
    name = f"psr-{secrets.token_hex(4)}"
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    labels |= {f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "warn")}
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    # NB: pods are refused until the ServiceAccount controller has made `default` in the namespace.
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, "-o", "name",
                                     check=False).returncode == 0,
             timeout=30, message=f"ServiceAccount default in namespace {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def pod_security_refusals(cluster: Cluster, namespace: str) -> list[str]:
    events = get_json(cluster, "events", "-n", namespace)["items"]
    return [e.get("message", "") for e in events
            if e.get("reason") == "FailedCreate" and "PodSecurity" in e.get("message", "")]


def dry_run_pod(cluster: Cluster, namespace: str, pod_spec: dict[str, Any]) -> tuple[int, str]:
    """``kubectl create --dry-run=server`` of a bare Pod: admission runs, nothing is stored."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"probe-{secrets.token_hex(3)}"},
           "spec": pod_spec}
    result = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(pod),
                             check=False)
    return result.returncode, result.stdout + result.stderr


def test_vllm_replicas_are_admitted_under_restricted(cluster, operator, restricted):
    cluster.kubectl("create", "secret", "generic", "api", "-n", restricted, "--from-literal=VLLM_API_KEY=sk-test")
    service = static_service("sec", engine={"apiKeySecretRef": {"name": "api"}})
    apply_yaml(cluster, restricted, service)
    wait_phase(cluster, restricted, "sec", ("Ready",), operator=operator)

    pods = ready_pods(cluster, restricted, "sec", 2)
    assert pod_security_refusals(cluster, restricted) == []
    pod = pods[0]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "api", "key": "VLLM_API_KEY"}
    assert env["HOME"]["value"] == "/var/cache/slm"

    # The negative control: the same pod without runAsNonRoot is refused in this namespace ...
    template = children(cluster, restricted, "statefulsets", "sec")[0]["spec"]["template"]["spec"]
    code, out = dry_run_pod(cluster, restricted, template)
    assert code == 0, out
    weakened = copy.deepcopy(template)
    del weakened["securityContext"]["runAsNonRoot"]
    code, out = dry_run_pod(cluster, restricted, weakened)
    assert code != 0 and "PodSecurity" in out and "runAsNonRoot" in out, out
    # ... and so is one that lets a process gain privileges.
    weakened = copy.deepcopy(template)
    weakened["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    code, out = dry_run_pod(cluster, restricted, weakened)
    assert code != 0 and "allowPrivilegeEscalation" in out, out


def test_network_policy_follows_the_spec(cluster, operator, restricted):
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
    apply_yaml(cluster, restricted, static_service("np", networkPolicy={"ingressFrom": [peer]}))
    obj = wait_phase(cluster, restricted, "np", ("Ready", "Deploying"), operator=operator)
    policy = wait_for(lambda: get_json(cluster, "networkpolicies", "-n", restricted)["items"], timeout=30,
                      message="the NetworkPolicy of np")[0]
    assert policy["metadata"]["name"] == "np"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}, peer]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]
    pods = ready_pods(cluster, restricted, "np", 2)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(selector.items() <= p["metadata"]["labels"].items() for p in pods)

    cluster.kubectl("patch", "slmservice", "np", "-n", restricted, "--type=json",
                    "-p", '[{"op": "remove", "path": "/spec/networkPolicy"}]')
    wait_for(lambda: not get_json(cluster, "networkpolicies", "-n", restricted)["items"], timeout=60,
             message="the NetworkPolicy of np removed with spec.networkPolicy")


def test_built_network_policy_is_accepted_by_the_api_server(cluster, restricted):
    peers = ({"namespaceSelector": {"matchLabels": {"team": "gw"}}, "podSelector": {"matchLabels": {"app": "x"}}},)
    policy = build_network_policy(name="np", namespace=restricted, policy=NetworkPolicySpec(ingress_from=peers),
                                  owner=owner_reference(name="np", uid="00000000-0000-0000-0000-000000000000"))
    policy["metadata"].pop("ownerReferences")  # no such owner here; the shape is what is checked
    result = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(policy))
    assert json.loads(result.stdout)["spec"]["ingress"][0]["from"][1] == peers[0]


def test_profiler_job_pod_is_admitted_under_restricted(cluster, restricted):
    cluster.kubectl("create", "serviceaccount", "slm-profiler", "-n", restricted)
    request = ProfileRequest(model="facebook/opt-125m", gpu_product="NVIDIA-L4", workload=Workload(64, 16))
    job = build_profiler_job(name="prof", namespace=restricted, request=request, image="slm-profiler:test",
                             result_configmap="prof", service_account="slm-profiler", gpu_product="NVIDIA-L4")
    cluster.apply(job)

    def pod() -> dict[str, Any] | None:
        items = get_json(cluster, "pods", "-n", restricted, "-l", "job-name=prof")["items"]
        return items[0] if items else None

    created = wait_for(pod, timeout=60, message="the profiler Job's pod")
    assert pod_security_refusals(cluster, restricted) == []
    resources = created["spec"]["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "1" and resources["requests"]["memory"] == "8Gi"
    assert created["status"].get("qosClass") == "Burstable"
    # The negative control for this pod: without the seccomp profile it is refused.
    weakened = copy.deepcopy(job["spec"]["template"]["spec"])
    del weakened["securityContext"]["seccompProfile"]
    del weakened["containers"][0]["securityContext"]["seccompProfile"]
    code, out = dry_run_pod(cluster, restricted, weakened)
    assert code != 0 and "seccompProfile" in out, out

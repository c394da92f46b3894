"""Faults on the real control plane, each converging with no duplicate and no orphaned child
(issue 10's fault matrix; the rest of it lives beside the feature it hurts: test_moves.py for nodes
deleted, test_leader_election.py for SIGKILL take-over, test_profiler_placement.py for profiler
Jobs failed and deleted).

Here: a cluster policy the operator cannot argue with, and then can — a ValidatingAdmissionPolicy
that denies one service's StatefulSets (422: Failed with the policy's message, healed by the
``retry-rejected`` timer once it is lifted) and a ResourceQuota that allows no StatefulSet (403:
Degraded, retried, Ready once raised). The operator runs with a 2 s retry interval, so the timers
that heal run within seconds.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.operator_harness import OperatorProcess, apply_yaml, get_json, slms, wait_for, wait_phase
from tests.integration.test_operator_lifecycle import children, ready_pods, static_service

pytestmark = pytest.mark.integration

RETRY_SECONDS = 2


@pytest.fixture
def fast_operator(operator: OperatorProcess, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    """The operator with a 2 s retry interval (the rejected-apply timer: every 20 s), in place of the
    session's one for this test."""
    operator.stop()  # NB: one operator at a time: two would both plan the same GPUs
    fast = OperatorProcess(kubeconfig=operator.kubeconfig, work_dir=tmp_path,
                           extra_env={"SLM_RETRY_SECONDS": str(RETRY_SECONDS)})
    fast.start()
    try:
        yield fast
    finally:
        fast.stop()
        operator.start()


def progressing(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Progressing")


def converged(cluster, namespace: str, name: str, *, replicas: int) -> None:
    """Ready, one StatefulSet, ``replicas`` Ready pods and nothing else of the service."""
    ready = wait_for(lambda: (obj := slms(cluster, namespace, name)).get("status", {}).get("phase") == "Ready" and obj,
                     timeout=120, interval=0.5, message=f"{name} Ready again")
    assert ready["status"]["placement"]["readyReplicas"] == replicas
    assert [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", name)] == [f"{name}-g0"]
    ready_pods(cluster, namespace, name, replicas)


def test_an_admission_policy_that_denies_a_group_fails_the_service_until_it_is_lifted(
        cluster, fast_operator, namespace) -> None:
    policy = f"deny-{namespace}"
    message = f"no StatefulSet of service 'denied' in {namespace} (policy {policy})"
    apply_yaml(cluster, namespace, {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE", "UPDATE"],
                                                         "resources": ["statefulsets"]}]},
                 "validations": [{"expression": "!has(object.metadata.labels) || "
                                                "object.metadata.labels[?'slm.pareto.dev/service'].orValue('') "
                                                "!= 'denied'",
                                  "message": message}]}})
    apply_yaml(cluster, namespace, {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}}}}})
    try:
        # NB: the API server loads a new policy a moment later: wait until it really denies.
        probe = {"apiVersion": "apps/v1", "kind": "StatefulSet",
                 "metadata": {"name": "probe", "labels": {"slm.pareto.dev/service": "denied"}},
                 "spec": {"selector": {"matchLabels": {"a": "b"}}, "serviceName": "probe",
                          "template": {"metadata": {"labels": {"a": "b"}},
                                       "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
        wait_for(lambda: message in cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                                                    input=yaml.safe_dump(probe), check=False).stderr,
                 timeout=30, interval=0.5, message="the admission policy to deny")

        apply_yaml(cluster, namespace, static_service("denied"))
        failed = wait_phase(cluster, namespace, "denied", ("Failed",), operator=fast_operator)
        assert progressing(failed)["reason"] == "ApplyFailed"
        assert message in failed["status"]["message"] and "422" in failed["status"]["message"]
        assert children(cluster, namespace, "statefulsets", "denied") == []
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", policy, "--ignore-not-found")
        cluster.kubectl("delete", "validatingadmissionpolicy", policy, "--ignore-not-found")

    # Lifted: the retry-rejected timer (every 10 retry intervals) applies again, nothing twice.
    converged(cluster, namespace, "denied", replicas=2)


def test_a_quota_that_allows_no_statefulset_degrades_the_service_until_it_is_raised(
        cluster, fast_operator, namespace) -> None:
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "groups"},
             "spec": {"hard": {"count/statefulsets.apps": "0"}}}
    apply_yaml(cluster, namespace, quota)
    # NB: quota admission needs the quota controller's first count of the namespace.
    wait_for(lambda: get_json(cluster, "resourcequota", "groups", "-n", namespace).get("status", {}).get("hard"),
             timeout=30, interval=0.5, message="the quota's status")

    apply_yaml(cluster, namespace, static_service("quota"))
    degraded = wait_phase(cluster, namespace, "quota", ("Degraded",), operator=fast_operator)
    assert progressing(degraded)["reason"] == "Forbidden"
    assert "exceeded quota" in degraded["status"]["message"] and "403" in degraded["status"]["message"]
    assert children(cluster, namespace, "statefulsets", "quota") == []

    quota["spec"]["hard"]["count/statefulsets.apps"] = "5"
    apply_yaml(cluster, namespace, quota)
    converged(cluster, namespace, "quota", replicas=2)

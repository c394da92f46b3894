"""Faults on the real control plane, each converging with no duplicate and no orphaned child
(issue 10's fault matrix; the rest of it lives beside the feature it hurts: test_moves.py for nodes
deleted, test_leader_election.py for SIGKILL take-over, test_profiler_placement.py for profiler
Jobs failed and deleted).

Here: a cluster policy the operator cannot argue with, and then can — a ValidatingAdmissionPolicy
that denies one service's StatefulSets (422: Failed with the policy's message, healed by the
``retry-rejected`` timer once it is lifted) and a ResourceQuota that allows no StatefulSet (403:
Degraded, retried, Ready once raised); a service deleted while the operator is down (its owned
children go with it, nothing comes back); the operator SIGKILLed during a scale-out (each group
added once); twenty services at once on four GPUs (four placed, the rest Pending without a group,
placed as GPUs free, never more pods than GPUs); a service deleted while it is being profiled; the
operator SIGKILLed while it profiles (the local runner's measurement dies with it and starts again).
The operator runs with a 2 s retry interval, so the timers that heal run within seconds.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.operator_harness import (
    OperatorProcess,
    apply_yaml,
    get_json,
    operator_with,
    slms,
    wait_for,
    wait_phase,
)
from tests.integration.test_metrics import sample, scrape
from tests.integration.test_operator_lifecycle import children, ready_pods, static_service

pytestmark = pytest.mark.integration

RETRY_SECONDS = 2


@pytest.fixture
def fast_operator(operator: OperatorProcess, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    """The operator with a 2 s retry interval (the rejected-apply timer: every 20 s), in place of the
    session's one for this test."""
    with operator_with(operator, work_dir=tmp_path, env={"SLM_RETRY_SECONDS": str(RETRY_SECONDS)}) as fast:
        yield fast


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


def test_a_service_deleted_while_the_operator_is_down_leaves_nothing_and_is_not_brought_back(
        cluster, fast_operator, namespace) -> None:
    apply_yaml(cluster, namespace, static_service("gone", sharing="time-slicing"))
    wait_phase(cluster, namespace, "gone", ("Ready",), operator=fast_operator)
    fast_operator.kill()
    # NB: no finalizer of ours holds it (every child is owned: the garbage collector removes them).
    cluster.kubectl("delete", "slmservice", "gone", "-n", namespace, "--timeout=30s")
    for kind in ("statefulsets", "services", "pods"):
        wait_for(lambda k=kind: not children(cluster, namespace, k, "gone"), timeout=90, interval=0.5,
                 message=f"{kind} of the deleted SLMService garbage-collected")
    fast_operator.start()
    # The operator back, with its resume handlers and timers: it recreates nothing of the service.
    apply_yaml(cluster, namespace, static_service("after", sharing="time-slicing"))
    wait_phase(cluster, namespace, "after", ("Ready",), operator=fast_operator)
    for kind in ("statefulsets", "services", "pods"):
        assert not children(cluster, namespace, kind, "gone"), kind


def test_the_operator_killed_during_a_scale_out_adds_each_group_once(cluster, fast_operator, namespace) -> None:
    apply_yaml(cluster, namespace, static_service("out", sharing="time-slicing"))
    wait_phase(cluster, namespace, "out", ("Ready",), operator=fast_operator)
    cluster.kubectl("patch", "slmservice", "out", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"scale": {"gpus": 3}}}')
    wait_for(lambda: len(children(cluster, namespace, "statefulsets", "out")) > 1, timeout=60, interval=0.05,
             message="the scale-out under way")
    fast_operator.kill()
    fast_operator.start()
    obj = wait_for(lambda: (o := slms(cluster, namespace, "out"))["status"].get("placement", {}).get("ready") == "6/6"
                   and o, timeout=120, interval=0.5, message="6/6 Ready after the restart")
    assert obj["status"]["phase"] == "Ready"
    sets = sorted(s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "out"))
    assert sets == ["out-g0", "out-g1", "out-g2"]
    ready_pods(cluster, namespace, "out", 6)


def l4_service(name: str) -> dict[str, Any]:
    svc = static_service(name, sharing="exclusive")
    svc["spec"]["gpu"]["product"] = "NVIDIA-L4"
    svc["spec"]["profiling"]["static"] |= {"replicasPerGPU": 1, "memoryPerReplicaGiB": 4, "batchSize": 48}
    return svc


def l4_pods(cluster) -> list[dict[str, Any]]:
    return [p for p in get_json(cluster, "pods", "-A", "--field-selector", "spec.nodeName=gpu-l4-0")["items"]
            if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def test_twenty_services_at_once_on_four_gpus_take_four_and_the_rest_follow_as_gpus_free(
        cluster, fast_operator, namespace) -> None:
    # The stock node config has one node of 4 unshared L4s; earlier tests' pods there are going.
    wait_for(lambda: not l4_pods(cluster), timeout=90, interval=0.5, message="the L4 node free")
    names = [f"burst-{i:02d}" for i in range(20)]
    for name in names:
        apply_yaml(cluster, namespace, l4_service(name))

    def settled() -> dict[str, list[str]] | None:
        assert len(l4_pods(cluster)) <= 4, "more pods than GPUs on the L4 node"
        by_phase: dict[str, list[str]] = {}
        for name in names:
            by_phase.setdefault(slms(cluster, namespace, name).get("status", {}).get("phase", ""), []).append(name)
        return by_phase if sorted(by_phase) == ["Pending", "Ready"] and len(by_phase["Ready"]) == 4 else None
    by_phase = wait_for(settled, timeout=120, interval=0.5, message="4 Ready, 16 Pending")
    for name in by_phase["Pending"]:
        obj = slms(cluster, namespace, name)
        planned = next(c for c in obj["status"]["conditions"] if c["type"] == "Planned")
        assert planned["reason"] == "InsufficientSlots", planned
        assert children(cluster, namespace, "statefulsets", name) == [], f"{name} has a group but no GPU"

    # Settled, the waiting services are not polled: the operator makes no API request at all (once
    # earlier tests' services, in namespaces still terminating, are gone: some of them are polled).
    wait_for(lambda: {s["metadata"]["namespace"] for s in get_json(cluster, "slms", "-A")["items"]} == {namespace},
             timeout=120, interval=1, message="no earlier test's SLMService left")
    time.sleep(1)  # NB: the last of their events handled
    before = api_requests(fast_operator)
    time.sleep(RETRY_SECONDS * 5)
    assert api_requests(fast_operator) == before, "the operator polled while nothing changed"

    # Two services go: two of the waiting ones take their GPUs, and never more than four run.
    logged = len(fast_operator.log_tail(lines=10**6).splitlines())
    for name in by_phase["Ready"][:2]:
        cluster.kubectl("delete", "slmservice", name, "-n", namespace, "--timeout=60s")
    waiting = set(by_phase["Pending"])

    def two_more() -> list[str] | None:
        assert len(l4_pods(cluster)) <= 4, "more pods than GPUs on the L4 node"
        ready = [n for n in waiting if slms(cluster, namespace, n).get("status", {}).get("phase") == "Ready"]
        return ready if len(ready) == 2 else None
    wait_for(two_more, timeout=120, interval=0.5, message="two waiting services placed on the freed GPUs")
    # ... woken by the freed GPUs' events, not by a timer (none polls a service that waits for GPUs).
    woken = [line for line in fast_operator.log_tail(lines=10**6).splitlines()[logged:]
             if "GPU capacity freed: reconciled" in line]
    assert woken, "the waiting services were not woken by the freed GPUs"
    statefulsets = get_json(cluster, "statefulsets", "-n", namespace)["items"]
    assert len(statefulsets) == 4 and all(s["spec"]["replicas"] == 1 for s in statefulsets)


def api_requests(operator: OperatorProcess) -> float:
    """Every API request the operator made (its ``kube`` wrapper's counter), all verbs and codes."""
    return sum(value for (name, _), value in scrape(operator).items()
               if name == "slm_operator_api_requests_total")


def measured_service(name: str, *, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A service the local (simulated) runner measures; a workload of its own per test, so no other
    test's cached profile is reused."""
    return {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": name},
            "spec": {"model": "facebook/opt-125m", "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "sharing": "mps"},
                     "workload": {"inputTokens": input_tokens, "outputTokens": output_tokens},
                     "profiling": {"mode": "auto", "batchSizes": [1, 4, 16]}, "scale": {"gpus": 1}}}


def test_a_service_deleted_while_profiling_gets_no_children_and_its_measurement_is_not_lost(
        cluster, fast_operator, namespace) -> None:
    measured = measured_service("early", input_tokens=112, output_tokens=20)
    apply_yaml(cluster, namespace, measured)
    wait_phase(cluster, namespace, "early", ("Profiling",), operator=fast_operator)
    cluster.kubectl("delete", "slmservice", "early", "-n", namespace, "--timeout=30s")
    # The same spec again: it finds the measurement (finished meanwhile, or still running) and serves.
    measured["metadata"]["name"] = "again"
    apply_yaml(cluster, namespace, measured)
    obj = wait_phase(cluster, namespace, "again", ("Ready",), timeout=240, operator=fast_operator)
    assert obj["status"]["profile"]["source"] == "measured"
    assert children(cluster, namespace, "statefulsets", "early") == []
    assert [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "again")] == ["again-g0"]
    # One measurement for both (this operator started with the test): the first was not thrown away.
    started = sample(scrape(fast_operator), "slm_operator_profile_runs_total", source="measured", result="started")
    assert started == 1


def test_the_operator_killed_while_profiling_measures_again_and_serves(cluster, fast_operator, namespace) -> None:
    svc = measured_service("killed", input_tokens=104, output_tokens=28)
    apply_yaml(cluster, namespace, svc)
    wait_phase(cluster, namespace, "killed", ("Profiling",), operator=fast_operator)
    fast_operator.kill()
    fast_operator.start()
    obj = wait_phase(cluster, namespace, "killed", ("Ready",), timeout=240, operator=fast_operator)
    assert obj["status"]["profile"]["source"] == "measured" and "progress" not in obj["status"]["profile"]
    assert [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "killed")] == ["killed-g0"]
    ready_pods(cluster, namespace, "killed", obj["status"]["placement"]["totalReplicas"])

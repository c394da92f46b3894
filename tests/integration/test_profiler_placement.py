"""Profiling where the service will run, with the chart's default runner (``job``) on the stock
``hack/gpu-nodes.yaml`` (H100s only MPS, time-sliced or DRA; an unshared L4).

KWOK runs no containers: the scheduler really places the profiler pod (allocating a DRA device for
its claim), KWOK then marks it done, and the test plays the profiler's part by writing the result
ConfigMap with the slm-profiler ServiceAccount's credentials, as test_profiler_job does.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from tests.integration.operator_harness import (
    OPERATOR_NAMESPACE,
    ROOT,
    OperatorProcess,
    apply_yaml,
    get_json,
    serviceaccount_kubeconfig,
    slms,
    wait_phase,
)
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration

H100 = "NVIDIA-H100-80GB-HBM3"
AUTO_SAMPLE = ROOT / "manifests" / "samples" / "opt-1.3b-auto.yaml"


def _job_operator(operator: OperatorProcess, tmp_path: pathlib.Path, **env: str) -> OperatorProcess:
    operator.stop()  # one operator at a time: this one runs profiling as Kubernetes Jobs
    job_operator = OperatorProcess(kubeconfig=operator.kubeconfig, work_dir=tmp_path,
                                   extra_env={"SLM_PROFILER_RUNNER": "job", **env})
    job_operator.start()
    return job_operator


def _job_name(cluster, namespace: str, name: str, operator: OperatorProcess) -> str:
    """The profiler Job the service's Profiling status names (other tests' services may have Jobs too)."""
    profiling = wait_phase(cluster, namespace, name, ("Profiling",), operator=operator)
    return profiling["status"]["profile"]["progress"].split(f"{OPERATOR_NAMESPACE}/", 1)[1].split()[0]


def _write_result(cluster, tmp_path: pathlib.Path, configmap: str, *, batch_size: int) -> None:
    """What the profiler does at the end of its sweep, with its own ServiceAccount."""
    measured = {"source": "measured", "engine": "vllm", "gpuProduct": H100, "batchSize": batch_size,
                "tokensPerSecondPerReplica": 9000.0, "tokensPerSecondPerGPU": 15000.0, "replicasToSaturate": 2,
                "memoryPerReplicaGiB": 8.0, "explanation": "measured by the test in the Job's place"}
    as_profiler = serviceaccount_kubeconfig(cluster, account="slm-profiler", namespace=OPERATOR_NAMESPACE,
                                            path=tmp_path / "profiler-kubeconfig")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": configmap, "namespace": OPERATOR_NAMESPACE},
          "data": {"profile.json": json.dumps(measured)}}
    cluster.kubectl("--kubeconfig", str(as_profiler), "apply", "-f", "-", input=yaml.safe_dump(cm))


def _profiled(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Profiled")


def test_the_auto_sample_profiles_on_a_whole_dra_device_and_becomes_ready(cluster, operator, namespace, tmp_path):
    job_operator = _job_operator(operator, tmp_path)
    try:
        sample = yaml.safe_load(AUTO_SAMPLE.read_text())  # as a user applies it: product H100, sharing auto
        apply_yaml(cluster, namespace, sample)
        name = sample["metadata"]["name"]
        job_name = _job_name(cluster, namespace, name, job_operator)
        job = wait_for(lambda: get_json(cluster, "job", job_name, "-n", OPERATOR_NAMESPACE), timeout=30,
                       message=f"profiler Job {job_name}")
        pod_spec = job["spec"]["template"]["spec"]
        # Every H100 node is shared: the Job claims one whole DRA device, not an unshared nvidia.com/gpu.
        assert pod_spec["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": job_name}]
        assert "nvidia.com/gpu" not in pod_spec["containers"][0]["resources"].get("limits", {})
        template = get_json(cluster, "resourceclaimtemplate", job_name, "-n", OPERATOR_NAMESPACE)
        assert template["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        # The scheduler places it on the DRA node (KWOK binds it and, having no container, ends it).
        placed = wait_for(lambda: [p for p in get_json(cluster, "pods", "-n", OPERATOR_NAMESPACE, "-l",
                                                       f"batch.kubernetes.io/job-name={job_name}")["items"]
                                   if p["spec"].get("nodeName")],
                          timeout=60, message=f"a scheduled pod of profiler Job {job_name}")
        assert placed[0]["spec"]["nodeName"] == "gpu-h100-dra-0"

        _write_result(cluster, tmp_path, job_name, batch_size=96)
        obj = wait_phase(cluster, namespace, name, ("Ready",), timeout=90, operator=job_operator)
        assert obj["status"]["profile"]["source"] == "measured" and obj["status"]["profile"]["batchSize"] == 96
        assert _profiled(obj)["reason"] == "ProfileMeasured"
        assert obj["status"]["placement"]["gpus"] == sample["spec"]["scale"]["gpus"]
    finally:
        job_operator.stop()
        operator.start()


def test_an_unschedulable_profiler_falls_back_then_a_failed_job_deleted_profiles_again(
        cluster, operator, namespace, tmp_path):
    # A profiling pool no node has: the profiler pod stays unschedulable.
    job_operator = _job_operator(operator, tmp_path, SLM_PROFILER_NODE_SELECTOR='{"example.com/pool": "profiling"}',
                                 SLM_PROFILER_UNSCHEDULABLE_SECONDS="12")
    try:
        # (b) Falls back to the estimate within the (shortened) timeout, and says why.
        apply_yaml(cluster, namespace, {
            "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": "nowhere"},
            "spec": {"model": "facebook/opt-125m", "gpu": {"product": H100},
                     "workload": {"inputTokens": 111, "outputTokens": 37}, "scale": {"gpus": 1}}})
        job_name = _job_name(cluster, namespace, "nowhere", job_operator)
        obj = wait_phase(cluster, namespace, "nowhere", ("Ready",), timeout=90, operator=job_operator)
        profiled = _profiled(obj)
        assert obj["status"]["profile"]["source"] == "estimated"
        assert profiled["reason"] == "ProfilerUnschedulable", profiled
        assert "didn't match Pod's node affinity/selector" in profiled["message"]
        assert "profiler.nodeSelector" in profiled["message"]
        assert f"kubectl delete configmap -n {OPERATOR_NAMESPACE} {job_name}" in profiled["message"]
        note = get_json(cluster, "configmap", job_name, "-n", OPERATOR_NAMESPACE)
        assert json.loads(note["data"]["fallback.json"])["reason"] == "ProfilerUnschedulable"
        wait_for(lambda: not get_json(cluster, "jobs", "-n", OPERATOR_NAMESPACE, "--field-selector",
                                      f"metadata.name={job_name}")["items"],
                 timeout=30, message="the unschedulable profiler Job deleted")

        # (c) A failed Job fails the service with its reason; deleting it profiles again, no spec edit.
        apply_yaml(cluster, namespace, {
            "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": "flaky"},
            "spec": {"model": "facebook/opt-125m", "gpu": {"product": H100},
                     "workload": {"inputTokens": 222, "outputTokens": 44}, "scale": {"gpus": 1}}})
        job_name = _job_name(cluster, namespace, "flaky", job_operator)
        # NB: the Job controller fails a Job past its deadline: the failure a real sweep ends in.
        cluster.kubectl("patch", "job", job_name, "-n", OPERATOR_NAMESPACE, "--type=merge",
                        "-p", '{"spec": {"activeDeadlineSeconds": 1}}')
        failed = wait_phase(cluster, namespace, "flaky", ("Failed",), timeout=60, operator=job_operator)
        assert _profiled(failed)["reason"] == "ProfilingFailed"
        assert "DeadlineExceeded" in failed["status"]["message"]
        assert f"kubectl delete job -n {OPERATOR_NAMESPACE} {job_name}" in failed["status"]["message"]
        first_uid = get_json(cluster, "job", job_name, "-n", OPERATOR_NAMESPACE)["metadata"]["uid"]

        cluster.kubectl("delete", "job", job_name, "-n", OPERATOR_NAMESPACE, "--wait=true")
        # NB: not wait_phase, which stops at a Failed phase: this one is Failed until the timer looks.
        wait_for(lambda: slms(cluster, namespace, "flaky")["status"]["phase"] == "Profiling", timeout=60,
                 message="flaky back in Profiling once its failed Job is deleted")
        again = wait_for(lambda: get_json(cluster, "job", job_name, "-n", OPERATOR_NAMESPACE), timeout=30,
                         message=f"a new profiler Job {job_name}")
        assert again["metadata"]["uid"] != first_uid
        _write_result(cluster, tmp_path, job_name, batch_size=80)
        obj = wait_phase(cluster, namespace, "flaky", ("Ready",), timeout=60, operator=job_operator)
        assert obj["status"]["profile"]["source"] == "measured" and obj["status"]["profile"]["batchSize"] == 80
    finally:
        job_operator.stop()
        operator.start()


def test_a_profiler_whose_gpus_are_all_taken_falls_back_with_the_scheduler_s_message(
        cluster, operator, namespace, tmp_path):
    """The reported symptom, on the operator's own choice: every L4 (the unshared product) is held,
    so the profiler pod is unschedulable ("Insufficient nvidia.com/gpu"); the estimate stands in."""
    l4 = "NVIDIA-L4"
    free = int(get_json(cluster, "node", "gpu-l4-0")["status"]["allocatable"]["nvidia.com/gpu"])
    apply_yaml(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"},
        "spec": {"nodeSelector": {"nvidia.com/gpu.product": l4},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "containers": [{"name": "hog", "image": "hog:none",
                                 "resources": {"limits": {"nvidia.com/gpu": free}}}]}})
    wait_for(lambda: get_json(cluster, "pod", "hog", "-n", namespace)["spec"].get("nodeName"), timeout=60,
             message="a pod holding every L4")
    job_operator = _job_operator(operator, tmp_path, SLM_PROFILER_UNSCHEDULABLE_SECONDS="12")
    try:
        apply_yaml(cluster, namespace, {
            "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": "l4"},
            "spec": {"model": "facebook/opt-125m", "gpu": {"product": l4},
                     "workload": {"inputTokens": 123, "outputTokens": 45}, "scale": {"gpus": 1}}})
        job_name = _job_name(cluster, namespace, "l4", job_operator)
        job = get_json(cluster, "job", job_name, "-n", OPERATOR_NAMESPACE)
        assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}

        def fell_back() -> dict[str, Any] | None:
            obj = slms(cluster, namespace, "l4")
            conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}
            return obj if conditions.get("Profiled", {}).get("reason") == "ProfilerUnschedulable" else None
        obj = wait_for(fell_back, timeout=60, message="l4 to fall back to the estimate")
        assert obj["status"]["profile"]["source"] == "estimated"
        assert "Insufficient nvidia.com/gpu" in _profiled(obj)["message"]
        assert obj["status"]["phase"] == "Pending"  # and no GPU for the service either, until one frees

        cluster.kubectl("delete", "pod", "hog", "-n", namespace, "--wait=true")
        ready = wait_phase(cluster, namespace, "l4", ("Ready",), timeout=90, operator=job_operator)
        assert ready["status"]["profile"]["source"] == "estimated"
        assert _profiled(ready)["reason"] == "ProfilerUnschedulable"
    finally:
        job_operator.stop()
        operator.start()

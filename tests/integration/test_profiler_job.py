"""The Job runner: the operator starts a profiler Job; the Job (as the slm-profiler ServiceAccount)
writes its result ConfigMap; the operator plans from it. KWOK runs no containers, so the test plays
the Job's part with the Job's own credentials — which proves the profiler's RBAC is enough."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.operator_harness import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    apply_yaml,
    get_json,
    serviceaccount_kubeconfig,
    wait_phase,
)
from tests.integration.test_operator_lifecycle import H100
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration


def test_profiler_job_result_configmap_drives_the_plan(cluster, operator, namespace, tmp_path):
    operator.stop()  # one operator at a time: this one runs profiling as Kubernetes Jobs
    job_operator = OperatorProcess(kubeconfig=operator.kubeconfig, work_dir=tmp_path,
                                   extra_env={"SLM_PROFILER_RUNNER": "job"})
    job_operator.start()
    try:
        apply_yaml(cluster, namespace, {
            "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": "jobbed"},
            "spec": {"model": "facebook/opt-125m", "gpu": {"product": H100, "sharing": "mps"},
                     "workload": {"inputTokens": 100, "outputTokens": 50}, "scale": {"gpus": 1}}})
        profiling = wait_phase(cluster, namespace, "jobbed", ("Profiling",), operator=job_operator)
        # NB: other tests' services (in namespaces still terminating) may start Jobs of their own;
        # ours is the one the status names.
        job_name = profiling["status"]["profile"]["progress"].split(f"{OPERATOR_NAMESPACE}/", 1)[1].split()[0]
        job = wait_for(lambda: get_json(cluster, "job", job_name, "-n", OPERATOR_NAMESPACE), timeout=30,
                       message=f"profiler Job {job_name}")
        assert job["metadata"]["labels"]["slm.pareto.dev/role"] == "profiler"
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "slm-profiler"
        # NB: the spec asks for MPS: all 4 slots of one GPU of an MPS node (replicas 4), not one slot.
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (4, "4")
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert {"key": "nvidia.com/gpu.replicas", "operator": "In", "values": ["4"]} in terms[0]["matchExpressions"]
        configmap = job["metadata"]["name"]
        assert f"{OPERATOR_NAMESPACE}/{configmap}" in pod["containers"][0]["args"]

        measured = {"source": "measured", "engine": "vllm", "gpuProduct": H100, "batchSize": 96,
                    "tokensPerSecondPerReplica": 9000.0, "tokensPerSecondPerGPU": 15000.0, "replicasToSaturate": 2,
                    "memoryPerReplicaGiB": 8.0, "explanation": "measured by the test in the Job's place"}
        as_profiler = serviceaccount_kubeconfig(cluster, account="slm-profiler", namespace=OPERATOR_NAMESPACE,
                                                path=tmp_path / "profiler-kubeconfig")
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": configmap, "namespace": OPERATOR_NAMESPACE},
              "data": {"profile.json": json.dumps(measured)}}
        cluster.kubectl("--kubeconfig", str(as_profiler), "apply", "-f", "-", input=yaml.safe_dump(cm))

        obj = wait_phase(cluster, namespace, "jobbed", ("Ready",), timeout=60, operator=job_operator)
        assert obj["status"]["profile"]["batchSize"] == 96
        assert obj["status"]["profile"]["profileRef"] == f"configmap/{OPERATOR_NAMESPACE}/{configmap}"
        assert obj["status"]["placement"]["replicasPerGPU"] == 2
    finally:
        job_operator.stop()
        operator.start()

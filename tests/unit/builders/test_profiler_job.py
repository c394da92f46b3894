"""The profiler Job's pod: restricted Pod Security, requests (not BestEffort), its token kept."""

from slm_operator.builders.profiler_job import build_profiler_job
from slm_operator.config import OperatorConfig
from slm_operator.profiling.types import ProfileRequest, Workload
from tests.unit.builders.podsecurity import qos_class, restricted_violations

REQUEST = ProfileRequest(model="facebook/opt-125m", gpu_product="NVIDIA-L4", workload=Workload(64, 16))


def _pod(**kwargs):
    job = build_profiler_job(name="p", namespace="slm-system", request=REQUEST, image="img", result_configmap="p",
                             service_account="slm-profiler", gpu_product="NVIDIA-L4", **kwargs)
    return job["spec"]["template"]["spec"]


def test_profiler_pod_passes_restricted_and_keeps_its_token():
    pod = _pod()
    assert restricted_violations(pod) == []
    (container,) = pod["containers"]
    assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 1000
    # NB: it writes its result ConfigMap with its ServiceAccount's token.
    assert pod["automountServiceAccountToken"] is True


def test_profiler_pod_requests_cpu_and_memory_and_is_burstable():
    pod = _pod()
    (container,) = pod["containers"]
    assert container["resources"]["requests"] == {"nvidia.com/gpu": 1, "cpu": "1", "memory": "8Gi"}
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}  # no cap: a sweep bursts
    assert qos_class(pod) == "Burstable"


def test_profiler_requests_come_from_the_operator_config():
    cfg = OperatorConfig.from_env({"SLM_PROFILER_CPU_REQUEST": "6", "SLM_PROFILER_MEMORY_REQUEST": "32Gi"})
    pod = _pod(cpu_request=cfg.profiler_cpu_request, memory_request=cfg.profiler_memory_request)
    assert pod["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": 1, "cpu": "6", "memory": "32Gi"}
    defaults = OperatorConfig.from_env({})
    assert (defaults.profiler_cpu_request, defaults.profiler_memory_request) == ("1", "8Gi")


def test_qos_helper_tells_the_classes_apart():
    assert qos_class({"containers": [{"resources": {"limits": {"nvidia.com/gpu": 1}}}]}) == "BestEffort"
    both = {"cpu": "1", "memory": "1Gi"}
    assert qos_class({"containers": [{"resources": {"limits": both, "requests": both}}]}) == "Guaranteed"
    assert qos_class({"containers": [{"resources": {"requests": both}}]}) == "Burstable"

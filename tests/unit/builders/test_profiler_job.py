"""The profiler Job's pod: restricted Pod Security, requests (not BestEffort), its token kept; which
whole GPU it asks for; when it counts as unable to run."""

import datetime
import json

import pytest

from slm_operator.builders.profiler_job import (
    LOG_TAIL_CHARS,
    DedicatedPool,
    build_profiler_claim_template,
    build_profiler_job,
    choose_profiler_gpu,
    failure_text,
    profiler_stall,
)
from slm_operator.config import ConfigError, OperatorConfig
from slm_operator.planning.inventory import build_inventory
from slm_operator.profiling.types import ProfileRequest, Workload
from tests.unit.builders.podsecurity import qos_class, restricted_violations
from tests.unit.factories import H100, dra_slice, gpu_pod, node

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


# --- Which GPU a profiler Job asks for ----------------------------------------------------------------

STOCK_H100 = [node("gpu-h100-0", sharing="mps", replicas=4), node("gpu-h100-1", sharing="time-slicing", replicas=4),
              node("gpu-h100-dra-0", sharing="dra")]


def _pools(nodes, *, pods=(), slices=None):
    slices = [dra_slice(n["metadata"]["name"]) for n in nodes
              if "nvidia.com/gpu.sharing-strategy" not in n["metadata"]["labels"]] if slices is None else slices
    return build_inventory(nodes=nodes, pods=pods, resource_slices=slices).for_product(H100)


def test_an_unshared_gpu_is_preferred_where_one_exists():
    gpu = choose_profiler_gpu(pools=_pools([*STOCK_H100, node("gpu-h100-2")]))
    assert gpu.kind == "whole" and gpu.resource_name == "nvidia.com/gpu" and gpu.count == 1
    pod = _pod(gpu=gpu)
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.sharing-strategy", "operator": "NotIn",
                                         "values": ["mps", "time-slicing"]}]


def test_on_all_shared_nodes_a_whole_dra_device_is_claimed_through_a_template():
    gpu = choose_profiler_gpu(pools=_pools(STOCK_H100))
    assert gpu.kind == "dra" and gpu.device_class == "gpu.nvidia.com"
    job = build_profiler_job(name="p", namespace="slm-system", request=REQUEST, image="img", result_configmap="p",
                             service_account="slm-profiler", gpu_product=H100, gpu=gpu)
    pod = job["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "p"}]
    (container,) = pod["containers"]
    assert container["resources"]["claims"] == [{"name": "gpu"}]
    assert "limits" not in container["resources"] and "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "affinity" not in pod and pod["nodeSelector"] == {"nvidia.com/gpu.product": H100}
    assert "whole DRA device" in job["metadata"]["annotations"]["slm.pareto.dev/profiler-gpu"]
    template = build_profiler_claim_template(
        name="p", namespace="slm-system", gpu_product=H100,
        owner={"apiVersion": "batch/v1", "kind": "Job", "name": "p", "uid": "job-uid"})
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"]["allocationMode"] == "ExactCount" and request["exactly"]["count"] == 1
    assert H100 in request["exactly"]["selectors"][0]["cel"]["expression"]
    assert "config" not in template["spec"]["spec"]["devices"]  # no MPS config: the device is the pod's alone
    assert template["metadata"]["ownerReferences"][0]["uid"] == "job-uid"  # deleted with the Job
    # The spec's gpu.deviceClassName, where it names another class.
    assert choose_profiler_gpu(pools=_pools(STOCK_H100), device_class="mig.nvidia.com").device_class == "mig.nvidia.com"
    other = build_profiler_claim_template(name="p", namespace="slm-system", gpu_product=H100,
                                          device_class="mig.nvidia.com")
    assert other["spec"]["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == "mig.nvidia.com"


def test_the_spec_s_sharing_or_a_free_gpu_picks_all_slots_of_one_shared_gpu():
    gpu = choose_profiler_gpu(pools=_pools(STOCK_H100), preferred_sharing="mps")
    assert (gpu.kind, gpu.resource_name, gpu.count, gpu.sharing) == ("slots", "nvidia.com/gpu", 4, "mps")
    pod = _pod(gpu=gpu)
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4}
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.replicas", "operator": "In", "values": ["4"]} in term["matchExpressions"]
    assert {"key": "nvidia.com/gpu.sharing-strategy", "operator": "In", "values": ["mps"]} in term["matchExpressions"]
    # Every DRA device allocated: the MPS node, which still has a whole GPU's slots free, wins.
    busy = _pools(STOCK_H100, slices=[])
    assert [p.sharing for p in busy] == ["mps", "time-slicing"]
    assert choose_profiler_gpu(pools=busy).kind == "slots"
    # Fewer free slots than one GPU has on the MPS node: the time-sliced one.
    full = _pools(STOCK_H100, slices=[], pods=[gpu_pod("gpu-h100-0", slots=30)])
    assert choose_profiler_gpu(pools=full).sharing == "time-slicing"


def test_the_chart_s_profiling_pool_wins_and_without_any_pool_an_unshared_gpu_is_asked():
    pool = DedicatedPool(node_selector={"pool": "profiling"}, tolerations=({"key": "profiling", "operator": "Exists"},),
                         resource_name="nvidia.com/gpu.shared", count=2)
    gpu = choose_profiler_gpu(pools=_pools(STOCK_H100), dedicated=pool)
    pod = _pod(gpu=gpu)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4", "pool": "profiling"}
    assert {"key": "profiling", "operator": "Exists"} in pod["tolerations"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu.shared": 2}
    assert "affinity" not in pod
    assert choose_profiler_gpu(pools=[]).kind == "whole"


def test_config_reads_the_profiling_pool_and_names_the_bad_field():
    cfg = OperatorConfig.from_env({"SLM_PROFILER_NODE_SELECTOR": '{"pool": "profiling"}', "SLM_PROFILER_GPU_COUNT": "4",
                                   "SLM_PROFILER_TOLERATIONS": '[{"key": "p", "operator": "Exists"}]',
                                   "SLM_PROFILER_UNSCHEDULABLE_SECONDS": "30"})
    assert cfg.profiler_pool == DedicatedPool(node_selector={"pool": "profiling"}, count=4,
                                              tolerations=({"key": "p", "operator": "Exists"},))
    assert cfg.profiler_unschedulable_seconds == 30
    # What the chart sets by default: no pool, ten minutes.
    defaults = OperatorConfig.from_env({"SLM_PROFILER_NODE_SELECTOR": "{}", "SLM_PROFILER_TOLERATIONS": "[]",
                                        "SLM_PROFILER_GPU_RESOURCE": "", "SLM_PROFILER_GPU_COUNT": "1"})
    assert defaults.profiler_pool is None and defaults.profiler_unschedulable_seconds == 600
    for env, field in (({"SLM_PROFILER_NODE_SELECTOR": '["a"]'}, "SLM_PROFILER_NODE_SELECTOR"),
                       ({"SLM_PROFILER_GPU_RESOURCE": "x", "SLM_PROFILER_GPU_COUNT": "0"}, "SLM_PROFILER_GPU_COUNT"),
                       ({"SLM_PROFILER_TOLERATIONS": '[{"key": "p"}]'}, "SLM_PROFILER_NODE_SELECTOR"),
                       ({"SLM_PROFILER_UNSCHEDULABLE_SECONDS": "0"}, "SLM_PROFILER_UNSCHEDULABLE_SECONDS")):
        with pytest.raises(ConfigError, match=field):
            OperatorConfig.from_env(env)


# --- When a profiler Job cannot run --------------------------------------------------------------------

NOW = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.timezone.utc)


def _stamp(seconds_ago):
    return (NOW - datetime.timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def _pending_pod(seconds_ago, *, unschedulable=True, waiting=None):
    status = {"phase": "Pending", "conditions": []}
    if unschedulable:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": "0/4 nodes are available: 1 Insufficient nvidia.com/gpu"})
    if waiting:
        status["containerStatuses"] = [{"name": "profiler", "state": {"waiting": {"reason": waiting,
                                                                                  "message": "pull access denied"}}}]
    return {"metadata": {"creationTimestamp": _stamp(seconds_ago)}, "status": status}


def test_an_unschedulable_profiler_pod_stalls_after_the_timeout_with_the_scheduler_s_message():
    job = {"metadata": {"creationTimestamp": _stamp(700)}, "status": {"active": 1}}
    assert profiler_stall(job=job, pods=[_pending_pod(599)], now=NOW, timeout_s=600) is None
    stall = profiler_stall(job=job, pods=[_pending_pod(601)], now=NOW, timeout_s=600)
    assert stall.reason == "ProfilerUnschedulable"
    assert "Insufficient nvidia.com/gpu" in stall.message and "profiler.nodeSelector" in stall.message
    # A running pod, or a pending one the scheduler has not judged yet, is not stalled.
    running = {"metadata": {"creationTimestamp": _stamp(9000)}, "status": {"phase": "Running"}}
    assert profiler_stall(job=job, pods=[running], now=NOW, timeout_s=600) is None
    assert profiler_stall(job=job, pods=[_pending_pod(9000, unschedulable=False)], now=NOW, timeout_s=600) is None


def test_a_profiler_that_cannot_start_stalls_too():
    job = {"metadata": {"creationTimestamp": _stamp(700)}, "status": {"active": 1}}
    stall = profiler_stall(job=job, pods=[_pending_pod(700, unschedulable=False, waiting="ImagePullBackOff")],
                           now=NOW, timeout_s=600)
    assert stall.reason == "ProfilerNotStarted" and "profiler.image" in stall.message
    podless = {"metadata": {"creationTimestamp": _stamp(700)}, "status": {}}
    assert profiler_stall(job=podless, pods=[], now=NOW, timeout_s=600).reason == "ProfilerNotStarted"
    young = {"metadata": {"creationTimestamp": _stamp(10)}, "status": {}}
    assert profiler_stall(job=young, pods=[], now=NOW, timeout_s=600) is None


def test_a_failed_job_s_text_carries_its_reason_and_log_tail():
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                      "message": "Job has reached the specified backoff limit"}]}}
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": 1, "message": "x" * 5000 + "\nRuntimeError: CUDA out of memory\n"}}}]}}
    text = failure_text(job=job, pods=[pod])
    assert text.startswith("BackoffLimitExceeded: Job has reached")
    assert text.endswith("RuntimeError: CUDA out of memory") and len(text) < LOG_TAIL_CHARS + 200
    assert _pod()["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


def _shares_slice(node_name, *, count=2, shares="120"):
    capacity = {"memory": {"value": "81559Mi", "requestPolicy": {"default": "0", "validRange": {"min": "0"}}}}
    if shares:
        capacity["shares"] = {"value": shares, "requestPolicy": {"default": "1", "validRange": {"min": "1"}}}
    return {"spec": {"driver": "gpu.nvidia.com", "nodeName": node_name, "pool": {"name": node_name},
                     "devices": [{"name": f"gpu-{i}", "allowMultipleAllocations": True, "capacity": capacity}
                                 for i in range(count)]}}


def test_on_consumable_dra_nodes_the_profiler_claims_every_capacity_of_one_device():
    # A request that names no capacity would take the requestPolicy's default (1 share): not a GPU.
    nodes = [node("gpu-h100-0", sharing="mps", replicas=4), node("gpu-h100-shares-0", sharing="dra")]
    gpu = choose_profiler_gpu(pools=_pools(nodes, slices=[_shares_slice("gpu-h100-shares-0")]))
    assert gpu.kind == "dra" and dict(gpu.capacity) == {"memory": "81559Mi", "shares": "120"}
    job = build_profiler_job(name="p", namespace="slm-system", request=REQUEST, image="img", result_configmap="p",
                             service_account="slm-profiler", gpu_product=H100, gpu=gpu)
    annotations = job["metadata"]["annotations"]
    assert json.loads(annotations["slm.pareto.dev/profiler-capacity"]) == {"memory": "81559Mi", "shares": "120"}
    assert "all of its consumable capacity" in annotations["slm.pareto.dev/profiler-gpu"]
    template = build_profiler_claim_template(name="p", namespace="slm-system", gpu_product=H100,
                                             capacity=dict(gpu.capacity))
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"]["capacity"] == {"requests": {"memory": "81559Mi", "shares": "120"}}
    assert {"cel": {"expression": "device.allowMultipleAllocations == true"}} in request["exactly"]["selectors"]
    # A memory-only device: memory alone, in full.
    memory_only = choose_profiler_gpu(pools=_pools(nodes[1:], slices=[_shares_slice("gpu-h100-shares-0", shares="")]))
    assert dict(memory_only.capacity) == {"memory": "81559Mi"}
    # A whole-device claim never lands on a consumable device, where it would get a share.
    plain = build_profiler_claim_template(name="p", namespace="slm-system", gpu_product=H100)
    assert {"cel": {"expression": "!device.allowMultipleAllocations"}} in (
        plain["spec"]["spec"]["devices"]["requests"][0]["exactly"]["selectors"])
    assert "capacity" not in plain["spec"]["spec"]["devices"]["requests"][0]["exactly"]

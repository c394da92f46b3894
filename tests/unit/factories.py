"""Objects shaped like a real cluster's (labels as GPU feature discovery sets them), for unit tests."""

from slm_operator.profiling.types import Profile
from slm_operator.spec import parse_spec

H100 = "NVIDIA-H100-80GB-HBM3"
H100_MIB = 81559


def node(name, *, product=H100, memory=H100_MIB, count=8, sharing="none", replicas=1, ready=True,
         resource="nvidia.com/gpu"):
    labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory),
              "nvidia.com/gpu.count": str(count)}
    allocatable = {"cpu": "64"}
    if sharing != "dra":
        labels |= {"nvidia.com/gpu.replicas": str(replicas), "nvidia.com/gpu.sharing-strategy": sharing}
        allocatable[resource] = str(count * replicas)
    return {"metadata": {"name": name, "labels": labels}, "spec": {},
            "status": {"allocatable": allocatable,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def dra_slice(node_name, count=8):
    return {"spec": {"driver": "gpu.nvidia.com", "nodeName": node_name, "pool": {"name": node_name},
                     "devices": [{"name": f"gpu-{i}"} for i in range(count)]}}


def gpu_pod(node_name, slots=1, resource="nvidia.com/gpu", phase="Running"):
    return {"spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {resource: str(slots)}}}]},
            "status": {"phase": phase}}


def profile(**overrides):
    base = dict(source="estimated", gpu_product=H100, batch_size=128, tokens_per_second_per_replica=10000.0,
                tokens_per_second_per_gpu=14000.0, replicas_to_saturate=2, memory_per_replica_gib=12.0,
                weights_gib=2.5, kv_cache_gib=8.0)
    return Profile(**(base | overrides))


def spec(**overrides):
    return parse_spec({"model": "facebook/opt-1.3b", "gpu": {"product": H100}} | overrides)

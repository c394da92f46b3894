"""The profiler Job: one whole GPU of the wanted product runs ``slm-profiler run`` with real vLLM.

The request travels in an environment variable (``--request env:SLM_PROFILE_REQUEST``), the
result comes back in a ConfigMap the profiler writes itself with the Job's service account
(``--write-configmap NAMESPACE/NAME``; the only place where profiling code talks to the API).
Pure: returns a dict, talks to nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from slm_operator.constants import (
    GPU_RESOURCE,
    GROUP,
    LABEL_GPU_PRODUCT,
    LABEL_GPU_SHARING,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from slm_operator.profiling.types import ProfileRequest

__all__ = ["build_profiler_job", "REQUEST_ENV", "PROFILER_CONTAINER"]

REQUEST_ENV = "SLM_PROFILE_REQUEST"
PROFILER_CONTAINER = "profiler"
#: Non-root user of the profiler image.
RUN_AS_USER = 1000
#: The profiler's default requests (SLM_PROFILER_CPU_REQUEST, SLM_PROFILER_MEMORY_REQUEST), so the
#: pod is Burstable, not BestEffort (the first evicted under node pressure, an hour of GPU lost).
#: A floor, not a cap: no limit is set, and a Job holding a whole GPU has the node's idle CPU and
#: memory beside it to burst into when the sweep runs several replicas. One core keeps the sweep's
#: load generator and a vLLM server's engine loop running; 8 GiB holds one vLLM server of a small
#: model (the torch/CUDA runtime of its two processes and the weights staged through host memory:
#: a few GiB) and the profiler. Raise them (the chart's ``profiler.resources``) for larger models or
#: nodes shared with busy pods, where a starved CPU shows up as lower measured throughput.
CPU_REQUEST = "1"
MEMORY_REQUEST = "8Gi"


def build_profiler_job(
    *,
    name: str,
    namespace: str,
    request: ProfileRequest,
    image: str,
    result_configmap: str,
    service_account: str,
    gpu_product: str,
    gpu_resource: str = GPU_RESOURCE,
    owner: Mapping[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    cpu_request: str = CPU_REQUEST,
    memory_request: str = MEMORY_REQUEST,
) -> dict[str, Any]:
    """A ``batch/v1`` Job measuring ``request`` on one ``gpu_product`` GPU. Side-effect free.

    ``owner`` is an ownerReference dict (apiVersion, kind, name, uid) of the SLMService, so the
    Job goes away with it. The pod pins itself to the product with the GPU feature discovery
    label ``nvidia.com/gpu.product`` and asks for one whole ``gpu_resource``. ``extra_args`` go
    after ours (the operator's ``SLM_PROFILER_EXTRA_ARGS``), so a later flag wins.

    The pod passes the ``restricted`` Pod Security Standard (non-root, no privilege escalation, no
    capabilities, the runtime's seccomp profile) and requests ``cpu_request`` and
    ``memory_request``. It keeps its ServiceAccount token: it writes its result ConfigMap with it.
    """
    if not result_configmap:
        raise ValueError("result_configmap must name the ConfigMap the profile is written to")
    if not gpu_product:
        raise ValueError("gpu_product must be the node label value nvidia.com/gpu.product (e.g. NVIDIA-L4)")
    labels = {
        "app.kubernetes.io/name": "slm-profiler",
        LABEL_MANAGED_BY: MANAGED_BY,
        f"{GROUP}/role": "profiler",
    }
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner:
        metadata["ownerReferences"] = [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["name"], "uid": owner["uid"],
            "controller": True, "blockOwnerDeletion": True,
        }]
    args = [
        "run",
        "--request", f"env:{REQUEST_ENV}",
        "--engine", "vllm",
        "--output", "/work/profile.json",
        "--progress", "/work/progress.json",
        "--work-dir", "/work",
        "--write-configmap", f"{namespace}/{result_configmap}",
        *extra_args,
    ]
    container = {
        "name": PROFILER_CONTAINER,
        "image": image,
        "command": ["slm-profiler"],
        "args": args,
        "env": [
            {"name": REQUEST_ENV, "value": json.dumps(request.to_dict(), sort_keys=True)},
            {"name": "HOME", "value": "/work"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": {"limits": {gpu_resource: 1},
                      "requests": {gpu_resource: 1, "cpu": cpu_request, "memory": memory_request}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "work", "mountPath": "/work"},
            # NB: vLLM's workers exchange tensors through /dev/shm; the container default is 64 MiB.
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod_spec = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "nodeSelector": {LABEL_GPU_PRODUCT: gpu_product},
        # NB: a slot of an MPS or time-sliced GPU is a fraction of it; a profile must see a whole GPU.
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": LABEL_GPU_SHARING, "operator": "NotIn",
                                   "values": ["mps", "time-slicing"]}]}]}}},
        "tolerations": [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}],
        # NB: explicit, whatever the ServiceAccount says: the profiler writes its ConfigMap with it.
        "automountServiceAccountToken": True,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "work", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            # NB: a failed measurement is reported, not retried blindly: one GPU-hour is expensive.
            "backoffLimit": 0,
            "activeDeadlineSeconds": 3 * 3600,
            "ttlSecondsAfterFinished": 24 * 3600,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }

"""The profiler Job: one whole GPU of the wanted product runs ``slm-profiler run`` with real vLLM.

Which GPU, and how the pod asks for it, is :func:`choose_profiler_gpu`'s decision, made from the
planner's inventory: an unshared device-plugin GPU, a whole DRA device (a ResourceClaimTemplate the
Job's pod claims from: :func:`build_profiler_claim_template`), all slots of one MPS or time-sliced
GPU, or a dedicated profiling pool the chart names (``profiler.nodeSelector``/``gpuResource``).
:func:`profiler_stall` reads a Job and its pods and says when the Job cannot run (an unschedulable
or unstartable pod), so the service falls back to the estimate instead of waiting for the deadline.

The request travels in an environment variable (``--request env:SLM_PROFILE_REQUEST``), the
result comes back in a ConfigMap the profiler writes itself with the Job's service account
(``--write-configmap NAMESPACE/NAME``; the only place where profiling code talks to the API).
Pure: returns a dict, talks to nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from slm_operator.builders.dra import dra_product_selector
from slm_operator.constants import (
    ANNOTATION_PROFILER_CAPACITY,
    ANNOTATION_PROFILER_GPU,
    DRA_CAPACITY_MEMORY,
    DRA_CAPACITY_SHARES,
    DRA_DEVICE_CLASS,
    GPU_RESOURCE,
    GROUP,
    LABEL_GPU_PRODUCT,
    LABEL_GPU_REPLICAS,
    LABEL_GPU_SHARING,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from slm_operator.planning.inventory import GpuPool
from slm_operator.profiling.types import ProfileRequest

__all__ = [
    "build_profiler_job", "build_profiler_claim_template", "choose_profiler_gpu", "profiler_stall",
    "failure_text", "DedicatedPool", "ProfilerGpu", "Stall", "REQUEST_ENV", "PROFILER_CONTAINER",
]

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
#: The name of the profiler pod's DRA claim (``resourceClaims[].name``, ``resources.claims[].name``).
CLAIM = "gpu"
#: Container waiting reasons that mean the pod will not start by itself (a wrong image, a config the
#: kubelet cannot build); a pod stuck on one past the timeout falls back like an unschedulable one.
NOT_STARTING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                          "CreateContainerError", "CrashLoopBackOff"})
#: The most of a failed profiler's log (its termination message) a status message carries.
LOG_TAIL_CHARS = 1500

GpuKind = Literal["whole", "dra", "slots", "dedicated"]


@dataclasses.dataclass(frozen=True)
class DedicatedPool:
    """A profiling pool the chart names (``profiler.nodeSelector``, ``tolerations``, ``gpuResource``,
    ``gpuCount``): when set, every profiler Job goes there, whatever the inventory says."""

    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    resource_name: str = GPU_RESOURCE
    count: int = 1


@dataclasses.dataclass(frozen=True)
class ProfilerGpu:
    """How a profiler pod gets one whole GPU of a product (:func:`choose_profiler_gpu`).

    ``whole``: one unshared device-plugin GPU (``resource_name: 1``, nodes not MPS/time-sliced).
    ``dra``: one whole device of ``device_class`` through a ResourceClaimTemplate (no sharing config:
    the claim is the pod's alone); on a device that allows multiple allocations (``dra-shares``) the
    claim requests all of its ``capacity``, since a request's default there is a share of it.
    ``slots``: all ``count`` slots of an MPS or time-sliced pool, on
    nodes whose ``nvidia.com/gpu.replicas`` is ``count``. ``dedicated``: the chart's pool.
    """

    kind: GpuKind
    resource_name: str | None = GPU_RESOURCE
    count: int = 1
    #: ``slots`` only: the pool's sharing strategy label (``mps``, ``time-slicing``).
    sharing: str | None = None
    device_class: str | None = None
    #: ``dra`` on consumable devices only: every capacity of the device and its full value.
    capacity: tuple[tuple[str, str], ...] = ()
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def describe(self) -> str:
        """E.g. "all 4 slots of one MPS GPU (nvidia.com/gpu: 4)", for status and logs."""
        if self.kind == "dra":
            whole = " (all of its consumable capacity)" if self.capacity else ""
            return f"one whole DRA device of class {self.device_class}{whole}"
        if self.kind == "slots":
            return f"all {self.count} slots of one {self.sharing} GPU ({self.resource_name}: {self.count})"
        if self.kind == "dedicated":
            return (f"the profiling pool profiler.nodeSelector={dict(self.node_selector)} "
                    f"({self.resource_name}: {self.count})")
        return f"one unshared GPU ({self.resource_name}: 1)"


@dataclasses.dataclass(frozen=True)
class Stall:
    """Why a profiler Job cannot run: a condition ``reason`` and a message that says what to configure."""

    reason: Literal["ProfilerUnschedulable", "ProfilerNotStarted"]
    message: str


def choose_profiler_gpu(
    *, pools: Iterable[GpuPool], dedicated: DedicatedPool | None = None, preferred_sharing: str | None = None,
    device_class: str = DRA_DEVICE_CLASS,
) -> ProfilerGpu:
    """The GPU a profiler Job of one product asks for, from that product's inventory ``pools``.

    Side-effect free. ``dedicated`` (the chart's profiling pool) wins when set. Otherwise a pool with
    a whole GPU free now beats one without; then a pool whose sharing is ``preferred_sharing`` (the
    spec's ``gpu.sharing``, the kind the plan would use); then an unshared GPU, a DRA device, and
    last all slots of a shared GPU (a slot is a fraction of a GPU: a profile must see a whole one).
    Without any pool of the product, one unshared GPU: the pod stays unschedulable and
    :func:`profiler_stall` says so. A DRA device comes from ``device_class`` (the spec's
    ``gpu.deviceClassName``, or NVIDIA's).
    """
    if dedicated is not None:
        return ProfilerGpu(kind="dedicated", resource_name=dedicated.resource_name, count=dedicated.count,
                           node_selector=dict(dedicated.node_selector), tolerations=dedicated.tolerations)
    order = {"none": 0, "dra": 1, "dra-shares": 2, "mps": 3, "time-slicing": 4}
    ranked = sorted(
        pools,
        key=lambda p: (not _whole_gpu_free(p), p.sharing != preferred_sharing, order.get(p.sharing, 9),
                       -p.free // max(p.slots_per_gpu, 1), p.node),
    )
    if not ranked:
        return ProfilerGpu(kind="whole")
    best = ranked[0]
    if best.sharing == "dra":
        return ProfilerGpu(kind="dra", resource_name=None, device_class=device_class)
    if best.sharing == "dra-shares":
        # NB: an unused device of the pool if there is one: its capacities are the ones to ask in full.
        devices = [d for d in best.devices if d.name in best.free_devices] or list(best.devices)
        capacity: tuple[tuple[str, str], ...] = ()
        if devices:
            device = devices[0]
            capacity = ((DRA_CAPACITY_MEMORY, f"{device.memory_mib}Mi"),)
            if device.shares is not None:
                capacity += ((DRA_CAPACITY_SHARES, str(device.shares)),)
        return ProfilerGpu(kind="dra", resource_name=None, device_class=device_class, capacity=capacity)
    if best.sharing == "none" or best.slots_per_gpu <= 1:
        return ProfilerGpu(kind="whole", resource_name=best.resource_name or GPU_RESOURCE)
    return ProfilerGpu(kind="slots", resource_name=best.resource_name or GPU_RESOURCE, count=best.slots_per_gpu,
                       sharing=best.sharing)


def _whole_gpu_free(pool: GpuPool) -> bool:
    return pool.free >= (1 if pool.sharing in ("none", "dra", "dra-shares") else max(pool.slots_per_gpu, 1))


def build_profiler_job(
    *,
    name: str,
    namespace: str,
    request: ProfileRequest,
    image: str,
    result_configmap: str,
    service_account: str,
    gpu_product: str,
    gpu: ProfilerGpu | None = None,
    owner: Mapping[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    cpu_request: str = CPU_REQUEST,
    memory_request: str = MEMORY_REQUEST,
) -> dict[str, Any]:
    """A ``batch/v1`` Job measuring ``request`` on one ``gpu_product`` GPU. Side-effect free.

    ``owner`` is an optional ownerReference dict (apiVersion, kind, name, uid); the operator sets
    none: the Job is a cache entry of every SLMService of its key, in another namespace.
    The pod pins itself to the product with the GPU feature discovery label
    ``nvidia.com/gpu.product`` and asks for one whole GPU as ``gpu`` says (default: one unshared
    ``nvidia.com/gpu``); a ``dra`` one claims from the ResourceClaimTemplate of the Job's name
    (:func:`build_profiler_claim_template`). ``extra_args`` go after ours (the operator's
    ``SLM_PROFILER_EXTRA_ARGS``), so a later flag wins. The container's termination message falls
    back to its log tail, which a failed Job's status message quotes.

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
    gpu = gpu or ProfilerGpu(kind="whole")
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels),
                                "annotations": {ANNOTATION_PROFILER_GPU: gpu.describe()}}
    if gpu.capacity:
        metadata["annotations"][ANNOTATION_PROFILER_CAPACITY] = json.dumps(dict(gpu.capacity), sort_keys=True)
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
    resources: dict[str, Any] = {"requests": {"cpu": cpu_request, "memory": memory_request}}
    if gpu.kind == "dra":
        resources["claims"] = [{"name": CLAIM}]
    else:
        slots = gpu.resource_name or GPU_RESOURCE
        resources["limits"] = {slots: gpu.count}
        resources["requests"][slots] = gpu.count
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
        "resources": resources,
        "terminationMessagePolicy": "FallbackToLogsOnError",
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
        "nodeSelector": {LABEL_GPU_PRODUCT: gpu_product, **gpu.node_selector},
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
                        *(dict(t) for t in gpu.tolerations)],
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
        **_gpu_placement(name=name, gpu=gpu),
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


def _gpu_placement(*, name: str, gpu: ProfilerGpu) -> dict[str, Any]:
    """The pod spec fields that put a profiler on the nodes of ``gpu``'s kind."""
    if gpu.kind == "dra":
        return {"resourceClaims": [{"name": CLAIM, "resourceClaimTemplateName": name}]}
    if gpu.kind == "whole":
        # NB: a slot of an MPS or time-sliced GPU is a fraction of it; a profile must see a whole GPU.
        return {"affinity": _node_affinity({"key": LABEL_GPU_SHARING, "operator": "NotIn",
                                            "values": ["mps", "time-slicing"]})}
    if gpu.kind == "slots":
        # NB: all slots of one GPU only where a GPU has that many: a node of another replica count
        # would hand out a fraction (fewer) or several GPUs' slots (more).
        return {"affinity": _node_affinity(
            {"key": LABEL_GPU_SHARING, "operator": "In", "values": [gpu.sharing or ""]},
            {"key": LABEL_GPU_REPLICAS, "operator": "In", "values": [str(gpu.count)]})}
    return {}


def _node_affinity(*expressions: Mapping[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [dict(e) for e in expressions]}]}}}


def build_profiler_claim_template(
    *, name: str, namespace: str, gpu_product: str, device_class: str = DRA_DEVICE_CLASS,
    owner: Mapping[str, Any] | None = None, capacity: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ResourceClaimTemplate a ``dra`` profiler pod claims from: exactly one whole device of
    ``gpu_product``, with no sharing config, so the claim (and the GPU) is that pod's alone.

    Without ``capacity``: a device that allows no other allocation. With it (``dra-shares``): a
    device that allows multiple allocations, requesting all of ``capacity``, so no replica shares it.

    ``owner`` is the profiler Job (apiVersion, kind, name, uid): the template goes with it, and the
    claim made from it goes with the pod. Side-effect free.
    """
    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": {LABEL_MANAGED_BY: MANAGED_BY, f"{GROUP}/role": "profiler"}}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                        "name": owner["name"], "uid": owner["uid"], "controller": True}]
    # NB: a request that names no capacity of a consumable device takes its requestPolicy's default
    # (a share), not the device: whole devices only, unless every capacity is asked in full.
    exclusive = "device.allowMultipleAllocations == true" if capacity else "!device.allowMultipleAllocations"
    exactly: dict[str, Any] = {"deviceClassName": device_class, "allocationMode": "ExactCount", "count": 1,
                               "selectors": [{"cel": {"expression": dra_product_selector(gpu_product)}},
                                             {"cel": {"expression": exclusive}}]}
    if capacity:
        exactly["capacity"] = {"requests": dict(capacity)}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": metadata,
        "spec": {"spec": {"devices": {"requests": [{
            "name": CLAIM,
            "exactly": exactly,
        }]}}},
    }


def profiler_stall(
    *, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: datetime.datetime, timeout_s: float,
) -> Stall | None:
    """Why a running profiler ``job`` (and its ``pods``) cannot make progress, once it has not for
    ``timeout_s`` seconds; ``None`` while it may still start. Side-effect free.

    A pod Pending with an ``Unschedulable`` PodScheduled condition is ``ProfilerUnschedulable``
    (with the scheduler's message); a pod waiting on an image or a config the kubelet cannot build,
    or a Job that made no pod at all, is ``ProfilerNotStarted``. Ages count from the pod's (or
    Job's) creation, so a restarted operator does not start the clock again.
    """
    fix = ("give profiler Jobs a GPU: free one of this product, or set the chart's profiler.nodeSelector, "
           "profiler.tolerations and profiler.gpuResource/gpuCount to a profiling pool")
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending" or _age(pod, now) < timeout_s:
            continue
        for cond in status.get("conditions") or ():
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                    and cond.get("reason") == "Unschedulable":
                return Stall("ProfilerUnschedulable",
                             f"the profiler pod could not be scheduled for {_age(pod, now):.0f} s: "
                             f"{cond.get('message') or 'no message'}; {fix}")
        for cs in status.get("containerStatuses") or ():
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in NOT_STARTING:
                return Stall("ProfilerNotStarted",
                             f"the profiler container has not started for {_age(pod, now):.0f} s: "
                             f"{waiting['reason']}: {waiting.get('message') or ''}; check the chart's "
                             "profiler.image (docs/install.md, \"The profiler image\")")
    job_status = job.get("status") or {}
    if not pods and not job_status.get("active") and _age(job, now) >= timeout_s:
        return Stall("ProfilerNotStarted",
                     f"the profiler Job has created no pod in {_age(job, now):.0f} s (a quota, an admission "
                     "policy or Pod Security may refuse it); see `kubectl describe job` in the profiler namespace")
    return None


def failure_text(*, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str:
    """Why a failed profiler Job failed: its Failed condition and the tail of its container's log
    (the termination message, ``FallbackToLogsOnError``). Side-effect free."""
    parts = [f"{c.get('reason') or 'Failed'}: {c.get('message') or ''}".rstrip(": ")
             for c in (job.get("status") or {}).get("conditions") or ()
             if c.get("type") == "Failed" and c.get("status") == "True"]
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                parts.append(f"log tail: {terminated['message'].strip()[-LOG_TAIL_CHARS:]}")
            elif terminated:
                parts.append(f"exit code {terminated.get('exitCode')} ({terminated.get('reason') or 'Error'})")
    return "; ".join(parts) or "no reason recorded"


def _age(obj: Mapping[str, Any], now: datetime.datetime) -> float:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if isinstance(created, str):
        created = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    if not isinstance(created, datetime.datetime):
        return 0.0
    if created.tzinfo is None:
        created = created.replace(tzinfo=datetime.timezone.utc)
    return (now - created).total_seconds()

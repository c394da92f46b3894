"""Get the profile an SLMService is planned from: static, skipped, estimated, cached or measured.

``profiling.mode: auto`` measures once per cache key (model + revision, GPU product, engine image,
workload shape, profiler version): a result ConfigMap in the profiler namespace is the cache, so a
second SLMService of the same model, or a restarted operator, reuses it instead of profiling again.
A measurement in progress raises :class:`~slm_operator.errors.ProfilePending`; the handler retries
later. A failed one raises :class:`~slm_operator.errors.ProfilingFailed`.

Profiler Jobs (runner ``job``) run in the profiler namespace and are owned by nothing, on purpose:
a Job is a cache entry of every SLMService of its key, in any namespace, and an ownerReference
cannot cross namespaces. It asks for a whole GPU of the kind the cluster has for the product
(:func:`~slm_operator.builders.profiler_job.choose_profiler_gpu`). A Job that cannot be scheduled
or started within ``profiler_unschedulable_seconds`` is deleted and leaves a fallback note in its
result ConfigMap: services of that key are planned from the estimate, labelled, until the note is
deleted. A failed Job stays for its logs and fails the services of its key; deleting it (or a
completed Job's result ConfigMap) profiles again at the next retry.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slm_operator import kube, metrics
from slm_operator.builders.profiler_job import (
    Stall,
    build_profiler_claim_template,
    build_profiler_job,
    choose_profiler_gpu,
    failure_text,
    profiler_stall,
)
from slm_operator.config import OperatorConfig
from slm_operator.constants import (
    ANNOTATION_PROFILER_CAPACITY,
    ANNOTATION_PROFILER_GPU,
    DRA_DEVICE_CLASS,
    FALLBACK_KEY,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    POOL_OF_MECHANISM,
    PROFILE_CONFIGMAP_PREFIX,
    PROFILE_KEY,
    REQUEST_KEY,
)
from slm_operator.errors import PermanentError, ProfilePending, ProfilingFailed, SpecError
from slm_operator.planning.inventory import GpuPool
from slm_operator.planning.profiles import skip_profile, static_profile
from slm_operator.profiling.cache import profile_cache_key
from slm_operator.profiling.estimator import estimate_profile
from slm_operator.profiling.gpus import lookup_gpu
from slm_operator.profiling.modelconfig import resolve_model_config
from slm_operator.profiling.runner_local import LocalProfileRun, start_local_profile
from slm_operator.profiling.types import Profile, ProfileRequest
from slm_operator.spec import SLMServiceSpec

logger = logging.getLogger(__name__)
_local_runs: dict[str, LocalProfileRun] = {}
_local_lock = threading.Lock()
#: Measurements this process started (result ConfigMap name -> monotonic start), for their duration.
#: NB: a restart forgets them; a measurement it did not see start is counted as a cache hit only.
_measuring: dict[str, float] = {}
#: The label the Job controller puts on a Job's pods.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def obtain_profile(*, spec: SLMServiceSpec, gpu_product: str, cfg: OperatorConfig,
                   gpu_memory_gib: float | None = None,
                   gpu_pools: Callable[[], Sequence[GpuPool]] = tuple) -> Profile:
    """Return the profile for ``spec`` on ``gpu_product`` or raise ProfilePending/ProfilingFailed.

    ``gpu_memory_gib`` is one GPU's memory as the nodes label it; a measurement sizes its replicas
    from it (a product the profiler's GPU table lacks can still be profiled with several replicas).
    ``gpu_pools`` returns the inventory's pools of ``gpu_product``; it is called only to start a
    profiler Job, which asks for a GPU of a kind these pools have.
    Unknown models or GPUs, bad model configs and static specs raise their
    :class:`~slm_operator.errors.PermanentError`, which names the field to fix.
    """
    profile = _obtain(spec=spec, gpu_product=gpu_product, cfg=cfg, gpu_memory_gib=gpu_memory_gib,
                      gpu_pools=gpu_pools)
    # NB: the GPU table canonicalises names ("H100-SXM5-80GB"); planning matches node labels, so the
    # profile keeps the product as the cluster spells it.
    return dataclasses.replace(profile, gpu_product=gpu_product)


def _obtain(*, spec: SLMServiceSpec, gpu_product: str, cfg: OperatorConfig, gpu_memory_gib: float | None,
            gpu_pools: Callable[[], Sequence[GpuPool]]) -> Profile:
    mode = spec.profiling.mode
    if mode == "static":
        return _counted("static", lambda: static_profile(spec=spec, gpu_product=gpu_product))
    if mode == "skip":
        return _counted("static", lambda: skip_profile(spec=spec, gpu_product=gpu_product))
    job_cannot_measure = cfg.profiler_runner == "job" and (
        spec.model.startswith("pvc://") or spec.engine.hf_token_secret_ref is not None)
    if mode == "estimate" or cfg.profiler_runner == "none" or job_cannot_measure:
        # The estimator needs the architecture and the GPU's numbers; a measurement needs neither.
        profile = _counted("estimated", lambda: _estimate(spec=spec, gpu_product=gpu_product))
        if mode != "estimate":
            # NB: the profiler Job runs in the operator's namespace: it can mount neither the
            # service's PVC nor its token Secret, so such models are estimated, and say so.
            why = ("the profiler Job cannot reach pvc:// models or the hfTokenSecretRef Secret yet"
                   if job_cannot_measure else "no profiler runner is configured")
            profile = dataclasses.replace(profile, explanation=f"{profile.explanation} (estimated: {why})")
        return profile

    engine = cfg.profiler_engine if cfg.profiler_runner == "local" else "vllm"
    request = ProfileRequest(
        model=spec.model, revision=spec.revision, gpu_product=gpu_product, workload=spec.workload,
        slo=spec.slo, epsilon=spec.profiling.epsilon, batch_sizes=spec.profiling.batch_sizes,
        engine=engine, engine_image=spec.engine.image or cfg.default_engine_image,
        model_config=dict(spec.profiling.model_config) if spec.profiling.model_config else None,
        gpu_memory_gib=gpu_memory_gib,
    )
    key = profile_cache_key(request=request, engine_image=request.engine_image or "")
    cm_name = f"{PROFILE_CONFIGMAP_PREFIX}{key}"
    cm = kube.get(api_version="v1", kind="ConfigMap", name=cm_name, namespace=cfg.profiler_namespace)
    cached = _profile_of(cm, name=cm_name, namespace=cfg.profiler_namespace)
    metrics.record_cache_lookup(hit=cached is not None)
    if cached is not None:
        metrics.record_profile(source="cache", result="succeeded")
        _measured(cm_name, result="succeeded")  # a profiler Job's result, seen for the first time
        return cached
    if cfg.profiler_runner == "local":
        return _run_locally(request=request, key=key, cm_name=cm_name, cfg=cfg)
    fallback = _fallback_of(cm)
    if fallback is not None:
        return _estimated_instead(spec=spec, gpu_product=gpu_product, stall=fallback, cm_name=cm_name, cfg=cfg)
    preferred = POOL_OF_MECHANISM.get(spec.gpu.sharing)
    return _run_as_job(request=request, cm_name=cm_name, cfg=cfg, spec=spec,
                       gpu_pools=gpu_pools, preferred_sharing=preferred)


def _counted(source: str, obtain: Callable[[], Profile]) -> Profile:
    """``obtain()``, counted in ``slm_operator_profile_runs_total`` and timed."""
    started = time.monotonic()
    try:
        profile = obtain()
    except PermanentError:
        metrics.record_profile(source=source, result="failed")
        raise
    metrics.record_profile(source=source, result="succeeded", seconds=time.monotonic() - started)
    return profile


def _measuring_started(cm_name: str) -> None:
    with _local_lock:
        _measuring[cm_name] = time.monotonic()
    metrics.record_profile(source="measured", result="started")


def _measured(cm_name: str, *, result: str) -> None:
    """A measurement this process started has ``result``; nothing when it did not start one."""
    with _local_lock:
        started = _measuring.pop(cm_name, None)
    if started is not None:
        metrics.record_profile(source="measured", result=result, seconds=time.monotonic() - started)


def _estimate(*, spec: SLMServiceSpec, gpu_product: str) -> Profile:
    gpu = lookup_gpu(gpu_product)
    try:
        model_config = resolve_model_config(model=spec.model, inline=spec.profiling.model_config)
        return estimate_profile(model_config=model_config, gpu=gpu, workload=spec.workload, slo=spec.slo,
                                epsilon=spec.profiling.epsilon, batch_sizes=spec.profiling.batch_sizes)
    except (ArithmeticError, ValueError, TypeError) as exc:
        if isinstance(exc, PermanentError) or spec.profiling.model_config is None:
            raise
        # NB: numbers the user typed into modelConfig (a 10^30-layer model) break the arithmetic;
        # that is their spec's problem, and it says which field. Built-in models raise as bugs.
        raise SpecError("profiling.modelConfig", f"cannot be estimated ({type(exc).__name__}: {exc}); check "
                        "its sizes against the model's config.json") from None


def _read_cached(*, name: str, namespace: str) -> Profile | None:
    return _profile_of(kube.get(api_version="v1", kind="ConfigMap", name=name, namespace=namespace),
                       name=name, namespace=namespace)


def _profile_of(cm: dict[str, Any] | None, *, name: str, namespace: str) -> Profile | None:
    """The measured profile a result ConfigMap holds, or ``None``."""
    if not cm or PROFILE_KEY not in (cm.get("data") or {}):
        return None
    profile = Profile.from_dict(json.loads(cm["data"][PROFILE_KEY]))
    return dataclasses.replace(profile, profile_ref=f"configmap/{namespace}/{name}")


def _fallback_of(cm: dict[str, Any] | None) -> Stall | None:
    """The fallback note a result ConfigMap holds (its profiler Job could not run), or ``None``."""
    raw = ((cm or {}).get("data") or {}).get(FALLBACK_KEY)
    if not raw:
        return None
    note = json.loads(raw)
    reason = note.get("reason")
    return Stall(reason if reason == "ProfilerNotStarted" else "ProfilerUnschedulable", str(note.get("message")))


def _estimated_instead(*, spec: SLMServiceSpec, gpu_product: str, stall: Stall, cm_name: str,
                       cfg: OperatorConfig) -> Profile:
    """The estimate, labelled with why the profiler could not measure and how to measure again."""
    again = (f"once the profiler can get a GPU, `kubectl delete configmap -n {cfg.profiler_namespace} {cm_name}` "
             "measures it")
    try:
        profile = _counted("estimated", lambda: _estimate(spec=spec, gpu_product=gpu_product))
    except PermanentError as exc:
        raise ProfilingFailed(f"{stall.message}; the estimator cannot stand in either ({exc.message}); "
                              f"{again}") from None
    return dataclasses.replace(profile, fallback_reason=stall.reason,
                               explanation=f"{profile.explanation} (estimated: {stall.message}; {again})")


def _cache_configmap(*, name: str, namespace: str, request: ProfileRequest, key: str,
                     value: Mapping[str, Any]) -> dict[str, Any]:
    """A profile cache entry: ``value`` under ``key`` (PROFILE_KEY: a result; FALLBACK_KEY: why the
    estimate stands in), beside the request it answers."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "profile"}},
        "data": {key: json.dumps(dict(value), sort_keys=True),
                 REQUEST_KEY: json.dumps(request.to_dict(), sort_keys=True)},
    }


def _run_locally(*, request: ProfileRequest, key: str, cm_name: str, cfg: OperatorConfig) -> Profile:
    started_now = False
    with _local_lock:
        run = _local_runs.get(key)
        if run is None:
            # NB: another handler thread may have finished this very profile since our cache read.
            cached = _read_cached(name=cm_name, namespace=cfg.profiler_namespace)
            if cached is not None:
                return cached
            work_dir = os.path.join(cfg.work_dir, "profiles", key)
            os.makedirs(work_dir, exist_ok=True)
            logger.info("profiling %s on %s with the local runner (%s engine)", request.model,
                        request.gpu_product, request.engine)
            # NB: the same extra flags as a profiler Job's (shorter windows on a dev cluster).
            run = _local_runs[key] = start_local_profile(request=request, work_dir=work_dir,
                                                         extra_args=cfg.profiler_extra_args)
            started_now = True
    if started_now:
        _measuring_started(cm_name)
    try:
        profile = run.poll()
    except ProfilingFailed:
        with _local_lock:
            _local_runs.pop(key, None)
        _measured(cm_name, result="failed")
        raise
    if profile is None:
        raise ProfilePending(_progress_text(run.progress()))
    kube.apply(_cache_configmap(name=cm_name, namespace=cfg.profiler_namespace, request=request, key=PROFILE_KEY,
                                value=profile.to_dict()))
    with _local_lock:
        _local_runs.pop(key, None)
    _measured(cm_name, result="succeeded")
    return dataclasses.replace(profile, profile_ref=f"configmap/{cfg.profiler_namespace}/{cm_name}")


def _run_as_job(*, request: ProfileRequest, cm_name: str, cfg: OperatorConfig, spec: SLMServiceSpec,
                gpu_pools: Callable[[], Sequence[GpuPool]], preferred_sharing: str | None) -> Profile:
    namespace = cfg.profiler_namespace
    device_class = spec.gpu.device_class_name or DRA_DEVICE_CLASS
    current = kube.get(api_version="batch/v1", kind="Job", name=cm_name, namespace=namespace)
    if current is None:
        gpu = choose_profiler_gpu(pools=gpu_pools(), dedicated=cfg.profiler_pool, preferred_sharing=preferred_sharing,
                                  device_class=device_class)
        job = build_profiler_job(
            name=cm_name, namespace=namespace, request=request, image=cfg.profiler_image,
            result_configmap=cm_name, service_account=cfg.profiler_service_account,
            gpu_product=request.gpu_product, gpu=gpu, extra_args=cfg.profiler_extra_args,
            cpu_request=cfg.profiler_cpu_request, memory_request=cfg.profiler_memory_request,
        )
        # A 409 here: another SLMService of the same key started it a moment ago.
        if kube.create(job) is kube.Outcome.APPLIED:
            _measuring_started(cm_name)
            logger.info("profiling %s on %s with profiler Job %s/%s on %s", request.model, request.gpu_product,
                        namespace, cm_name, gpu.describe())
        current = kube.get(api_version="batch/v1", kind="Job", name=cm_name, namespace=namespace) or {}
    job_status = current.get("status") or {}
    finished = {c.get("type") for c in job_status.get("conditions") or () if c.get("status") == "True"}
    where = f"profiler Job {namespace}/{cm_name}"
    if "Complete" in finished:
        # NB: re-read: the Job may have written its result between our first read and now.
        cached = _read_cached(name=cm_name, namespace=namespace)
        if cached is not None:
            _measured(cm_name, result="succeeded")
            return cached
        # NB: the profiler exits non-zero when it cannot write its ConfigMap, so a Complete Job
        # without one had it deleted since: that asks for a new measurement.
        kube.delete(api_version="batch/v1", kind="Job", name=cm_name, namespace=namespace)
        raise ProfilePending(f"{where} done, but its result ConfigMap was deleted: profiling again")
    pods = kube.list_objects(api_version="v1", kind="Pod", namespace=namespace,
                             label_selector=f"{JOB_NAME_LABEL}={cm_name}")
    if "Failed" in finished or "FailureTarget" in finished:
        _measured(cm_name, result="failed")
        raise ProfilingFailed(f"{where} failed: {failure_text(job=current, pods=pods)}; see its logs "
                              f"(kubectl logs -n {namespace} job/{cm_name}), then `kubectl delete job -n {namespace} "
                              f"{cm_name}` to profile again")
    _ensure_claim_template(job=current, request=request, device_class=device_class)
    stall = profiler_stall(job=current, pods=pods, now=datetime.datetime.now(datetime.timezone.utc),
                           timeout_s=cfg.profiler_unschedulable_seconds)
    if stall is not None:
        # NB: the note first, then the Job: a reconcile in between finds the note, not a new Job.
        kube.apply(_cache_configmap(name=cm_name, namespace=namespace, request=request, key=FALLBACK_KEY,
                                    value={"reason": stall.reason, "message": stall.message}))
        kube.delete(api_version="batch/v1", kind="Job", name=cm_name, namespace=namespace)
        _measured(cm_name, result="failed")
        logger.warning("%s cannot run (%s): %s; planning from the estimate", where, stall.reason, stall.message)
        return _estimated_instead(spec=spec, gpu_product=request.gpu_product, stall=stall, cm_name=cm_name, cfg=cfg)
    asked = ((current.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PROFILER_GPU)
    raise ProfilePending(f"{where} running" + (f" on {asked}" if asked else "") + _pod_state(pods, cfg=cfg))


def _ensure_claim_template(*, job: dict[str, Any], request: ProfileRequest, device_class: str) -> None:
    """A Job whose pod claims a whole DRA device gets its ResourceClaimTemplate, owned by the Job
    (deleted with it); created after the Job for its uid, and again if a restart came in between."""
    pod_spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    meta = job.get("metadata") or {}
    capacity = json.loads((meta.get("annotations") or {}).get(ANNOTATION_PROFILER_CAPACITY) or "{}")
    for claim in pod_spec.get("resourceClaims") or ():
        template = claim.get("resourceClaimTemplateName")
        if template and meta.get("uid"):
            kube.create(build_profiler_claim_template(
                name=template, namespace=meta["namespace"], gpu_product=request.gpu_product, device_class=device_class,
                owner={"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]},
                capacity=capacity or None))


def _pod_state(pods: Sequence[dict[str, Any]], *, cfg: OperatorConfig) -> str:
    """E.g. " (pod Pending: 0/4 nodes are available: ...; falls back to the estimate after 600 s)"."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        unscheduled = [c.get("message") for c in status.get("conditions") or ()
                       if c.get("type") == "PodScheduled" and c.get("status") == "False"]
        if unscheduled:
            return (f" (pod Pending: {unscheduled[0] or 'not scheduled'}; the estimate stands in after "
                    f"{cfg.profiler_unschedulable_seconds:.0f} s)")
    return ""



def cancel_local_runs() -> None:
    """Stop every local profiler subprocess (operator shutdown)."""
    with _local_lock:
        for run in _local_runs.values():
            run.cancel()
        _local_runs.clear()


def _progress_text(progress: dict[str, Any] | None) -> str:
    """E.g. "batch sweep: point 3 of 12 (measuring batch 8), 41 s"."""
    if not progress:
        return "starting the profiler"
    text = str(progress.get("phase") or "profiling")
    if progress.get("point") is not None and progress.get("of"):
        text += f": point {progress['point']} of {progress['of']}"
    if progress.get("message"):
        text += f" ({progress['message']})"
    if progress.get("elapsedSeconds") is not None:
        text += f", {float(progress['elapsedSeconds']):.0f} s"
    return text

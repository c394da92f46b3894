"""kopf handlers: parse → profile → plan → apply → status. Thin on purpose.

Decisions live in ``spec``, ``planning``, ``profiling``, ``builders`` and ``status`` (all pure);
API writes go through ``kube``. Handlers only wire them together and turn outcomes into phases,
conditions and Events. Expected problems (a bad spec, a missing Secret, no matching GPUs) become a
condition with a reason and a message and a retry later — never an exception loop.

GPU inventory comes from kopf indexes (in-memory, watch-fed caches of GPU nodes, GPU-requesting
pods, NVIDIA ResourceSlices and allocated claims), so planning reads no API at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf

from slm_operator import API_VERSION, GROUP, PLURAL, kube
from slm_operator.builders.children import (
    ANNOTATION_MECHANISM,
    ANNOTATION_PRODUCT,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    MANAGED_BY,
    build_group_statefulset,
    build_resource_claim,
    build_service,
    claim_name,
    endpoint_url,
    owner_reference,
)
from slm_operator.config import OperatorConfig
from slm_operator.planning.inventory import (
    DEVICE_PLUGIN_RESOURCES,
    DRA_DRIVER,
    LABEL_PRODUCT,
    Inventory,
    PlacedGroup,
    build_inventory,
    product_memory_gib,
    unbound_demand,
)
from slm_operator.planning.plan import Plan, PlanningError, make_plan
from slm_operator.profile_source import ProfileFailed, ProfilePending, cancel_local_runs, obtain_profile
from slm_operator.spec import SLMServiceSpec, SpecError, parse_spec
from slm_operator.status import (
    condition,
    merge_conditions,
    now_iso,
    placement_summary,
    profile_summary,
    serving_phase,
    status_patch,
)

RESOURCE = (GROUP, API_VERSION, PLURAL)
CONFIG = OperatorConfig.from_env()
_WATCHED = {ns for ns in CONFIG.watch_namespace.split(",") if ns}


def _ours(namespace: str | None, **_: Any) -> bool:
    """SLMServices of the watched namespaces (all when none is set).

    NB: kopf itself always watches cluster-wide, because the GPU inventory (nodes, GPU pods and
    claims of every namespace) must be complete even when only some namespaces are served.
    """
    return not _WATCHED or namespace in _WATCHED
RETRY_SECONDS = CONFIG.retry_seconds
#: A local (simulated) profile takes seconds to minutes; a profiler Job on a GPU takes minutes.
PROFILE_POLL_SECONDS = 3 if CONFIG.profiler_runner == "local" else 30

# NB: the reconciler and the readiness handler run in executor threads and both write the status;
# one lock per SLMService makes each read-decide-write atomic, so neither overwrites the other
# with stale readiness.
_object_locks: dict[tuple[str, str], threading.Lock] = {}
_object_locks_guard = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    with _object_locks_guard:
        return _object_locks.setdefault((namespace, name), threading.Lock())


# NB: plans read the GPU inventory and applies consume it; two services planned at once on one
# snapshot would both take the same free GPUs. Planning + applying is serialised (milliseconds
# each), and groups just applied are remembered until the StatefulSet watch reports them.
_planning_lock = threading.Lock()
_RECENT_TTL_SECONDS = 120.0
_recent_groups: dict[str, tuple[float, PlacedGroup]] = {}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own prefix for kopf's bookkeeping, so `kubectl get -o yaml` shows whose it is.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # NB: one replica with a Recreate strategy; peering would need extra RBAC and a CRD for nothing.
    settings.peering.standalone = True
    # Our phase changes and failures are posted explicitly (kopf.event); kopf's own per-handler
    # chatter ("failed temporarily" every poll) stays in the log, not in Events.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 32


@kopf.on.cleanup()
def stop_profilers(**_: Any) -> None:
    cancel_local_runs()


# --- Indexes: the GPU inventory, kept current by watches ------------------------------------------

@kopf.index("nodes")
def gpu_nodes(name: str, labels: Mapping[str, str], spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any):
    if LABEL_PRODUCT not in labels:
        return None
    return {name: {
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"unschedulable": spec.get("unschedulable", False)},
        "status": {"allocatable": dict(status.get("allocatable") or {}),
                   "conditions": [dict(c) for c in status.get("conditions") or () if c.get("type") == "Ready"]},
    }}


@kopf.index("pods")
def gpu_pods(uid: str, namespace: str, labels: Mapping[str, str], spec: Mapping[str, Any],
             status: Mapping[str, Any], **_: Any):
    containers = []
    for c in spec.get("containers") or ():
        res = c.get("resources") or {}
        wanted = {r: v for part in ("requests", "limits") for r, v in (res.get(part) or {}).items()
                  if r in DEVICE_PLUGIN_RESOURCES}
        if wanted:
            containers.append({"resources": {"requests": wanted}})
    if not containers:
        return None
    pod = {"spec": {"nodeName": spec.get("nodeName"), "containers": containers},
           "status": {"phase": status.get("phase")}}
    if labels.get(LABEL_MANAGED_BY) == MANAGED_BY and LABEL_SERVICE in labels:
        pod["group"] = f"{namespace}/{labels[LABEL_SERVICE]}-g{labels.get(LABEL_GROUP, '0')}"
    return {uid: pod}


@kopf.index("resource.k8s.io", "v1", "resourceslices")
def gpu_slices(name: str, spec: Mapping[str, Any], **_: Any):
    if spec.get("driver") != DRA_DRIVER:
        return None
    return {name: {"spec": dict(spec)}}


@kopf.index("resource.k8s.io", "v1", "resourceclaims")
def gpu_claims(uid: str, namespace: str, name: str, status: Mapping[str, Any], **_: Any):
    allocation = status.get("allocation")
    return {uid: {"name": f"{namespace}/{name}", "status": {"allocation": dict(allocation)}}} if allocation else None


@kopf.index("apps", "v1", "statefulsets", labels={LABEL_MANAGED_BY: MANAGED_BY})
def slm_groups(namespace: str, name: str, labels: Mapping[str, str], annotations: Mapping[str, str],
               spec: Mapping[str, Any], **_: Any):
    """Our GPU groups: what each was promised, so capacity not yet bound is not planned twice."""
    claims = [c.get("resourceClaimName") for c in (spec.get("template") or {}).get("spec", {}).get("resourceClaims") or ()]
    key = f"{namespace}/{name}"
    return {key: PlacedGroup(
        key=key, service=f"{namespace}/{labels.get(LABEL_SERVICE)}", product=annotations.get(ANNOTATION_PRODUCT, ""),
        mechanism=annotations.get(ANNOTATION_MECHANISM, ""), replicas=int(spec.get("replicas") or 0),
        claim=f"{namespace}/{claims[0]}" if claims and claims[0] else None,
    )}


def _values(index: Any) -> list[Any]:
    """Every value of a kopf index (a mapping of keys to collections of values)."""
    return [v for key in index for v in index[key]]


def _inventory(indexes: Mapping[str, Any], *, exclude_service: str | None = None) -> Inventory:
    pods = _values(indexes["gpu_pods"])
    claims = _values(indexes["gpu_claims"])
    groups = {g.key: g for g in _values(indexes["slm_groups"])}
    now = time.monotonic()
    for key, (at, group) in list(_recent_groups.items()):
        if key in groups or now - at > _RECENT_TTL_SECONDS:
            _recent_groups.pop(key, None)  # the watch caught up (or the object is long gone)
        else:
            groups[key] = group
    bound: dict[str, int] = {}
    node_of: dict[str, str] = {}
    for pod in pods:
        if pod.get("group") and pod["spec"].get("nodeName"):
            bound[pod["group"]] = bound.get(pod["group"], 0) + 1
            node_of.setdefault(pod["group"], pod["spec"]["nodeName"])
    demand = unbound_demand(groups=groups.values(), bound_pods=bound, group_nodes=node_of,
                            allocated_claims=[c["name"] for c in claims], exclude_service=exclude_service)
    return build_inventory(nodes=_values(indexes["gpu_nodes"]), pods=pods,
                           resource_slices=_values(indexes["gpu_slices"]), resource_claims=claims,
                           demand=demand)


# --- The SLMService reconciler ----------------------------------------------------------------------

@kopf.on.resume(*RESOURCE, id="reconcile", when=_ours)
@kopf.on.create(*RESOURCE, id="reconcile", when=_ours)
@kopf.on.update(*RESOURCE, id="reconcile", when=_ours)
# NB: waiting for something outside the spec (a Secret, free GPUs) is a timer's job, not a handler
# retry's: kopf records every retry in an annotation (an API write each time), a timer writes
# nothing unless the status changes. The per-object lock keeps it from racing the change handlers.
@kopf.timer(*RESOURCE, id="retry-pending", interval=RETRY_SECONDS, idle=RETRY_SECONDS,
            when=lambda status, namespace, **_: (status or {}).get("phase") in ("Pending", "Degraded")
            and _ours(namespace))
def reconcile(
    body: kopf.Body, spec: Mapping[str, Any], name: str, namespace: str, uid: str,
    meta: Mapping[str, Any], status: Mapping[str, Any], logger: logging.Logger, **kwargs: Any,
) -> None:
    with _lock_for(namespace, name):
        _reconcile(body=body, spec=spec, name=name, namespace=namespace, uid=uid, meta=meta, status=status,
                   logger=logger, indexes=kwargs)


def _reconcile(
    *, body: kopf.Body, spec: Mapping[str, Any], name: str, namespace: str, uid: str,
    meta: Mapping[str, Any], status: Mapping[str, Any], logger: logging.Logger, indexes: Mapping[str, Any],
) -> None:
    generation = meta.get("generation")
    current = dict(status or {})
    report = _Reporter(body=body, name=name, namespace=namespace, current=current, generation=generation)

    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        return report.fail("Planned", "InvalidSpec", str(exc))

    ref = parsed.engine.hf_token_secret_ref
    if ref and not kube.secret_exists(name=ref.name, namespace=namespace):
        report.pending("Available", "SecretNotFound",
                       f"Secret {namespace}/{ref.name} (spec.engine.hfTokenSecretRef) does not exist; create it "
                       f"with key {ref.key!r}, e.g. kubectl create secret generic {ref.name} --from-literal={ref.key}=...")
        return  # the retry-pending timer looks again

    groups = _list_groups(name=name, namespace=namespace)
    # NB: without spec.gpu.product, keep the product the service already runs on: picking the
    # busiest free product anew on every reconcile would move Ready replicas for nothing. Only a
    # first placement without a product needs an inventory before the one planning builds.
    running_on = (current.get("profile") or {}).get("gpuProduct") if groups else None
    product = parsed.gpu.product or running_on or _busiest_free_product(_inventory(indexes))
    if product is None:
        report.pending("Planned", "NoMatchingGPUs",
                       "the cluster has no node labelled nvidia.com/gpu.product; install NVIDIA GPU feature "
                       "discovery (or the GPU operator) so GPU nodes are labelled")
        return

    try:
        memory_gib = product_memory_gib(nodes=_values(indexes["gpu_nodes"]), product=product)
        profile = obtain_profile(spec=parsed, gpu_product=product, cfg=CONFIG, gpu_memory_gib=memory_gib)
    except ProfilePending as pending:
        report.profiling(pending.progress)
        raise kopf.TemporaryError(f"profiling: {pending.progress}", delay=PROFILE_POLL_SECONDS)
    except ProfileFailed as exc:
        return report.fail("Profiled", "ProfilingFailed", str(exc))
    except (SpecError, ValueError) as exc:
        return report.fail("Profiled", _reason_of(exc, "ProfilingImpossible"), str(exc))
    report.profiled(profile)

    mechanisms = {g.get("mechanism") for g in groups}
    with _planning_lock:
        inventory = _inventory(indexes, exclude_service=f"{namespace}/{name}")
        try:
            plan = make_plan(spec=parsed, profile=profile, inventory=inventory, existing_groups=len(groups),
                             current_mechanism=mechanisms.pop() if len(mechanisms) == 1 else None,
                             default_sharing=CONFIG.default_sharing)
        except PlanningError as exc:
            report.pending("Planned", exc.reason, exc.message)
            return
        try:
            _apply_children(name=name, namespace=namespace, uid=uid, spec=parsed, plan=plan, existing=groups)
        except kube.ApiRejected as exc:
            # NB: a 4xx other than 409 will be rejected again on retry; say why instead of looping.
            return report.fail("Progressing", "ApplyFailed", str(exc))
    report.serving(plan=plan, groups=_list_groups(name=name, namespace=namespace),
                   endpoint=endpoint_url(name=name, namespace=namespace))
    logger.info("planned %s", plan.explanation)


_last_ready: dict[str, int] = {}


@kopf.on.event("apps", "v1", "statefulsets", labels={LABEL_MANAGED_BY: MANAGED_BY})
def group_readiness_changed(labels: Mapping[str, str], namespace: str, name: str, type: str,
                            status: Mapping[str, Any], **_: Any) -> None:
    """Fold the readiness of every GPU group into the owner's status (no re-plan, no child writes).

    NB: an event handler, not a field handler: kopf stores nothing on the StatefulSet for it. Most
    StatefulSet events don't change readiness (revisions, observed generations); those cost no
    API call at all, and the status patch below is skipped when nothing changed.
    """
    key = f"{namespace}/{name}"
    if type == "DELETED":
        _last_ready.pop(key, None)
    ready_now = int((status or {}).get("readyReplicas") or 0)
    if type != "DELETED" and _last_ready.get(key) == ready_now:
        return
    _last_ready[key] = ready_now
    name = labels.get(LABEL_SERVICE)
    if not name:
        return
    with _lock_for(namespace, name):
        owner = kube.get_service(name=name, namespace=namespace)
        current = dict((owner or {}).get("status") or {})
        placement = dict(current.get("placement") or {})
        if not placement:
            return  # the reconciler has not placed anything yet; it reads readiness itself
        groups = _list_groups(name=name, namespace=namespace)
        ready = sum(g["readyReplicas"] for g in groups)
        placement |= {"readyReplicas": ready, "ready": f"{ready}/{placement.get('totalReplicas', 0)}",
                      "groups": _status_groups(groups), "nodes": sorted({g["node"] for g in groups if g.get("node")})}
        report = _Reporter(body=owner, name=name, namespace=namespace, current=current,
                           generation=current.get("observedGeneration"))
        phase, conditions = serving_phase(
            total_replicas=placement.get("totalReplicas", 0), ready_replicas=ready,
            placeable_gpus=placement.get("gpus", 0), requested_gpus=placement.get("requestedGPUs", 0),
            explanation=current.get("message", ""),
        )
        report.write(phase=phase, conditions=conditions, extra={"placement": placement})


# --- Helpers -------------------------------------------------------------------------------------------

def _busiest_free_product(inventory: Inventory) -> str | None:
    """With no spec.gpu.product: the product with the most free GPUs (device-plugin slots count 1/slots)."""
    free: dict[str, float] = {}
    for pool in inventory.pools:
        free[pool.product] = free.get(pool.product, 0.0) + pool.free / max(pool.slots_per_gpu, 1)
    return max(sorted(free), key=lambda p: free[p]) if free else None


def _reason_of(exc: Exception, default: str) -> str:
    kind = type(exc).__name__
    return {"UnknownGpuError": "UnknownGPUProduct", "UnknownModelError": "UnknownModel",
            "SpecError": "InvalidSpec"}.get(kind, default)


_STATUS_GROUP_KEYS = ("name", "index", "node", "replicas", "readyReplicas", "claim")


def _status_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups as the CRD's status schema holds them (unknown keys would be pruned, and then every
    comparison with the stored status would differ and write again)."""
    return [{k: g[k] for k in _STATUS_GROUP_KEYS if k in g} for g in groups]


def _list_groups(*, name: str, namespace: str) -> list[dict[str, Any]]:
    selector = f"{LABEL_SERVICE}={name},{LABEL_MANAGED_BY}={MANAGED_BY}"
    sets = kube.list_objects(api_version="apps/v1", kind="StatefulSet", namespace=namespace, label_selector=selector)
    pods = kube.list_objects(api_version="v1", kind="Pod", namespace=namespace, label_selector=selector)
    node_of = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            node_of.setdefault(pod["metadata"]["labels"].get(LABEL_GROUP), node)
    groups = []
    for sts in sorted(sets, key=lambda s: int(s["metadata"]["labels"].get(LABEL_GROUP, "0"))):
        index = sts["metadata"]["labels"].get(LABEL_GROUP, "0")
        claims = [c.get("resourceClaimName") for c in sts["spec"]["template"]["spec"].get("resourceClaims") or ()]
        group = {"name": sts["metadata"]["name"], "index": int(index),
                 "replicas": sts["spec"].get("replicas", 0),
                 "readyReplicas": (sts.get("status") or {}).get("readyReplicas") or 0,
                 "mechanism": (sts["metadata"].get("annotations") or {}).get(ANNOTATION_MECHANISM)}
        if node_of.get(index):
            group["node"] = node_of[index]
        if claims and claims[0]:
            group["claim"] = claims[0]
        groups.append(group)
    return groups


def _apply_children(
    *, name: str, namespace: str, uid: str, spec: SLMServiceSpec, plan: Plan, existing: list[dict[str, Any]]
) -> None:
    owner = owner_reference(name=name, uid=uid)
    kube.apply(build_service(name=name, namespace=namespace, owner=owner))
    image = spec.engine.image or CONFIG.default_engine_image
    for index in range(plan.placeable_gpus):
        if plan.mechanism == "dra":
            kube.apply(build_resource_claim(name=name, namespace=namespace, index=index, plan=plan, owner=owner))
        sts = build_group_statefulset(name=name, namespace=namespace, index=index, spec=spec, plan=plan,
                                      image=image, owner=owner)
        kube.apply(sts)
        key = f"{namespace}/{sts['metadata']['name']}"
        _recent_groups[key] = (time.monotonic(), PlacedGroup(
            key=key, service=f"{namespace}/{name}", product=plan.gpu_product, mechanism=plan.mechanism,
            replicas=plan.replicas_per_gpu,
            claim=f"{namespace}/{claim_name(name=name, index=index, plan=plan)}" if plan.mechanism == "dra" else None))
    # Scale in whole GPU groups; claims no group references any more go with them.
    for group in existing:
        if group["index"] >= plan.placeable_gpus:
            kube.delete(api_version="apps/v1", kind="StatefulSet", name=group["name"], namespace=namespace)
    wanted = {claim_name(name=name, index=i, plan=plan) for i in range(plan.placeable_gpus)} if (
        plan.mechanism == "dra") else set()
    stale = {g["claim"] for g in existing if g.get("claim")} - wanted
    for claim in sorted(stale):
        kube.delete(api_version="resource.k8s.io/v1", kind="ResourceClaim", name=claim, namespace=namespace)


class _Reporter:
    """Turns outcomes into status patches and Events; writes only what changed."""

    def __init__(self, *, body: Mapping[str, Any], name: str, namespace: str, current: dict[str, Any],
                 generation: int | None) -> None:
        self.body, self.name, self.namespace = body, name, namespace
        self.current, self.generation = current, generation
        self.extra: dict[str, Any] = {}

    def write(self, *, phase: str, conditions: list[dict[str, Any]], extra: Mapping[str, Any] | None = None,
              message: str | None = None) -> None:
        desired = dict(self.extra) | dict(extra or {})
        desired["phase"] = phase
        desired["conditions"] = merge_conditions(current=self.current.get("conditions") or (), updates=conditions,
                                                 generation=self.generation, now=now_iso())
        if self.generation is not None:
            desired["observedGeneration"] = self.generation
        if message is not None:
            desired["message"] = message
        patch = status_patch(self.current, desired)
        if not patch:
            return
        old_phase = self.current.get("phase")
        kube.patch_service_status(name=self.name, namespace=self.namespace, status=patch)
        self.current |= patch
        if phase != old_phase:
            kopf.event(dict(self.body), type="Warning" if phase in ("Failed", "Degraded") else "Normal",
                       reason=phase, message=message or _summary(conditions))

    def fail(self, type_: str, reason: str, message: str) -> None:
        self.write(phase="Failed", conditions=[condition(type_, False, reason, message)], message=message)
        kopf.event(dict(self.body), type="Warning", reason=reason, message=message)

    def pending(self, type_: str, reason: str, message: str) -> None:
        self.write(phase="Pending", conditions=[condition(type_, False, reason, message)], message=message)

    def profiling(self, progress: str) -> None:
        self.extra["profile"] = dict(self.current.get("profile") or {}) | {"progress": progress}
        self.write(phase="Profiling", conditions=[condition("Profiled", None, "Profiling", progress)],
                   message=f"profiling: {progress}")

    def profiled(self, profile: Any) -> None:
        self.extra["profile"] = profile_summary(profile)
        if "progress" in (self.current.get("profile") or {}):
            self.extra["profile"]["progress"] = None  # a merge patch deletes it once profiling is done
        self._profiled = condition("Profiled", True, f"Profile{profile.source.capitalize()}",
                                   profile.explanation or f"{profile.source} profile")

    def serving(self, *, plan: Plan, groups: list[dict[str, Any]], endpoint: str) -> None:
        ready = sum(g["readyReplicas"] for g in groups)
        phase, conditions = serving_phase(total_replicas=plan.total_replicas, ready_replicas=ready,
                                          placeable_gpus=plan.placeable_gpus, requested_gpus=plan.gpus,
                                          explanation=plan.explanation)
        self.write(phase=phase, conditions=[self._profiled, *conditions], message=plan.explanation,
                   extra={"placement": placement_summary(plan=plan, ready_replicas=ready, groups=_status_groups(groups),
                                                         requested_gpus=plan.gpus),
                          "endpoint": endpoint})


def _summary(conditions: list[dict[str, Any]]) -> str:
    return "; ".join(f"{c['type']}={c['status']} ({c['reason']}): {c['message']}" for c in conditions)

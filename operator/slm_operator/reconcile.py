"""The work behind the SLMService handlers: parse → profile → plan → apply → status.

``handlers`` registers the kopf decorators and calls the two entry points here:
:func:`reconcile_service` (create, update, resume and the retry timer) and :func:`fold_readiness`
(a GPU group's readiness changed). Decisions are made by the pure cores — ``spec``, ``profiling``,
``planning``, ``builders``, ``status`` — and every outcome is one
:class:`~slm_operator.status.StatusUpdate` that :class:`~slm_operator.reporter.StatusWriter` writes.

Expected problems are outcomes, not exceptions: a :class:`~slm_operator.errors.PermanentError`
becomes ``Failed`` with its reason, a planning :class:`~slm_operator.errors.TemporaryError`
``Pending``; the retry timer looks again. Only :class:`~slm_operator.errors.ProfilePending`
propagates, for the handler to poll the measurement. Anything else is a bug: kopf logs it and
retries with backoff.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from slm_operator import kube, metrics
from slm_operator.builders.children import claim_name, endpoint_picker, endpoint_url
from slm_operator.config import OperatorConfig
from slm_operator.constants import (
    ANNOTATION_START,
    ANNOTATION_START_AT,
    ANNOTATION_START_DEVICE,
    LABEL_GPU_PRODUCT,
    LABEL_SERVICE,
    MANAGED_BY_SELECTOR,
    START_GRANTED,
)
from slm_operator.deploy import apply_children, read_groups, read_share_devices, reserve_groups
from slm_operator.errors import ApplyDeferred, ApplyRejected, PermanentError, PlanningError, ProfilePending, SpecError
from slm_operator.gpu_index import GpuIndex, PlacementLedger, StartGrants, busiest_free_product
from slm_operator.locks import ObjectLocks, ReadinessMemo
from slm_operator.planning.groups import GroupState
from slm_operator.planning.inventory import Inventory
from slm_operator.planning.moves import current_mechanism, lost_nodes, reshaped, staying_groups
from slm_operator.planning.plan import Plan, make_plan
from slm_operator.planning.start_gate import grants
from slm_operator.profile_source import obtain_profile
from slm_operator.reporter import StatusWriter
from slm_operator.spec import parse_spec
from slm_operator.status import (
    StatusUpdate,
    failed,
    pending,
    profiled,
    profiling,
    readiness,
    retrying,
    routed,
    serving,
    waiting_for_capacity,
)
from slm_operator.wakeups import CapacityWaiters

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OperatorState:
    """What every handler of one operator process shares."""

    config: OperatorConfig
    ledger: PlacementLedger = dataclasses.field(default_factory=PlacementLedger)
    locks: ObjectLocks = dataclasses.field(default_factory=ObjectLocks)
    readiness: ReadinessMemo = dataclasses.field(default_factory=ReadinessMemo)
    # NB: plans read the GPU inventory and applies consume it; two services planned at once on one
    # snapshot would both take the same free GPUs. Planning is serialised (milliseconds each) and
    # records its groups in the ledger until the StatefulSet watch reports them; the API writes
    # that apply them run outside the lock.
    planning_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    #: dra-shares start permissions: granted but not yet seen by the pod watch; one decision at a time.
    start_grants: StartGrants = dataclasses.field(default_factory=StartGrants)
    start_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    #: Services waiting for GPU capacity: woken by the inventory's watches, not polled (``wakeups``).
    waiters: CapacityWaiters = dataclasses.field(default_factory=CapacityWaiters)


def reconcile_service(
    *, state: OperatorState, index: GpuIndex, body: Mapping[str, Any], spec: Mapping[str, Any], name: str,
    namespace: str, uid: str, meta: Mapping[str, Any], status: Mapping[str, Any],
) -> None:
    """Bring one SLMService's children and status to what its spec asks. Raises ProfilePending
    while a measurement runs (after writing its progress)."""
    started = time.monotonic()
    key = f"{namespace}/{name}"
    # NB: before planning: capacity that frees while this plans wakes it again (``wakeups``).
    mark = state.waiters.mark()
    writer = StatusWriter(body=body, name=name, namespace=namespace, current=status or {},
                          generation=meta.get("generation"))
    outcome: str | None = "Error"
    try:
        # NB: the readiness handler writes the same status from another thread; the lock makes each
        # read-decide-write atomic, so neither overwrites the other with stale readiness.
        with state.locks.of(namespace, name):
            _reconcile(state=state, index=index, writer=writer, spec=spec, name=name, namespace=namespace, uid=uid)
        outcome = writer.current.get("phase")
        if waiting_for_capacity(writer.current):
            state.waiters.wait(key, product=(spec.get("gpu") or {}).get("product"), mark=mark)
        else:
            state.waiters.done(key)
    except ProfilePending:
        state.waiters.done(key)
        outcome = "Profiling"
        raise
    finally:
        metrics.observe_reconcile(outcome=outcome, seconds=time.monotonic() - started)


def _reconcile(
    *, state: OperatorState, index: GpuIndex, writer: StatusWriter, spec: Mapping[str, Any], name: str,
    namespace: str, uid: str,
) -> None:
    cfg = state.config
    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        return writer.write(failed("Planned", exc))

    for field, ref in (("hfTokenSecretRef", parsed.engine.hf_token_secret_ref),
                       ("apiKeySecretRef", parsed.engine.api_key_secret_ref)):
        if ref and not kube.secret_exists(name=ref.name, namespace=namespace):
            return writer.write(pending(
                "Available", "SecretNotFound",
                f"Secret {namespace}/{ref.name} (spec.engine.{field}) does not exist; create it with key "
                f"{ref.key!r}, e.g. kubectl create secret generic {ref.name} --from-literal={ref.key}=..."))

    groups = read_groups(name=name, namespace=namespace)
    # NB: without spec.gpu.product, keep the product the service already runs on: picking the
    # busiest free product anew on every reconcile would move Ready replicas for nothing. Only a
    # first placement without a product needs an inventory before the one planning builds.
    running_on = (writer.current.get("profile") or {}).get("gpuProduct") if groups else None
    product = parsed.gpu.product or running_on or busiest_free_product(index.inventory(ledger=state.ledger))
    if product is None:
        return writer.write(pending(
            "Planned", "NoMatchingGPUs",
            f"the cluster has no node labelled {LABEL_GPU_PRODUCT}; install NVIDIA GPU feature "
            "discovery (or the GPU operator) so GPU nodes are labelled"))

    try:
        profile = obtain_profile(spec=parsed, gpu_product=product, cfg=cfg,
                                 gpu_memory_gib=index.gpu_memory_gib(product),
                                 gpu_pools=lambda: index.inventory(ledger=state.ledger).for_product(product))
    except ProfilePending as exc:
        writer.write(profiling(current=writer.current, progress=exc.progress))
        raise
    except PermanentError as exc:
        return writer.write(_profiling_failed(exc, current=writer.current))
    found = profiled(profile=profile, current=writer.current)

    # NB: groups on a lost node or on another product are not counted as placed: the plan must find
    # room for their replacements beside them (planning.moves).
    lost = lost_nodes(nodes=index.nodes(), groups=groups, now=datetime.datetime.now(datetime.timezone.utc),
                      grace_seconds=cfg.node_not_ready_seconds)
    staying = staying_groups(groups=groups, product=product, lost=lost)

    def plan_beside(staying: list[GroupState], inventory: Inventory) -> Plan:
        current = current_mechanism(staying)
        counts = collections.Counter(g.mechanism for g in staying)
        return make_plan(spec=parsed, profile=profile, inventory=inventory,
                         existing_groups=counts[current] if current else 0, current_mechanism=current,
                         default_sharing=cfg.default_sharing,
                         default_allocation_policy=cfg.device_plugin_allocation_policy,
                         existing_replicas=sum(g.replicas for g in staying if g.mechanism == "dra-shares"),
                         existing_by_mechanism=counts)

    with state.planning_lock:
        inventory = index.inventory(ledger=state.ledger)
        try:
            plan = plan_beside(staying, inventory)
            # NB: groups with another k per GPU or DRA claim move too (planning.moves.reshaped): plan
            # again with room for their replacements, not counting them as placed.
            moving = [g for g in staying if reshaped(g, plan=plan, claim=claim_name(
                name=name, index=g.index, plan=plan) if plan.mechanism == "dra" else None)]
            if moving:
                plan = plan_beside([g for g in staying if g not in moving], inventory)
        except PlanningError as exc:
            update = pending("Planned", exc.reason, exc.message)
            if groups:
                # NB: nothing is applied or deleted: the groups that run keep serving where they are.
                update = update.with_moves(moving=(), waiting=(
                    f"group(s) {', '.join(g.name for g in groups)} keep serving where they are until a new "
                    f"placement fits: {exc.message}",))
            return writer.write(update.with_profile(found))
        # NB: the groups are in the ledger before the lock is released, and applied after it: the
        # next service plans around them while this one's API writes are under way.
        reserved = reserve_groups(name=name, namespace=namespace, plan=plan, existing=groups, ledger=state.ledger,
                                  lost=lost)
    asked = parsed.routing.inference_pool
    picker = endpoint_picker(name=name, asked=asked, defaults=cfg.endpoint_picker) if asked else None
    try:
        applied = apply_children(
            name=name, namespace=namespace, uid=uid, spec=parsed, plan=plan, reserved=reserved, existing=groups,
            image=parsed.engine.image or cfg.default_engine_image, ledger=state.ledger,
            engine_defaults=cfg.engine_defaults(), picker=picker,
            pool_may_exist=any(c.get("type") == "Routed" for c in writer.current.get("conditions") or ()))
    except ApplyRejected as exc:
        # NB: invalid will be rejected again on the next try; say why instead of looping (the
        # `retry-rejected` timer still looks now and then: an admission policy can be lifted).
        return writer.write(failed("Progressing", exc).with_profile(found))
    except ApplyDeferred as exc:
        return writer.write(retrying("Progressing", exc).with_profile(found))
    devices = read_share_devices(name=name, namespace=namespace) if plan.shares_mode else ()
    update = serving(name=name, plan=plan, groups=read_groups(name=name, namespace=namespace), devices=devices,
                     endpoint=endpoint_url(name=name, namespace=namespace))
    update = update.with_moves(moving=applied.rollout.moving, waiting=applied.rollout.waiting)
    writer.write(update.with_profile(found).with_routing(routed(name=name, routing=applied.routing, picker=picker),
                                                         current=writer.current))
    logger.info("planned %s/%s: %s", namespace, name, plan.explanation)


def _profiling_failed(exc: PermanentError, *, current: Mapping[str, Any]) -> StatusUpdate:
    """Failed in profiling: no progress left behind, and no second Warning Event for the same failure
    (the ``retry-profiling`` timer looks at a failed Job every interval until it is deleted)."""
    update = failed("Profiled", exc)
    if "progress" in (current.get("profile") or {}):
        update = dataclasses.replace(update, fields={"profile": {"progress": None}})  # a merge patch deletes it
    if current.get("phase") == "Failed" and current.get("message") == exc.message:
        update = dataclasses.replace(update, warning=None)
    return update


def fold_readiness(
    *, state: OperatorState, labels: Mapping[str, str], namespace: str, name: str, event_type: str,
    status: Mapping[str, Any],
) -> None:
    """Fold the readiness of every GPU group of the StatefulSet's service into that service's
    status (no re-plan, no child writes). Events that leave readiness as it was cost nothing."""
    ready_now = int((status or {}).get("readyReplicas") or 0)
    key = f"{namespace}/{name}"
    if not state.readiness.changed(key, ready_now, deleted=event_type == "DELETED"):
        return
    try:
        _fold_readiness(state=state, labels=labels, namespace=namespace)
    except Exception:
        # NB: not folded (an API outage): forget what was seen, so the next event of this
        # StatefulSet — at the latest the re-list when the watch reconnects — folds it again,
        # instead of the status saying "1/2" for good.
        state.readiness.forget(key)
        raise


def _fold_readiness(*, state: OperatorState, labels: Mapping[str, str], namespace: str) -> None:
    service = labels.get(LABEL_SERVICE)
    if not service:
        return
    with state.locks.of(namespace, service):
        owner = kube.get_service(name=service, namespace=namespace)
        if owner is None:
            return  # the service is gone; its children follow
        current = dict(owner.get("status") or {})
        shares = (current.get("placement") or {}).get("mechanism") == "dra-shares"
        devices = read_share_devices(name=service, namespace=namespace) if shares else None
        update = readiness(current=current, groups=read_groups(name=service, namespace=namespace), devices=devices)
        if update is None:
            return  # nothing placed yet, or a phase only the reconciler leaves (status.RECONCILER_PHASES)
        writer = StatusWriter(body=owner, name=service, namespace=namespace, current=current,
                              generation=current.get("observedGeneration"))
        writer.write(update)


def reconcile_services_on(
    *, state: OperatorState, index: GpuIndex, node: str, watched: Callable[[str], bool], pinned_only: bool = False,
) -> None:
    """A GPU node is gone, or NotReady past the grace period: reconcile now every service of a
    ``watched`` namespace with a replica on it, so its group moves (``planning.moves``) at once:
    not after the pod garbage collector (40 s) and the StatefulSet controller, and not only if its
    replicas turn NotReady. ``pinned_only`` (the node was cordoned): only the services with a group
    pinned there (those running there stay; one whose pods wait for the node moves). Errors are
    left to the services' own handlers and timers."""
    services = {(g.namespace, g.service) for g in index.pinned_to(node, ledger=state.ledger)}
    if not pinned_only:
        pods = kube.list_objects(api_version="v1", kind="Pod", label_selector=MANAGED_BY_SELECTOR)
        services |= {(pod["metadata"]["namespace"], pod["metadata"]["labels"][LABEL_SERVICE]) for pod in pods
                     if (pod.get("spec") or {}).get("nodeName") == node
                     and LABEL_SERVICE in (pod["metadata"].get("labels") or {})}
    services = {(namespace, name) for namespace, name in services if watched(namespace)}
    for namespace, name in sorted(services):
        if _reconcile_by_name(state=state, index=index, namespace=namespace, name=name):
            logger.info("GPU node %s is %s: reconciled %s/%s", node, "cordoned" if pinned_only else "gone or NotReady",
                        namespace, name)


def reconcile_woken(*, state: OperatorState, index: GpuIndex, key: str) -> None:
    """Reconcile ``namespace/name``, a service that waits for GPU capacity of a product whose free
    capacity grew (``wakeups.CapacityWaker``). One read, and a plan from the watches' inventory."""
    namespace, _, name = key.partition("/")
    if _reconcile_by_name(state=state, index=index, namespace=namespace, name=name):
        logger.info("GPU capacity freed: reconciled %s", key)
    else:
        state.waiters.done(key)


def _reconcile_by_name(*, state: OperatorState, index: GpuIndex, namespace: str, name: str) -> bool:
    """Read SLMService ``namespace/name`` and reconcile it outside kopf's handlers (an event of
    something else made it due); ``False`` when it is gone or going. A measurement in progress is
    left to its profiling timer."""
    body = kube.get_service(name=name, namespace=namespace)
    meta = (body or {}).get("metadata") or {}
    if body is None or meta.get("deletionTimestamp"):
        return False
    try:
        reconcile_service(state=state, index=index, body=body, spec=body.get("spec") or {}, name=name,
                          namespace=namespace, uid=meta.get("uid", ""), meta=meta, status=body.get("status") or {})
    except ProfilePending:
        pass  # NB: its profiling timer polls the measurement
    return True


def grant_starts(*, state: OperatorState, index: GpuIndex, watched: Callable[[str], bool]) -> None:
    """Give the start permission to the ``dra-shares`` pods that may start now: at most one starting
    (granted, not Ready) replica per physical GPU, across every service (``planning.start_gate``).

    Called on every event of a ``dra-shares`` pod or claim: a claim allocated, a pod Ready or gone.
    Pods of every namespace count; only those of ``watched`` namespaces are granted here (another
    operator serves the others, and reaches the same decision).
    """
    with state.start_lock:
        for pod, device in grants(state.start_grants.merged_with(index.starting_pods())):
            if not watched(pod.namespace):
                continue
            outcome = kube.annotate(api_version="v1", kind="Pod", name=pod.name, namespace=pod.namespace,
                                    annotations={ANNOTATION_START: START_GRANTED, ANNOTATION_START_DEVICE: device,
                                                 ANNOTATION_START_AT: _now_precise()})
            if outcome is kube.Outcome.APPLIED:
                state.start_grants.record(pod.key)
                logger.info("start granted to %s on %s", pod.key, device)


def _now_precise() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")

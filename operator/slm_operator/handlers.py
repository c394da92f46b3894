"""kopf wiring: settings, the GPU indexes, the own watches and the SLMService handlers. Nothing else.

The work is in ``reconcile`` (what a handler does), ``gpu_index`` (what an index keeps),
``reporter`` (how the status is written) and the pure cores below them; see
docs/architecture.md. Importing this module registers the handlers and reads the operator's
configuration from the environment (a bad setting raises ConfigError, which ``__main__`` reports).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from slm_operator import kube, metrics
from slm_operator.config import OperatorConfig
from slm_operator.constants import (
    API_VERSION,
    GROUP,
    LABEL_GPU_PRODUCT,
    LABEL_PACKED,
    LABEL_SERVICE,
    PLURAL,
)
from slm_operator.errors import ApplyRejected, ProfilePending, ProfilingFailed
from slm_operator.gpu_index import (
    Entries,
    GpuIndex,
    PodSlots,
    claim_of,
    group_of,
    node_entry,
    packed_pod_of,
    slice_entry,
)
from slm_operator.planning.inventory import cordoned, pod_gpu_requests
from slm_operator.planning.moves import seconds_until_lost
from slm_operator.profile_source import cancel_local_runs
from slm_operator.reconcile import (
    OperatorState,
    fold_readiness,
    grant_starts,
    reconcile_service,
    reconcile_services_on,
    reconcile_woken,
)
from slm_operator.status import waiting, waiting_for_capacity
from slm_operator.wakeups import CapacityWaker, NodeGraceTimers

logger = logging.getLogger(__name__)
RESOURCE = (GROUP, API_VERSION, PLURAL)
STATE = OperatorState(config=OperatorConfig.from_env())
_WATCHED = {ns for ns in STATE.config.watch_namespace.split(",") if ns}
#: A local (simulated) profile takes seconds to minutes; a profiler Job on a GPU takes minutes.
PROFILE_POLL_SECONDS = 3 if STATE.config.profiler_runner == "local" else min(30, STATE.config.retry_seconds)
#: A child the API server refused as invalid is applied again this many retry intervals later (an
#: admission policy may have been lifted), not every interval: the answer is most likely the same.
REJECTED_RETRY_FACTOR = 10
#: Watches end (and are resumed) after this long, so none outlives a connection the server forgot.
WATCH_SERVER_TIMEOUT_SECONDS = 300
#: The stop function of the /metrics endpoint while it serves.
_serving: list[Callable[[], None]] = []
#: What the operator's own list+watches keep (not kopf indexes: see gpu_index): the device-plugin
#: slots pods hold, our group StatefulSets, every allocated ResourceClaim, the dra-shares pods.
POD_SLOTS = PodSlots()
GROUPS = Entries(group_of)
CLAIMS = Entries(claim_of)
PACKED_PODS = Entries(packed_pod_of)
#: The own watches while they run.
_watches: list[kube.ListWatch] = []
#: kopf's live indexes, as the start-up hands them (for reactions to the own watches' events).
_kopf_indexes: dict[str, Any] = {}
#: Seconds the start-up waits for the own watches' first listings before kopf retries it.
LIST_WAIT_SECONDS = 60


def _ours(*, namespace: str | None, **_: Any) -> bool:
    """SLMServices of the watched namespaces (all when none is set).

    NB: kopf itself always watches cluster-wide (and so do the own watches), because the GPU
    inventory (nodes, GPU pods and claims of every namespace) must be complete even when only some
    namespaces are served.
    """
    return not _WATCHED or namespace in _WATCHED


def _waiting(*, status: Mapping[str, Any], namespace: str | None, **_: Any) -> bool:
    return waiting(status or {}) and _ours(namespace=namespace)


def _waiting_for_capacity(*, status: Mapping[str, Any], namespace: str | None, **_: Any) -> bool:
    return waiting_for_capacity(status or {}) and _ours(namespace=namespace)


def _profiling(*, status: Mapping[str, Any], namespace: str | None, **_: Any) -> bool:
    """Profiling, or Failed because a profiler Job failed: polled until the Job ends, or is deleted
    (which profiles again, no spec edit needed)."""
    status = status or {}
    failed = status.get("phase") == "Failed" and any(
        c.get("reason") == ProfilingFailed.reason for c in status.get("conditions") or ())
    return (failed or status.get("phase") == "Profiling") and _ours(namespace=namespace)


def _rejected(*, status: Mapping[str, Any], namespace: str | None, **_: Any) -> bool:
    """Failed because the API server refused a child (``ApplyFailed``): a policy that may be lifted."""
    status = status or {}
    return (status.get("phase") == "Failed" and _ours(namespace=namespace)
            and any(c.get("reason") == ApplyRejected.reason for c in status.get("conditions") or ()))


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, **indexes: Any) -> None:
    # Our own prefix for kopf's bookkeeping, so `kubectl get -o yaml` shows whose it is.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # NB: one replica with a Recreate strategy; peering would need extra RBAC and a CRD for nothing.
    settings.peering.standalone = True
    # Our phase changes and failures are posted explicitly (kopf.event, which these settings do not
    # filter); kopf's own per-handler log lines ("failed temporarily" at every profile poll, at ERROR)
    # stay in the log, not in Events: one Event per phase change, not one per poll.
    settings.posting.loggers = False
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    # NB: timeouts on every watch and on kopf's own requests: a half-open connection (a restarted
    # API server behind a load balancer) would otherwise stall a watch, and the operator with it.
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_SECONDS
    settings.watching.client_timeout = WATCH_SERVER_TIMEOUT_SECONDS + 30
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # NB: kopf watches no pod, StatefulSet or claim: every object kopf receives costs it a full
    # per-object pass at start-up (worse than linear in their number), and its list is one
    # unpaginated answer (1,000 groups: 16 MB of JSON, a hundred MiB as objects). Our own paged
    # watches keep them; the readiness fold runs off the StatefulSet one (``_group_changed``).
    # NB: kopf hands startup handlers its live indexes; scrapes build the gauges from them.
    _kopf_indexes.update({name: indexes[name] for name in GpuIndex.NAMES})
    index = _gpu_index(_kopf_indexes)
    metrics.watch_inventory(lambda: index.inventory(ledger=STATE.ledger))
    metrics.watch_services(SERVICES.items)
    if STATE.config.metrics_port and not _serving:
        _serving.append(metrics.serve(port=STATE.config.metrics_port))


def _service_entry(obj: Mapping[str, Any]) -> dict[Any, Any] | None:
    """A served SLMService's metrics entry; ``None`` for one of an unwatched namespace.

    NB: kept by an own watch, not a kopf index: kopf would hold every service at its start-up
    barrier (see gpu_index); a deleted service leaves the store, and its series go with it."""
    meta = obj.get("metadata") or {}
    if not _ours(namespace=meta.get("namespace")):
        return None
    return metrics.service_entry(namespace=meta.get("namespace") or "", name=meta.get("name") or "",
                                 status=obj.get("status"))


#: The served SLMServices' status, for the per-service metrics (gone with the service).
SERVICES = Entries(_service_entry)


def _gpu_index(indexes: Mapping[str, Any]) -> GpuIndex:
    return GpuIndex(indexes, pods=POD_SLOTS, groups=GROUPS, claims=CLAIMS, packed=PACKED_PODS)


#: kopf's context as its resource handlers see it, taken at the first node it indexes. NB: posting an
#: Event (a phase change) needs kopf's context variables, and its startup activities lack the event
#: queue's: our threads (readiness folds, the waker) run their work in a copy of this one.
_KOPF_CONTEXT: list[contextvars.Context] = []


def _kopf_context() -> contextvars.Context:
    return (_KOPF_CONTEXT[0] if _KOPF_CONTEXT else contextvars.copy_context()).copy()


#: Wakes the services that wait for GPU capacity when the inventory's watches say it grew.
WAKER = CapacityWaker(
    waiters=STATE.waiters,
    inventory=lambda: _gpu_index(_kopf_indexes).inventory(ledger=STATE.ledger),
    reconcile=lambda key: _kopf_context().run(reconcile_woken, state=STATE, index=_gpu_index(_kopf_indexes),
                                              key=key))


#: What the inventory last kept of each GPU node (``node_entry``), to poke the waker on changes only.
_NODES_SEEN: dict[str, Any] = {}
#: A reconcile of the services on each GPU node NotReady, due when its grace period is over.
NOT_READY = NodeGraceTimers()


def _capacity_changed(event_type: str, obj: Mapping[str, Any]) -> None:
    """A GPU pod's event (bound, ended, deleted), or a re-listing: the waker looks."""
    if event_type == "LISTED" or pod_gpu_requests(obj):
        WAKER.poke()


#: Readiness folds: off the StatefulSet watch's thread, a few at a time (each reads the service and
#: its groups), in kopf's context (a phase change posts an Event).
_FOLDS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="readiness")
#: Set when the operator stops: folds waiting to try again give up.
_folds_stopping = threading.Event()
#: Whether the StatefulSet watch has listed once (its first listing seeds the readiness memo).
_listed_once: list[bool] = []


def _group_changed(event_type: str, obj: Mapping[str, Any]) -> None:
    """One of our group StatefulSets changed (or all were listed again): fold its readiness into its
    service's status, and let the waker look (a group gone frees its GPUs).

    NB: a group of an unwatched namespace belongs to another operator's service (whose status this
    one may not write); the watch stays unfiltered for the inventory. After a listing (a watch
    resumed after a gap) every group is folded whose readiness the memo has not seen: the changes
    of the gap came as no events. The first listing only fills the memo: at start-up every service
    is reconciled (kopf's resume), which writes its readiness."""
    WAKER.poke()
    if event_type == "LISTED" and not _listed_once:
        _listed_once.append(True)
        for group in GROUPS.values():
            STATE.readiness.changed(group.key, group.ready_replicas)
        return
    if event_type == "LISTED":
        folds = [(group.namespace, group.name, {LABEL_SERVICE: group.service}, {"readyReplicas": group.ready_replicas})
                 for group in GROUPS.values()]
    else:
        meta = obj.get("metadata") or {}
        folds = [(meta.get("namespace") or "", meta.get("name") or "", meta.get("labels") or {},
                  obj.get("status") or {})]
    for namespace, name, labels, status in folds:
        if _ours(namespace=namespace):
            _FOLDS.submit(_kopf_context().run, _fold, event_type, namespace, name, labels, status)


#: Seconds before a failed fold is tried again: doubling from the first to the last (the watches').
FOLD_BACKOFF = kube.WATCH_BACKOFF


def _fold(event_type: str, namespace: str, name: str, labels: Mapping[str, str], status: Mapping[str, Any]) -> None:
    """Fold one group's readiness; on failure (an API outage) try again with backoff until it folds.

    NB: tried again here, not left to the group's next event: a group whose replicas were all Ready
    before the outage has no next event, and its service would say Deploying for good. Each try
    reads the service and its groups afresh, so a late one writes nothing stale."""
    delay = FOLD_BACKOFF[0]
    while True:
        try:
            fold_readiness(state=STATE, labels=labels, namespace=namespace, name=name, event_type=event_type,
                           status=status)
            return
        except Exception as exc:
            if delay == FOLD_BACKOFF[0]:
                logger.exception("folding the readiness of group %s/%s failed; trying again", namespace, name)
            else:
                logger.warning("folding the readiness of group %s/%s failed again: %s", namespace, name, exc)
        if _folds_stopping.wait(delay):
            return
        delay = min(delay * 2, FOLD_BACKOFF[1])


def _claim_changed(event_type: str, obj: Mapping[str, Any]) -> None:
    _start_gate(event_type, obj)
    WAKER.poke()


def _start_gate(event_type: str, obj: Mapping[str, Any]) -> None:
    """A ``dra-shares`` pod or claim changed (or was listed): the start gate may let a replica start.

    NB: a reaction to our own watches, not a kopf event handler: it runs once the watch's store has
    the event, as kopf ran its handlers once its indexes had it. Not before every own watch is
    listed: a pod whose claim is not known yet would not count as starting on its GPU. It runs in
    the watch's thread, as kopf's handlers run in executor threads (``state.start_lock``)."""
    if event_type != "LISTED" and ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_PACKED) != "true":
        return
    if _kopf_indexes and all(store.synced for store, _, _ in _OWN_WATCHES):
        grant_starts(state=STATE, index=_gpu_index(_kopf_indexes), watched=_watched)


#: The own watches: what each keeps, of which kind, and what reacts to its events.
_OWN_WATCHES: tuple[tuple[PodSlots | Entries, kube.WatchedKind,
                          Callable[[str, Mapping[str, Any]], None] | None], ...] = (
    (POD_SLOTS, kube.POD_SLOT_PODS, _capacity_changed),
    (GROUPS, kube.GROUP_STATEFULSETS, _group_changed),
    (CLAIMS, kube.RESOURCE_CLAIMS, _claim_changed),
    (PACKED_PODS, kube.PACKED_PODS, _start_gate),
    (SERVICES, kube.SLM_SERVICES, None),
)


@kopf.on.startup()
def start_watches(**_: Any) -> None:
    """Start the own watches and wait for their first listings: kopf starts no handler before, as
    it would not before its indexes are filled (a plan on a partial view takes capacity in use)."""
    if not _watches:
        _watches.extend(kube.start_watch(store=store, kind=kind, on_event=on_event)
                        for store, kind, on_event in _OWN_WATCHES)
    deadline = time.monotonic() + LIST_WAIT_SECONDS
    unlisted = [kind.name for store, kind, _ in _OWN_WATCHES
                if not store.wait_synced(max(0.0, deadline - time.monotonic()))]
    if unlisted:
        raise kopf.TemporaryError(f"not listed after {LIST_WAIT_SECONDS} s: {', '.join(unlisted)}; waiting", delay=1)
    # NB: replicas that waited for their start while no operator ran (the listings' own reactions
    # came before every watch was listed).
    _start_gate("LISTED", {})
    WAKER.start()


@kopf.on.cleanup()
def stop_profilers(**_: Any) -> None:
    cancel_local_runs()
    while _serving:
        _serving.pop()()
    while _watches:
        _watches.pop().stop()
    WAKER.stop()
    NOT_READY.stop()
    _folds_stopping.set()


# --- Indexes: the GPU inventory (gpu_index says what each keeps) and our services, kept by watches ---

@kopf.index("nodes")
def gpu_nodes(*, name: str, labels: Mapping[str, str], spec: Mapping[str, Any], status: Mapping[str, Any],
              **_: Any) -> dict[str, Any] | None:
    if not _KOPF_CONTEXT:
        _KOPF_CONTEXT.append(contextvars.copy_context())
    return node_entry(name=name, labels=labels, spec=spec, status=status)


@kopf.index("resource.k8s.io", "v1", "resourceslices")
def gpu_slices(*, name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, Any] | None:
    return slice_entry(name=name, spec=spec)


# --- The SLMService handlers ------------------------------------------------------------------------

@kopf.on.resume(*RESOURCE, id="reconcile", when=_ours)
@kopf.on.create(*RESOURCE, id="reconcile", when=_ours)
@kopf.on.update(*RESOURCE, id="reconcile", when=_ours)
# NB: waiting for something outside the spec (a Secret, free GPUs, the InferencePool CRD) is a
# timer's job, not a handler retry's: kopf records every retry in an annotation (an API write each
# time), a timer writes nothing unless the status changes. The per-object lock keeps it from racing
# the change handlers.
@kopf.timer(*RESOURCE, id="retry-pending", interval=STATE.config.retry_seconds,
            idle=STATE.config.retry_seconds, when=_waiting)
# NB: a service that waits only for GPU capacity is woken by the inventory's watches (``WAKER``);
# this timer is the safety net, hours apart (SLM_RESYNC_SECONDS), as a controller's resync period.
@kopf.timer(*RESOURCE, id="resync-capacity", interval=STATE.config.resync_seconds,
            idle=STATE.config.resync_seconds, when=_waiting_for_capacity)
@kopf.timer(*RESOURCE, id="retry-rejected", interval=STATE.config.retry_seconds * REJECTED_RETRY_FACTOR,
            idle=STATE.config.retry_seconds * REJECTED_RETRY_FACTOR, when=_rejected)
# NB: Profiling is polled by the timer too, not by the change handler's retries alone: a service the
# timer below moved back to Profiling (its failed Job was deleted) has no handler retrying it.
@kopf.timer(*RESOURCE, id="retry-profiling", interval=PROFILE_POLL_SECONDS, idle=PROFILE_POLL_SECONDS,
            when=_profiling)
def reconcile(*, body: kopf.Body, spec: Mapping[str, Any], name: str, namespace: str | None, uid: str,
              meta: Mapping[str, Any], status: Mapping[str, Any], **indexes: Any) -> None:
    try:
        reconcile_service(state=STATE, index=_gpu_index(indexes), body=body, spec=spec, name=name,
                          namespace=namespace or "", uid=uid, meta=meta, status=status)
    except ProfilePending as exc:
        raise kopf.TemporaryError(f"profiling: {exc.progress}", delay=PROFILE_POLL_SECONDS) from None


# NB: a node deleted moves its groups at once; a node NotReady moves them once it has been so for
# SLM_NODE_NOT_READY_SECONDS (``planning.moves``): its status events start the count, no timer polls
# Ready services. Any change may free or add GPUs: the waker looks.
@kopf.on.event("nodes", labels={LABEL_GPU_PRODUCT: kopf.PRESENT})
def gpu_node_changed(*, type: str, name: str, labels: Mapping[str, str], spec: Mapping[str, Any],
                     status: Mapping[str, Any], **indexes: Any) -> None:
    # NB: only when what the inventory keeps of it changed: every node heartbeats its status every
    # minute or so (200 nodes: a few events a second), which changes nothing planning reads.
    entry = None if type == "DELETED" else node_entry(name=name, labels=labels, spec=spec, status=status)
    if _NODES_SEEN.get(name) != entry:
        was = _NODES_SEEN.get(name)
        _NODES_SEEN[name] = entry
        WAKER.poke()
        if entry is not None and cordoned(entry[name]) and not (was and cordoned(was[name])):
            # NB: groups pinned there whose pods are not bound yet would wait for good (planning.moves)
            reconcile_services_on(state=STATE, index=_gpu_index(indexes), node=name, watched=_watched, pinned_only=True)
    if type == "DELETED":
        _NODES_SEEN.pop(name, None)
        NOT_READY.cancel(name)
        reconcile_services_on(state=STATE, index=_gpu_index(indexes), node=name, watched=_watched)
        return
    delay = seconds_until_lost(status=status or {}, now=datetime.datetime.now(datetime.timezone.utc),
                               grace_seconds=STATE.config.node_not_ready_seconds)
    if delay is None:
        NOT_READY.cancel(name)
    else:
        # NB: a second late, so the planner, which judges by the same clock, sees the node lost.
        NOT_READY.schedule(name, delay=delay + 1, call=lambda: reconcile_services_on(
            state=STATE, index=_gpu_index(_kopf_indexes), node=name, watched=_watched))


@kopf.on.event("resource.k8s.io", "v1", "resourceslices")
def gpu_slice_changed(**_: Any) -> None:
    WAKER.poke()


# --- dra-shares: one starting replica per GPU, across services (planning.start_gate) ---------------
# NB: every namespace's pods and claims, like the inventory: replicas of services another operator
# serves share the GPUs too. Run by the own watches of both (``_start_gate``), not by kopf.


def _watched(namespace: str) -> bool:
    return _ours(namespace=namespace)

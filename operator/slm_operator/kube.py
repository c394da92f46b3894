"""All Kubernetes API I/O of the operator goes through this module.

Everything else builds plain dicts (``builders``) or decides (``planning``, ``profiling``); this
module sends them. Expected API answers are outcomes, not exceptions: 404 on delete or get means
"already gone", 409 on create means "someone else made it", a kind the cluster does not serve (an
optional CRD such as the InferencePool's, not installed) is NOT_SERVED on apply and "already gone"
on get and delete. An apply that fails otherwise is sorted once, here: invalid (400, 422) is
:class:`~slm_operator.errors.ApplyRejected`, anything that can change by itself (403, 404, 409,
429, 5xx, a timeout, no answer) :class:`~slm_operator.errors.ApplyDeferred`. Anything else
propagates, so kopf retries the handler with backoff. Every request has a timeout.

Writes use server-side apply with one field manager: applying the same desired state twice is a
no-op on the server, and fields other controllers own (HPA replicas, injected sidecars) are left
alone unless we set them ourselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ApiException as DynamicApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from slm_operator import metrics
from slm_operator.constants import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_MANAGED_BY,
    LABEL_PACKED,
    MANAGED_BY,
    OPERATOR_NAME,
    PLURAL,
)
from slm_operator.errors import ApplyDeferred, ApplyRejected
from slm_operator.gpu_index import Watched

FIELD_MANAGER = OPERATOR_NAME
#: Answers to an apply that retrying cannot change: the object is invalid (the message names the field).
PERMANENT_CODES = (400, 422)
#: Answers that change by themselves, and the reason the status shows while retrying. NB: 403 is
#: RBAC not granted yet, a ResourceQuota, or a namespace being deleted; 404 a namespace or a CRD
#: not there yet; 409 a concurrent writer.
TRANSIENT_REASONS = {403: "Forbidden", 404: "NotFound", 408: "Timeout", 409: "Conflict", 429: "TooManyRequests"}
#: Seconds to connect and to read each API answer (NB: without, a half-open connection blocks a
#: handler thread for good).
REQUEST_TIMEOUT = (5, 60)
logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    #: The API server does not serve this kind (its CRD is not installed).
    NOT_SERVED = "not-served"


_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (``$KUBECONFIG``)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # NB: the client reads $KUBECONFIG once, at import; read it now so the current value counts.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    # NB: one operator process fans out many concurrent handler threads; the default pool of 4
    # connections would serialise them.
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


@functools.lru_cache(maxsize=1)
def _dynamic() -> DynamicClient:
    return DynamicClient(api_client())


@functools.lru_cache(maxsize=64)
def _resource(api_version: str, kind: str) -> Any:
    with _lock:  # discovery of the dynamic client is not thread-safe on first use
        return _dynamic().resources.get(api_version=api_version, kind=kind)


def _served(api_version: str, kind: str) -> Any | None:
    """The kind's resource, or ``None`` when the API server does not serve it (a miss asks discovery
    again, so a CRD installed meanwhile is found)."""
    try:
        return _resource(api_version, kind)
    except ResourceNotFoundError:
        return None


def _still_served(api_version: str, kind: str) -> bool:
    """After a 404 on a kind discovery had: forget what discovery knew and ask again (its CRD may
    have been removed since)."""
    with _lock:
        _dynamic().resources.invalidate_cache()
        _resource.cache_clear()
    return _served(api_version, kind) is not None


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _call(verb: str) -> contextlib.AbstractContextManager[None]:
    """Every request below runs inside this: ``slm_operator_api_requests_total`` and, for an error
    answer, ``slm_operator_api_errors_total`` by verb and HTTP code (``metrics.api_call``)."""
    return metrics.api_call(verb, code_of=_status_of)


def apply(obj: Mapping[str, Any]) -> Outcome:
    """Create or update ``obj`` by server-side apply; idempotent. NOT_SERVED when the cluster does
    not serve its kind.

    NB: ``force_conflicts`` takes over fields another manager set on *our children* (the operator
    owns them whole); the SLMService itself is never applied, only its status patched, so whoever
    scales it (``kubectl scale``, an HPA, KEDA) is never overwritten.
    """
    meta = obj["metadata"]
    try:
        resource = _served(obj["apiVersion"], obj["kind"])
        if resource is None:
            return Outcome.NOT_SERVED
        with _call("apply"):
            resource.server_side_apply(
                body=dict(obj), name=meta["name"], namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER, force_conflicts=True, _request_timeout=REQUEST_TIMEOUT,
                serialize=False,
            )
    except (ApiException, DynamicApiException) as exc:
        what = f"{obj['kind']} {meta.get('namespace')}/{meta['name']}"
        code = _status_of(exc)
        if code == 404 and not _still_served(obj["apiVersion"], obj["kind"]):
            return Outcome.NOT_SERVED
        if code in PERMANENT_CODES:
            raise ApplyRejected(f"{what} rejected (HTTP {code}): {_reason_of(exc)}") from exc
        reason = TRANSIENT_REASONS.get(code or 0, "ServerError" if (code or 0) >= 500 else "ApiError")
        raise ApplyDeferred(reason, f"{what}: HTTP {code} ({_reason_of(exc)}); retrying") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApplyDeferred("ApiUnreachable", f"{obj['kind']} {meta.get('namespace')}/{meta['name']}: "
                            f"no answer from the API server ({exc}); retrying") from exc
    return Outcome.APPLIED


def _reason_of(exc: Exception) -> str:
    body = getattr(exc, "body", None) or getattr(exc, "summary", lambda: "")()
    try:
        return str(json.loads(body).get("message", body))
    except (TypeError, ValueError, AttributeError):
        return str(body or exc)


def delete(*, api_version: str, kind: str, name: str, namespace: str | None) -> Outcome:
    """Delete with background propagation; a missing object (or kind) is the outcome NOT_FOUND."""
    resource = _served(api_version, kind)
    if resource is None:
        return Outcome.NOT_FOUND
    try:
        with _call("delete"):
            resource.delete(name=name, namespace=namespace, body={"propagationPolicy": "Background"},
                            _request_timeout=REQUEST_TIMEOUT, serialize=False)
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 404:
            return Outcome.NOT_FOUND
        raise
    return Outcome.DELETED


def get(*, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
    """The object, or ``None`` when it (or its kind) does not exist."""
    resource = _served(api_version, kind)
    if resource is None:
        return None
    try:
        with _call("get"):
            found: dict[str, Any] = _json(resource.get(name=name, namespace=namespace,
                                                       _request_timeout=REQUEST_TIMEOUT, serialize=False))
        return found
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 404:
            return None
        raise


def list_objects(
    *, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
) -> list[dict[str, Any]]:
    with _call("list"):
        result = _json(_resource(api_version, kind).get(namespace=namespace, label_selector=label_selector,
                                                          _request_timeout=REQUEST_TIMEOUT, serialize=False))
    return list(result.get("items") or ())


def _json(response: Any) -> dict[str, Any]:
    """The JSON of a response the dynamic client did not deserialize (``serialize=False``).

    NB: its ``ResourceInstance`` wraps every nested field in an object of its own; for the lists
    the operator reads (a service's groups and pods) that cost several times the plain dicts, and
    at start-up a thousand reconciles read them at once."""
    data: dict[str, Any] = json.loads(response.data)
    return data


def create(obj: Mapping[str, Any]) -> Outcome:
    """Create only; an existing object (409) is the outcome CONFLICT, left as it is."""
    meta = obj["metadata"]
    try:
        with _call("create"):
            _resource(obj["apiVersion"], obj["kind"]).create(body=dict(obj), namespace=meta.get("namespace"),
                                                                 _request_timeout=REQUEST_TIMEOUT, serialize=False)
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 409:
            return Outcome.CONFLICT
        raise
    return Outcome.APPLIED


def patch_at_version(*, api_version: str, kind: str, name: str, namespace: str | None, resource_version: str,
                     patch: Mapping[str, Any]) -> Outcome:
    """Merge-patch ``patch`` only if the object is still at ``resource_version``; else the outcome CONFLICT.

    NB: the resourceVersion inside a merge patch is a precondition the API server checks (409 when
    it moved on): optimistic concurrency with the ``patch`` verb, so RBAC needs no ``update``.
    """
    body = dict(patch) | {"metadata": {"resourceVersion": resource_version}}
    try:
        with _call("patch"):
            _resource(api_version, kind).patch(body=body, name=name, namespace=namespace,
                                               content_type="application/merge-patch+json",
                                               _request_timeout=REQUEST_TIMEOUT, serialize=False)
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) in (404, 409):
            return Outcome.CONFLICT
        raise
    return Outcome.APPLIED


def annotate(*, api_version: str, kind: str, name: str, namespace: str | None,
             annotations: Mapping[str, str]) -> Outcome:
    """Merge-patch ``metadata.annotations``; a missing object is the outcome NOT_FOUND."""
    try:
        with _call("patch"):
            _resource(api_version, kind).patch(body={"metadata": {"annotations": dict(annotations)}}, name=name,
                                               namespace=namespace, content_type="application/merge-patch+json",
                                               _request_timeout=REQUEST_TIMEOUT, serialize=False)
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 404:
            return Outcome.NOT_FOUND
        raise
    return Outcome.APPLIED


def secret_exists(*, name: str, namespace: str) -> bool:
    """True if the Secret exists. We never read its data; RBAC grants ``get`` only."""
    try:
        with _call("get"):
            client.CoreV1Api(api_client()).read_namespaced_secret(name=name, namespace=namespace,
                                                                  _preload_content=False,
                                                                  _request_timeout=REQUEST_TIMEOUT).release_conn()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def patch_service_status(*, name: str, namespace: str, status: Mapping[str, Any]) -> Outcome:
    """Merge-patch the SLMService status subresource; a deleted service is NOT_FOUND."""
    if not status:
        return Outcome.UNCHANGED
    try:
        with _call("patch"):
            client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
                group=GROUP, version=API_VERSION, namespace=namespace, plural=PLURAL, name=name,
                body={"status": dict(status)}, _request_timeout=REQUEST_TIMEOUT,
            )
    except ApiException as exc:
        if exc.status == 404:
            return Outcome.NOT_FOUND
        raise
    return Outcome.APPLIED


def get_service(*, name: str, namespace: str) -> dict[str, Any] | None:
    return get(api_version=f"{GROUP}/{API_VERSION}", kind=KIND, name=name, namespace=namespace)



# --- Own list+watches behind the GPU inventory (instead of kopf indexes: see gpu_index) ---------------

#: Pods that hold devices: bound to a node and not finished (the kube-scheduler's own filter for
#: assigned pods). NB: server-side, so Pending and finished pods never cross the wire; a pod that
#: finishes leaves the selection, which the watch reports as DELETED.
POD_SLOT_FIELD_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
#: Objects per list page: bounded memory for the raw answer whatever the cluster's size (the five
#: watches list at once at start-up; 500 full pods a page held tens of MiB each).
LIST_PAGE = 100
#: A watch request ends after this long (the server closes it), and is resumed from where it was.
WATCH_SECONDS = 300
#: Backoff after a failed list or watch: doubling from the first to the last, with jitter.
#: NB: a short cap: the inventory and the readiness folds are blind while a watch waits, so after an
#: API outage they catch up within 10 s of the server's return (client-go's reflector waits up to
#: 30 s; five watches of one operator are no burden on a server that is back).
WATCH_BACKOFF = (1.0, 10.0)
#: A watch that ends sooner than this without a single event counts as a failure (backoff).
WATCH_QUICK_END_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class WatchedKind:
    """One kind a :class:`ListWatch` lists and watches, across all namespaces, filtered server-side:
    ``api`` (a client API class) and its ``method`` (the ``list_*_for_all_namespaces`` one, or
    ``list_cluster_custom_object`` with ``args``: group, version, plural)."""

    name: str
    api: Callable[[client.ApiClient], Any]
    method: str
    label_selector: str = ""
    field_selector: str = ""
    args: tuple[str, ...] = ()

    def _request(self, **kwargs: Any) -> Any:
        selectors = {k: v for k, v in (("label_selector", self.label_selector),
                                       ("field_selector", self.field_selector)) if v}
        try:
            with _call("watch" if kwargs.get("watch") else "list"):
                return getattr(self.api(api_client()), self.method)(*self.args, _preload_content=False, **selectors,
                                                                    **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise ResourceVersionGone(str(exc.reason)) from exc
            raise

    def list_page(self, continue_token: str | None) -> dict[str, Any]:
        """One page of the selected objects of every namespace, as the API's JSON."""
        kwargs: dict[str, Any] = {"_continue": continue_token} if continue_token else {}
        response = self._request(limit=LIST_PAGE, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        page: dict[str, Any] = json.loads(response.data)
        return page

    def watch(self, resource_version: str) -> Iterator[dict[str, Any]]:
        """The watch events (``{"type", "object"}``) of the same objects from ``resource_version`` on,
        with bookmarks, until the server ends the request."""
        response = self._request(
            watch=True, allow_watch_bookmarks=True, resource_version=resource_version, timeout_seconds=WATCH_SECONDS,
            # NB: the read timeout outlasts the server's own end of the request; with bookmarks
            # (about one a minute) a silent connection this long is a dead one.
            _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30))
        try:
            buffered = b""
            for chunk in response.stream(amt=64 * 1024, decode_content=True):
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if buffered.strip():
                yield json.loads(buffered)
        finally:
            response.release_conn()


#: Bound, unfinished pods of every namespace: the device-plugin slots they hold.
POD_SLOT_PODS = WatchedKind(name="pods", api=client.CoreV1Api, method="list_pod_for_all_namespaces",
                            field_selector=POD_SLOT_FIELD_SELECTOR)
#: Our group StatefulSets of every namespace (the inventory counts other operators' groups too).
GROUP_STATEFULSETS = WatchedKind(name="statefulsets", api=client.AppsV1Api,
                                 method="list_stateful_set_for_all_namespaces",
                                 label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}")
#: The ``dra-shares`` replicas' pods of every namespace (the start gate counts other operators' too).
PACKED_PODS = WatchedKind(name="dra-shares pods", api=client.CoreV1Api, method="list_pod_for_all_namespaces",
                          label_selector=f"{LABEL_PACKED}=true")
#: Every SLMService (the served ones' status feeds the per-service metrics).
SLM_SERVICES = WatchedKind(name="slmservices", api=client.CustomObjectsApi, method="list_cluster_custom_object",
                           args=(GROUP, API_VERSION, PLURAL))
#: Every ResourceClaim of every namespace: an allocated one holds devices, whoever made it.
RESOURCE_CLAIMS = WatchedKind(name="resourceclaims", api=client.ResourceV1Api,
                              method="list_resource_claim_for_all_namespaces")


class ResourceVersionGone(Exception):
    """HTTP 410: the resourceVersion (or continue token) is older than the API server keeps; list again."""


class ListWatch:
    """List+watch of one kind into a store (a :class:`~slm_operator.gpu_index.Watched` accumulator).

    Lists in pages, then watches from the list's resourceVersion, resuming every watch from the
    last event or bookmark seen; on 410 Gone lists again (the listing replaces the store's
    content); on any other failure waits (exponential backoff with jitter) and resumes or, without
    a resourceVersion, lists again. ``on_event`` is called with each event's type and object once
    the store has it, and with ``("LISTED", {})`` after each listing; what it raises is logged, not
    a watch failure.
    ``list_page``, ``watch`` and ``sleep`` are the I/O, replaceable for tests.
    """

    def __init__(
        self, *, store: Watched, name: str, list_page: Callable[[str | None], Mapping[str, Any]],
        watch: Callable[[str], Iterator[Mapping[str, Any]]],
        on_event: Callable[[str, Mapping[str, Any]], None] | None = None,
        sleep: Callable[[float], None] = time.sleep, backoff: tuple[float, float] = WATCH_BACKOFF,
        quick_end_s: float = WATCH_QUICK_END_SECONDS,
    ) -> None:
        self.store = store
        self.name = name
        self._quick_end_s = quick_end_s
        self._list_page = list_page
        self._watch = watch
        self._on_event = on_event
        self._sleep = sleep
        self._backoff = backoff
        self.resource_version: str | None = None
        self.relists = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        """End :meth:`run` after the current request (at the latest when the watch request ends)."""
        self._stop.set()

    def run(self) -> None:
        """Keep ``store`` current until :meth:`stop`."""
        delay = self._backoff[0]
        while not self._stop.is_set():
            listing = self.resource_version is None
            try:
                if listing:
                    self._relist()
                    listing = False
                started = time.monotonic()
                seen = self._follow()
                if seen or self._stop.is_set() or time.monotonic() - started >= self._quick_end_s:
                    delay = self._backoff[0]
                    continue
                # NB: a server (or proxy) that ends every watch at once would make this loop spin.
                logger.info("%s watch ended at once without an event; again in %.0f s", self.name, delay)
            except ResourceVersionGone as exc:
                logger.info("%s watch: resourceVersion %s gone (%s); listing again", self.name,
                            self.resource_version, exc)
                self.resource_version = None
                if not listing:
                    continue  # NB: a watch too far behind: list again at once; a listing that expired waits
            except Exception as exc:  # NB: the API server away, a dropped connection: wait, resume
                logger.warning("%s watch failed (%s: %s); again in %.0f s", self.name, type(exc).__name__, exc,
                               delay)
            self._sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._backoff[1])

    def _relist(self) -> None:
        pages: list[str] = []

        def objects() -> Iterator[Mapping[str, Any]]:
            token: str | None = None
            while True:
                page = self._list_page(token)
                yield from page.get("items") or ()
                meta = page.get("metadata") or {}
                if not pages:
                    pages.append(str(meta.get("resourceVersion") or ""))
                token = meta.get("continue") or None
                if not token:
                    return

        self.store.replace(objects())
        # NB: a paged list is one consistent snapshot at the first page's resourceVersion.
        self.resource_version = pages[0] or None
        self.relists += 1
        logger.info("%s watch: %d kept after listing at resourceVersion %s", self.name, len(self.store),
                    self.resource_version)
        self._notify("LISTED", {})

    def _follow(self) -> int:
        """Apply the watch's events until it ends; how many came."""
        assert self.resource_version is not None
        seen = 0
        for event in self._watch(self.resource_version):
            if self._stop.is_set():
                return seen
            seen += 1
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise ResourceVersionGone(str(obj.get("message")))
                raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('message')}")
            if kind != "BOOKMARK":
                self.store.apply(event_type=str(kind), obj=obj)
                self._notify(str(kind), obj)
            self.resource_version = (obj.get("metadata") or {}).get("resourceVersion") or self.resource_version
        return seen

    def _notify(self, kind: str, obj: Mapping[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, obj)
        except Exception:  # NB: the reaction's failure (an API write) is not the watch's: it goes on
            meta = obj.get("metadata") or {}
            logger.exception("%s watch: reacting to %s of %s/%s failed", self.name, kind, meta.get("namespace"),
                             meta.get("name"))


def start_watch(
    *, store: Watched, kind: WatchedKind, on_event: Callable[[str, Mapping[str, Any]], None] | None = None,
) -> ListWatch:
    """Start a :class:`ListWatch` of ``kind`` into ``store`` in a daemon thread."""
    watcher = ListWatch(store=store, name=kind.name, list_page=kind.list_page, watch=kind.watch, on_event=on_event)
    threading.Thread(target=watcher.run, name=f"{kind.name}-watch", daemon=True).start()
    return watcher

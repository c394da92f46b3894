"""All Kubernetes API I/O of the operator goes through this module.

Everything else builds plain dicts (``builders``) or decides (``planning``, ``profiling``); this
module sends them. Expected API answers are outcomes, not exceptions: 404 on delete or get means
"already gone", 409 on create means "someone else made it". Anything else propagates, so kopf
retries the handler with backoff.

Writes use server-side apply with one field manager: applying the same desired state twice is a
no-op on the server, and fields other controllers own (HPA replicas, injected sidecars) are left
alone unless we set them ourselves.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ApiException as DynamicApiException

from slm_operator.constants import API_VERSION, GROUP, KIND, OPERATOR_NAME, PLURAL
from slm_operator.errors import ApplyRejected

FIELD_MANAGER = OPERATOR_NAME
logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"


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


def _status_of(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def apply(obj: Mapping[str, Any]) -> Outcome:
    """Create or update ``obj`` by server-side apply; idempotent."""
    meta = obj["metadata"]
    resource = _resource(obj["apiVersion"], obj["kind"])
    try:
        resource.server_side_apply(
            body=dict(obj), name=meta["name"], namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER, force_conflicts=True,
        )
    except (ApiException, DynamicApiException) as exc:
        code = _status_of(exc)
        if code is not None and 400 <= code < 500 and code not in (404, 409, 429):
            raise ApplyRejected(f"{obj['kind']} {meta.get('namespace')}/{meta['name']} rejected "
                              f"(HTTP {code}): {_reason_of(exc)}") from exc
        raise
    return Outcome.APPLIED


def _reason_of(exc: Exception) -> str:
    body = getattr(exc, "body", None) or getattr(exc, "summary", lambda: "")()
    try:
        return str(json.loads(body).get("message", body))
    except (TypeError, ValueError, AttributeError):
        return str(body or exc)


def delete(*, api_version: str, kind: str, name: str, namespace: str | None) -> Outcome:
    """Delete with background propagation; a missing object is the outcome NOT_FOUND."""
    try:
        _resource(api_version, kind).delete(name=name, namespace=namespace,
                                            body={"propagationPolicy": "Background"})
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 404:
            return Outcome.NOT_FOUND
        raise
    return Outcome.DELETED


def get(*, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = _resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        return found
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 404:
            return None
        raise


def list_objects(
    *, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
) -> list[dict[str, Any]]:
    result = _resource(api_version, kind).get(namespace=namespace, label_selector=label_selector)
    return [item.to_dict() for item in result.items]


def create(obj: Mapping[str, Any]) -> Outcome:
    """Create only; an existing object (409) is the outcome CONFLICT, left as it is."""
    meta = obj["metadata"]
    try:
        _resource(obj["apiVersion"], obj["kind"]).create(body=dict(obj), namespace=meta.get("namespace"))
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 409:
            return Outcome.CONFLICT
        raise
    return Outcome.APPLIED


def annotate(*, api_version: str, kind: str, name: str, namespace: str | None,
             annotations: Mapping[str, str]) -> Outcome:
    """Merge-patch ``metadata.annotations``; a missing object is the outcome NOT_FOUND."""
    try:
        _resource(api_version, kind).patch(body={"metadata": {"annotations": dict(annotations)}}, name=name,
                                           namespace=namespace, content_type="application/merge-patch+json")
    except (ApiException, DynamicApiException) as exc:
        if _status_of(exc) == 404:
            return Outcome.NOT_FOUND
        raise
    return Outcome.APPLIED


def secret_exists(*, name: str, namespace: str) -> bool:
    """True if the Secret exists. We never read its data; RBAC grants ``get`` only."""
    try:
        client.CoreV1Api(api_client()).read_namespaced_secret(name=name, namespace=namespace,
                                                              _preload_content=False).release_conn()
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
        client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
            group=GROUP, version=API_VERSION, namespace=namespace, plural=PLURAL, name=name,
            body={"status": dict(status)},
        )
    except ApiException as exc:
        if exc.status == 404:
            return Outcome.NOT_FOUND
        raise
    return Outcome.APPLIED


def get_service(*, name: str, namespace: str) -> dict[str, Any] | None:
    return get(api_version=f"{GROUP}/{API_VERSION}", kind=KIND, name=name, namespace=namespace)


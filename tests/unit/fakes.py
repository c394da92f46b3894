"""An in-memory stand-in for ``slm_operator.kube`` (and kopf's Events), for tests of the handlers' work.

It keeps objects in a dict and records each write, so a test can say exactly which objects,
status patches and Events an outcome produces. The real API server is exercised by
tests/integration.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from slm_operator import kube, reporter
from slm_operator.errors import ApplyRejected
from slm_operator.gpu_index import Entries, Entry, GpuIndex, PodSlots, claim_of, group_of, node_entry, packed_pod_of


def listed(of: Callable[[Mapping[str, Any]], Entry | None], objects: Iterable[Mapping[str, Any]] = ()) -> Entries:
    """An own watch's store (``gpu_index.Entries``) after its first listing of ``objects``."""
    store = Entries(of)
    store.replace(objects)
    return store


def resource_claim(*, namespace: str, name: str, results: list[dict[str, Any]], labels: Mapping[str, str] = {},
                   uid: str | None = None) -> dict[str, Any]:
    """A ResourceClaim allocated the device ``results``, as the API returns it."""
    return {"metadata": {"uid": uid or f"{namespace}/{name}", "namespace": namespace, "name": name,
                         "labels": dict(labels)},
            "status": {"allocation": {"devices": {"results": results}}}}


def own_watches(*, pods: PodSlots | None = None, claims: Iterable[Mapping[str, Any]] = (),
                groups: Iterable[Mapping[str, Any]] = (), packed: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """``GpuIndex``'s keyword arguments for what the own watches keep, listed."""
    return {"pods": pods or PodSlots(), "claims": listed(claim_of, claims), "groups": listed(group_of, groups),
            "packed": listed(packed_pod_of, packed)}


def kopf_index(entries: list[dict | None]) -> dict[str, list]:
    """What kopf hands a handler: each key maps to a collection of values."""
    merged: dict[str, list] = {}
    for entry in entries:
        for key, value in (entry or {}).items():
            merged.setdefault(key, []).append(value)
    return merged


class FakeApi:
    """Objects by (kind, namespace, name); writes recorded in order."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.secrets: set[str] = set()
        self.reject: str | None = None
        #: Kinds the cluster does not serve (a CRD not installed): applies are NOT_SERVED.
        self.unserved: set[str] = set()
        #: The creationTimestamp objects created get: the wall clock, as the API server's would be
        #: (the operator compares it with its own clock, e.g. how long a profiler has been stalled).
        self.now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("apply", "create", "delete", "get", "list_objects", "patch_service_status", "secret_exists",
                     "get_service"):
            monkeypatch.setattr(kube, name, getattr(self, name))
        monkeypatch.setattr(reporter.kopf, "event", self.event)

    def event(self, _body: Any, *, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason))

    def apply(self, obj: dict[str, Any]) -> kube.Outcome:
        meta = obj["metadata"]
        if obj["kind"] == self.reject:
            raise ApplyRejected(f"{obj['kind']} {meta['namespace']}/{meta['name']} rejected (HTTP 422): invalid")
        if obj["kind"] in self.unserved:
            return kube.Outcome.NOT_SERVED
        self.writes.append(("apply", obj["kind"], meta["name"]))
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        # NB: like server-side apply, a write of the spec leaves the status the controllers set.
        self.objects[key] = obj | {k: v for k, v in self.objects.get(key, {}).items() if k == "status"}
        return kube.Outcome.APPLIED

    def create(self, obj: dict[str, Any]) -> kube.Outcome:
        """Create only (CONFLICT when it exists); the server's uid and creationTimestamp are set."""
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        if key in self.objects:
            return kube.Outcome.CONFLICT
        self.writes.append(("create", obj["kind"], meta["name"]))
        self.objects[key] = obj | {"metadata": {"uid": f"uid-{len(self.writes)}",
                                                "creationTimestamp": self.now} | dict(meta)}
        return kube.Outcome.APPLIED

    def delete(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> kube.Outcome:
        self.writes.append(("delete", kind, name))
        return kube.Outcome.DELETED if self.objects.pop((kind, namespace, name), None) else kube.Outcome.NOT_FOUND

    def get(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def list_objects(self, *, api_version: str, kind: str, namespace: str | None = None,
                     label_selector: str | None = None) -> list[dict[str, Any]]:
        wanted = dict(pair.split("=", 1) for pair in (label_selector or "").split(",") if pair)
        return [obj for (k, ns, _), obj in sorted(self.objects.items())
                if k == kind and namespace in (None, ns)
                and wanted.items() <= (obj["metadata"].get("labels") or {}).items()]

    def patch_service_status(self, *, name: str, namespace: str, status: dict[str, Any]) -> kube.Outcome:
        self.patches.append(dict(status))
        service = self.objects[("SLMService", namespace, name)]
        service["status"] = service.get("status", {}) | dict(status)
        return kube.Outcome.APPLIED

    def secret_exists(self, *, name: str, namespace: str) -> bool:
        return name in self.secrets

    def get_service(self, *, name: str, namespace: str) -> dict[str, Any] | None:
        return self.objects.get(("SLMService", namespace, name))

    # --- what the cluster does on its own ---------------------------------------------------------------

    def run_pods(self, *, node_name: str, ready: bool, only: str | None = None) -> None:
        """Every group's pods (``only``: StatefulSet ``only``'s) scheduled on ``node_name``; their
        StatefulSets report readiness."""
        for (kind, ns, name), sts in list(self.objects.items()):
            if kind != "StatefulSet" or only not in (None, name):
                continue
            labels = sts["spec"]["template"]["metadata"]["labels"]
            for i in range(sts["spec"]["replicas"]):
                self.objects[("Pod", ns, f"{name}-{i}")] = {
                    "metadata": {"name": f"{name}-{i}", "namespace": ns, "labels": labels},
                    "spec": {"nodeName": node_name}}
            sts["status"] = {"readyReplicas": sts["spec"]["replicas"] if ready else 0}


def gpu_index(*nodes: dict[str, Any], pods: list[dict[str, Any]] = ()) -> GpuIndex:
    """An index of ``nodes`` and of GPU ``pods`` (as ``factories.gpu_pod`` makes them)."""
    entries = [node_entry(name=n["metadata"]["name"], labels=n["metadata"]["labels"], spec={}, status=n["status"])
               for n in nodes]
    slots = PodSlots()
    # NB: factories.gpu_pod has no metadata: give each pod a uid of its own.
    slots.replace([pod | {"metadata": {"uid": f"pod-{i}"} | dict(pod.get("metadata") or {})}
                   for i, pod in enumerate(pods)])
    return GpuIndex({"gpu_nodes": kopf_index(entries), "gpu_slices": {}}, **own_watches(pods=slots))

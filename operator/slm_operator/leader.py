"""Leader election on a ``coordination.k8s.io/v1`` Lease: one operator replica acts, the rest wait.

Two operator processes that both reconcile would each read the same free GPUs from their own
watches and book them twice. kopf's peering does not prevent that (same-priority peers both pause,
and it needs its own CRDs), so the operator elects a leader the way client-go's
``leaderelection`` does, on a Lease in its own namespace:

* a replica becomes leader by creating the Lease, or by taking it over once its holder has not
  renewed it for ``leaseDurationSeconds`` — judged by how long *this* replica has seen the record
  unchanged, never by comparing clocks with the holder;
* the leader renews every ``retry`` seconds; if it cannot renew for ``renew_deadline`` (less than
  the lease duration), it stops acting before anyone else may take over (``__main__`` then exits,
  and the pod restarts as a standby);
* a leader that stops cleanly releases the Lease, so a standby takes over within one retry.

Every write is a merge patch that carries the ``resourceVersion`` it read (or a create): of two
replicas racing for the same record, the API server lets exactly one through.
:func:`decide` and :func:`lease_patch` are pure; :class:`LeaderElector` does the I/O through
``kube`` (injectable, for tests).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from slm_operator import kube
from slm_operator.constants import OPERATOR_NAME

logger = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_KIND = "Lease"
Action = Literal["create", "take-over", "renew", "wait"]


@dataclasses.dataclass(frozen=True)
class Timings:
    """client-go's three durations; ``renew_deadline`` < ``duration`` leaves a gap with no leader acting."""

    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0

    @classmethod
    def for_duration(cls, duration_s: float) -> Timings:
        """client-go's proportions (15 / 10 / 2) scaled to ``duration_s``."""
        return cls(duration_s=duration_s, renew_deadline_s=duration_s * 2 / 3, retry_s=max(0.2, duration_s / 7.5))


def decide(*, lease: Mapping[str, Any] | None, identity: str, unchanged_for_s: float, timings: Timings) -> Action:
    """What a replica named ``identity`` does next, given the Lease it read. Side-effect free.

    ``unchanged_for_s``: how long this replica has seen the Lease's record (holder, renew time)
    unchanged, on its own monotonic clock.
    """
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == identity:
        return "renew"
    duration = float(spec.get("leaseDurationSeconds") or timings.duration_s)
    if not holder or unchanged_for_s >= duration:
        return "take-over"
    return "wait"


def lease_patch(*, action: Action, lease: Mapping[str, Any] | None, identity: str, timings: Timings,
                now: datetime.datetime) -> dict[str, Any]:
    """The Lease ``spec`` after ``action`` (create, take-over or renew). Side-effect free."""
    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    spec = dict((lease or {}).get("spec") or {})
    transitions = int(spec.get("leaseTransitions") or 0)
    if action == "renew":
        return {"holderIdentity": identity, "leaseDurationSeconds": round(timings.duration_s), "renewTime": stamp}
    return {"holderIdentity": identity, "leaseDurationSeconds": round(timings.duration_s), "acquireTime": stamp,
            "renewTime": stamp, "leaseTransitions": transitions + (1 if action == "take-over" else 0)}


@dataclasses.dataclass
class LeaderElector:
    """Acquire, keep and release the Lease ``namespace/name`` as ``identity``."""

    name: str
    namespace: str
    identity: str
    timings: Timings = dataclasses.field(default_factory=Timings)
    get: Callable[..., dict[str, Any] | None] = kube.get
    create: Callable[[Mapping[str, Any]], kube.Outcome] = kube.create
    patch: Callable[..., kube.Outcome] = kube.patch_at_version
    clock: Callable[[], float] = time.monotonic
    #: When this replica last renewed (or acquired) successfully, on ``clock``; None: not leader.
    renewed_at: float | None = None
    _record: tuple[str, str] | None = None
    _record_seen_at: float = 0.0

    def try_once(self) -> bool:
        """One round: read the Lease, act on it; returns whether this replica holds it now."""
        lease = self.get(api_version=LEASE_API_VERSION, kind=LEASE_KIND, name=self.name, namespace=self.namespace)
        now = self.clock()
        spec = (lease or {}).get("spec") or {}
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
        if record != self._record:
            self._record, self._record_seen_at = record, now
        action = decide(lease=lease, identity=self.identity, unchanged_for_s=now - self._record_seen_at,
                        timings=self.timings)
        if action == "wait":
            return False
        spec_patch = lease_patch(action=action, lease=lease, identity=self.identity, timings=self.timings,
                                 now=datetime.datetime.now(datetime.timezone.utc))
        if action == "create":
            outcome = self.create({"apiVersion": LEASE_API_VERSION, "kind": LEASE_KIND,
                                   "metadata": {"name": self.name, "namespace": self.namespace,
                                                "labels": {"app.kubernetes.io/managed-by": OPERATOR_NAME}},
                                   "spec": spec_patch})
        else:
            assert lease is not None
            outcome = self.patch(api_version=LEASE_API_VERSION, kind=LEASE_KIND, name=self.name,
                                 namespace=self.namespace, resource_version=lease["metadata"]["resourceVersion"],
                                 patch={"spec": spec_patch})
        if outcome is not kube.Outcome.APPLIED:  # NB: another replica wrote first; read again next round
            return False
        if action != "renew":
            logger.info("leader election: %s now holds Lease %s/%s (%s)", self.identity, self.namespace, self.name,
                        action)
        self.renewed_at = now
        return True

    def acquire(self, *, stop: threading.Event) -> bool:
        """Block until this replica holds the Lease (True), or ``stop`` is set (False)."""
        logger.info("leader election: %s waiting for Lease %s/%s", self.identity, self.namespace, self.name)
        while not stop.is_set():
            try:
                if self.try_once():
                    return True
            except Exception as exc:  # NB: an API outage while waiting is no reason to exit
                logger.warning("leader election: reading Lease %s/%s failed: %s", self.namespace, self.name, exc)
            stop.wait(self.timings.retry_s)
        return False

    def keep(self, *, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        """Renew every retry period until ``stop``; call ``on_lost`` once the renew deadline passed."""
        while not stop.wait(self.timings.retry_s):
            try:
                held = self.try_once()
            except Exception as exc:
                logger.warning("leader election: renewing Lease %s/%s failed: %s", self.namespace, self.name, exc)
                held = None
            if held is False or (self.renewed_at is not None
                                 and self.clock() - self.renewed_at > self.timings.renew_deadline_s):
                logger.error("leader election: %s lost Lease %s/%s; stopping", self.identity, self.namespace,
                             self.name)
                self.renewed_at = None
                on_lost()
                return

    def release(self) -> None:
        """Give the Lease up (holder emptied) if this replica still holds it, so a standby takes over now."""
        lease = self.get(api_version=LEASE_API_VERSION, kind=LEASE_KIND, name=self.name, namespace=self.namespace)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        self.patch(api_version=LEASE_API_VERSION, kind=LEASE_KIND, name=self.name, namespace=self.namespace,
                   resource_version=lease["metadata"]["resourceVersion"],
                   patch={"spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None}})
        self.renewed_at = None
        logger.info("leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name)

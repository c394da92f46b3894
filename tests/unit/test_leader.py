"""Leader election: the decision, the Lease it writes, and two electors racing on one Lease store."""

from __future__ import annotations

import concurrent.futures
import copy
import datetime
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from slm_operator import kube
from slm_operator.leader import LeaderElector, Timings, decide, lease_patch

T = Timings(duration_s=15, renew_deadline_s=10, retry_s=2)
NOW = datetime.datetime(2026, 12, 2, 9, 0, 0, 123456, tzinfo=datetime.timezone.utc)


def lease(holder: str | None, *, duration: int = 15, transitions: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": transitions,
                     "renewTime": "2026-12-02T08:59:59.000000Z"}}


@pytest.mark.parametrize(("current", "unchanged_for", "action"), [
    (None, 0, "create"),
    (lease("me"), 0, "renew"),
    (lease("me"), 99, "renew"),
    (lease("other"), 14.9, "wait"),
    (lease("other"), 15, "take-over"),
    (lease("other", duration=60), 30, "wait"),  # NB: the holder's own duration counts, not ours
    (lease(None), 0, "take-over"),  # released
    (lease(""), 0, "take-over"),
])
def test_decide(current: dict[str, Any] | None, unchanged_for: float, action: str) -> None:
    assert decide(lease=current, identity="me", unchanged_for_s=unchanged_for, timings=T) == action


def test_take_over_counts_a_transition_and_renew_keeps_the_acquire_time() -> None:
    taken = lease_patch(action="take-over", lease=lease("other", transitions=3), identity="me", timings=T, now=NOW)
    assert taken == {"holderIdentity": "me", "leaseDurationSeconds": 15, "acquireTime": "2026-12-02T09:00:00.123456Z",
                     "renewTime": "2026-12-02T09:00:00.123456Z", "leaseTransitions": 4}
    created = lease_patch(action="create", lease=None, identity="me", timings=T, now=NOW)
    assert created["leaseTransitions"] == 0
    renewed = lease_patch(action="renew", lease=lease("me"), identity="me", timings=T, now=NOW)
    assert "acquireTime" not in renewed and renewed["renewTime"] == "2026-12-02T09:00:00.123456Z"


def test_timings_keep_client_go_proportions() -> None:
    t = Timings.for_duration(6)
    assert (t.duration_s, t.renew_deadline_s, t.retry_s) == (6, 4, 0.8)
    assert t.renew_deadline_s < t.duration_s


class LeaseStore:
    """One Lease with resourceVersion preconditions, as the API server keeps it."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.lock = threading.Lock()

    def get(self, **_: Any) -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.obj)

    def create(self, obj: Mapping[str, Any]) -> kube.Outcome:
        with self.lock:
            if self.obj is not None:
                return kube.Outcome.CONFLICT
            self.version += 1
            self.obj = copy.deepcopy(dict(obj))
            self.obj["metadata"]["resourceVersion"] = str(self.version)
            return kube.Outcome.APPLIED

    def patch(self, *, resource_version: str, patch: Mapping[str, Any], **_: Any) -> kube.Outcome:
        with self.lock:
            if self.obj is None or self.obj["metadata"]["resourceVersion"] != resource_version:
                return kube.Outcome.CONFLICT
            self.version += 1
            self.obj["spec"] = {k: v for k, v in (self.obj["spec"] | dict(patch["spec"])).items() if v is not None}
            self.obj["metadata"]["resourceVersion"] = str(self.version)
            return kube.Outcome.APPLIED


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def elector(store: LeaseStore, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(name="l", namespace="ns", identity=identity, timings=T, get=store.get, create=store.create,
                         patch=store.patch, clock=clock)


def test_two_electors_one_leader_and_a_take_over_only_after_the_lease_duration() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_once() is True
    assert b.try_once() is False
    clock.now = 10
    assert a.try_once() is True  # renews: b saw the record change, so its wait starts over
    assert b.try_once() is False
    clock.now = 24  # 14 s after b last saw a change
    assert b.try_once() is False
    clock.now = 25.5  # a stopped renewing at 10: b saw the same record for 15.5 s
    assert b.try_once() is True
    assert store.obj is not None
    assert store.obj["spec"]["holderIdentity"] == "b" and store.obj["spec"]["leaseTransitions"] == 1
    assert a.try_once() is False, "the old leader sees the new holder and does not renew over it"


def test_a_released_lease_is_taken_over_at_once() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_once() and not b.try_once()
    a.release()
    assert b.try_once() is True


def test_racing_electors_never_both_win() -> None:
    for _ in range(50):
        store, clock = LeaseStore(), Clock()
        electors = [elector(store, f"e{i}", clock) for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(electors)) as pool:
            results = list(pool.map(LeaderElector.try_once, electors))
        assert results.count(True) == 1


def test_keep_calls_on_lost_when_renewals_fail_past_the_deadline() -> None:
    store, clock = LeaseStore(), Clock()
    a = elector(store, "a", clock)
    assert a.try_once()
    failing = LeaderElector(name="l", namespace="ns", identity="a", timings=Timings(15, 10, 0.01), get=_down,
                            create=store.create, patch=store.patch, clock=clock, renewed_at=0.0)
    lost, stop = threading.Event(), threading.Event()
    clock.now = 5  # within the deadline: failures are tolerated
    thread = threading.Thread(target=failing.keep, kwargs={"stop": stop, "on_lost": lost.set})
    thread.start()
    assert not lost.wait(0.2)
    clock.now = 10.5
    assert lost.wait(2)
    thread.join(2)
    assert not thread.is_alive()
    assert failing.renewed_at is None


def _down(**_: Any) -> dict[str, Any] | None:
    raise ConnectionError("API server unreachable")

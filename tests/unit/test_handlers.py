"""The kopf wiring: which SLMServices each retry timer looks at, and the own watches' start-up."""

import threading
from typing import Any

import kopf
import pytest

from slm_operator import handlers, kube
from slm_operator.gpu_index import Entries, PodSlots, claim_of, group_of, packed_pod_of


def _failed(reason: str) -> dict:
    return {"phase": "Failed", "conditions": [{"type": "Profiled", "status": "False", "reason": reason}]}


def test_the_profiling_timer_polls_profiling_services_and_failed_profiler_jobs_only():
    assert handlers._profiling(status={"phase": "Profiling"}, namespace="ns")
    # A failed profiler Job: deleting it must profile again without a spec edit.
    assert handlers._profiling(status=_failed("ProfilingFailed"), namespace="ns")
    for status in (_failed("InvalidSpec"), _failed("ApplyFailed"), {"phase": "Ready"}, {"phase": "Pending"}, {}):
        assert not handlers._profiling(status=status, namespace="ns"), status


def test_the_start_up_waits_for_every_own_watch_listing_and_starts_each_watch_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[Any, str]] = []

    class Watch:
        stopped = False

        def stop(self) -> None:
            self.stopped = True

    watches: list[Watch] = []

    def start_watch(*, store: Any, kind: kube.WatchedKind, on_event: Any) -> Watch:
        started.append((store, kind.name))
        watches.append(Watch())
        return watches[-1]

    slots, groups, claims, packed = PodSlots(), Entries(group_of), Entries(claim_of), Entries(packed_pod_of)
    monkeypatch.setattr(handlers, "_OWN_WATCHES", ((slots, kube.POD_SLOT_PODS, None),
                                                   (groups, kube.GROUP_STATEFULSETS, None),
                                                   (claims, kube.RESOURCE_CLAIMS, handlers._start_gate),
                                                   (packed, kube.PACKED_PODS, handlers._start_gate)))
    gated: list[Any] = []
    monkeypatch.setattr(handlers, "grant_starts", lambda **kwargs: gated.append(kwargs["index"]))
    monkeypatch.setattr(handlers, "_kopf_indexes", {"gpu_nodes": {}, "gpu_slices": {}})
    monkeypatch.setattr(handlers, "LIST_WAIT_SECONDS", 0.01)
    monkeypatch.setattr(handlers, "_watches", [])
    monkeypatch.setattr(handlers.kube, "start_watch", start_watch)
    with pytest.raises(kopf.TemporaryError, match="pods, statefulsets, resourceclaims, dra-shares pods"):
        handlers.start_watches()  # nothing listed yet: kopf retries, no handler runs meanwhile
    slots.replace([])
    groups.replace([])
    packed.replace([])
    with pytest.raises(kopf.TemporaryError, match=r"s: resourceclaims; waiting"):
        handlers.start_watches()  # one listing missing is enough to wait
    handlers._start_gate("LISTED", {})
    assert gated == [], "no start granted on a view without the claims"
    claims.replace([])
    handlers.start_watches()
    assert started == [(slots, "pods"), (groups, "statefulsets"), (claims, "resourceclaims"),
                       (packed, "dra-shares pods")], "one watch each, not one per retry"
    assert len(gated) == 1, "replicas that waited while no operator ran are granted at start-up"
    handlers.stop_profilers()
    assert all(w.stopped for w in watches) and handlers._watches == []


def test_the_start_gate_runs_for_dra_shares_pods_and_claims_and_listings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    gated: list[Any] = []
    monkeypatch.setattr(handlers, "grant_starts", lambda **kwargs: gated.append(kwargs["index"]))
    listed = Entries(claim_of)
    listed.replace([])
    monkeypatch.setattr(handlers, "_OWN_WATCHES", ((listed, kube.RESOURCE_CLAIMS, handlers._start_gate),))
    monkeypatch.setattr(handlers, "_kopf_indexes", {"gpu_nodes": {}, "gpu_slices": {}})
    handlers._start_gate("MODIFIED", {"metadata": {"name": "c", "labels": {"app": "theirs"}}})
    assert gated == []
    handlers._start_gate("MODIFIED", {"metadata": {"name": "c", "labels": {"slm.pareto.dev/packed": "true"}}})
    handlers._start_gate("LISTED", {})
    assert len(gated) == 2 and gated[0].starting_pods() == []
    monkeypatch.setattr(handlers, "_kopf_indexes", {})
    handlers._start_gate("ADDED", {"metadata": {"name": "c", "labels": {"slm.pareto.dev/packed": "true"}}})
    assert len(gated) == 2, "not before the start-up handed kopf's indexes over"


def _statefulset(namespace: str, name: str, service: str, ready: int) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "labels": {
        "app.kubernetes.io/managed-by": "slm-operator", "slm.pareto.dev/service": service,
        "slm.pareto.dev/group": "0"}}, "spec": {"replicas": 2}, "status": {"readyReplicas": ready}}


def test_readiness_is_folded_from_the_statefulset_watch_and_a_relisting_catches_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    folded: list[tuple[str, str, int]] = []
    monkeypatch.setattr(handlers, "fold_readiness", lambda **kw: folded.append(
        (kw["event_type"], kw["name"], kw["status"].get("readyReplicas"))))

    class Inline:  # NB: the executor, run at once
        def submit(self, fn, *args):
            fn(*args)
    monkeypatch.setattr(handlers, "_FOLDS", Inline())
    monkeypatch.setattr(handlers, "_listed_once", [])
    monkeypatch.setattr(handlers, "_WATCHED", {"ns"})
    groups = Entries(group_of)
    monkeypatch.setattr(handlers, "GROUPS", groups)
    monkeypatch.setattr(handlers.STATE, "readiness", type(handlers.STATE.readiness)())
    groups.replace([_statefulset("ns", "a-g0", "a", 1), _statefulset("other", "b-g0", "b", 0)])

    handlers._group_changed("LISTED", {})
    assert folded == [], "the first listing only fills the memo: kopf's resume reconciles every service"
    handlers._group_changed("MODIFIED", _statefulset("ns", "a-g0", "a", 2))
    handlers._group_changed("MODIFIED", _statefulset("other", "b-g0", "b", 2))  # another operator's namespace
    assert folded == [("MODIFIED", "a-g0", 2)]
    # The watch resumed after a gap in which a-g0 lost a replica: the listing folds it.
    folded.clear()
    groups.replace([_statefulset("ns", "a-g0", "a", 1)])
    handlers._group_changed("LISTED", {})
    assert folded == [("LISTED", "a-g0", 1)]


def test_a_fold_that_fails_in_an_api_outage_is_tried_again_until_it_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[int] = []

    def fold(**_: Any) -> None:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionRefusedError("the API server is down")
    monkeypatch.setattr(handlers, "fold_readiness", fold)
    monkeypatch.setattr(handlers, "FOLD_BACKOFF", (0.01, 0.02))
    monkeypatch.setattr(handlers, "_folds_stopping", threading.Event())  # NB: another test stopped "the operator"
    handlers._fold("MODIFIED", "ns", "a-g0", {"slm.pareto.dev/service": "a"}, {"readyReplicas": 2})
    assert len(tries) == 3, "a group Ready before the outage has no next event: the fold itself must retry"

"""The kopf wiring: which SLMServices each retry timer looks at, and the own watches' start-up."""

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

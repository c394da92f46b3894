"""The kopf wiring: which SLMServices each retry timer looks at, and the pod watch's start-up."""

import kopf
import pytest

from slm_operator import handlers
from slm_operator.gpu_index import PodSlots


def _failed(reason: str) -> dict:
    return {"phase": "Failed", "conditions": [{"type": "Profiled", "status": "False", "reason": reason}]}


def test_the_profiling_timer_polls_profiling_services_and_failed_profiler_jobs_only():
    assert handlers._profiling(status={"phase": "Profiling"}, namespace="ns")
    # A failed profiler Job: deleting it must profile again without a spec edit.
    assert handlers._profiling(status=_failed("ProfilingFailed"), namespace="ns")
    for status in (_failed("InvalidSpec"), _failed("ApplyFailed"), {"phase": "Ready"}, {"phase": "Pending"}, {}):
        assert not handlers._profiling(status=status, namespace="ns"), status


def test_the_start_up_waits_for_the_first_pod_listing_and_starts_one_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[PodSlots] = []

    class Watch:
        stopped = False

        def stop(self) -> None:
            self.stopped = True

    watch = Watch()
    slots = PodSlots()
    monkeypatch.setattr(handlers, "POD_SLOTS", slots)
    monkeypatch.setattr(handlers, "POD_LIST_WAIT_SECONDS", 0.01)
    monkeypatch.setattr(handlers, "_pod_watch", [])
    monkeypatch.setattr(handlers.kube, "watch_pod_slots", lambda s: started.append(s) or watch)
    with pytest.raises(kopf.TemporaryError):
        handlers.watch_gpu_pods()  # not listed yet: kopf retries, no handler runs meanwhile
    slots.replace([])
    handlers.watch_gpu_pods()
    assert started == [slots], "one watch, not one per retry"
    handlers.stop_profilers()
    assert watch.stopped and handlers._pod_watch == []

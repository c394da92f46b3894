"""The kopf wiring's filters: which SLMServices each retry timer looks at."""

from slm_operator import handlers


def _failed(reason: str) -> dict:
    return {"phase": "Failed", "conditions": [{"type": "Profiled", "status": "False", "reason": reason}]}


def test_the_profiling_timer_polls_profiling_services_and_failed_profiler_jobs_only():
    assert handlers._profiling(status={"phase": "Profiling"}, namespace="ns")
    # A failed profiler Job: deleting it must profile again without a spec edit.
    assert handlers._profiling(status=_failed("ProfilingFailed"), namespace="ns")
    for status in (_failed("InvalidSpec"), _failed("ApplyFailed"), {"phase": "Ready"}, {"phase": "Pending"}, {}):
        assert not handlers._profiling(status=status, namespace="ns"), status

"""The status writer: a phase change, and its Event, is decided from a fresh read of the status."""

from __future__ import annotations

import pytest

from slm_operator.reporter import StatusWriter
from slm_operator.status import pending
from tests.unit.fakes import FakeApi


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    fake.install(monkeypatch)
    return fake


def test_a_run_that_started_from_an_older_event_does_not_post_the_phase_change_again(api: FakeApi) -> None:
    body = {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService",
            "metadata": {"name": "opt", "namespace": "ns", "uid": "u"}, "status": {"phase": "Profiling"}}
    api.objects[("SLMService", "ns", "opt")] = dict(body)
    update = pending("Planned", "InsufficientSlots", "no room")
    first = StatusWriter(body=body, name="opt", namespace="ns", current={"phase": "Profiling"}, generation=1)
    first.write(update)
    assert api.events == [("Normal", "Pending")]
    # A timer's run, a moment later, from the same (older) event: the status already says Pending.
    second = StatusWriter(body=body, name="opt", namespace="ns", current={"phase": "Profiling"}, generation=1)
    second.write(update)
    assert api.events == [("Normal", "Pending")]
    assert second.current["phase"] == "Pending"

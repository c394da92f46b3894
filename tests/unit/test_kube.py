"""How ``kube.apply`` sorts the API server's answers: invalid is permanent, the rest is retried."""

from __future__ import annotations

from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from slm_operator import kube
from slm_operator.errors import ApplyDeferred, ApplyRejected, PermanentError, TemporaryError

OBJ = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s-g0", "namespace": "ns"}}


class Refusing:
    """A dynamic-client resource whose server-side apply raises ``error``; records the timeout it got."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.timeout: Any = None

    def server_side_apply(self, **kwargs: Any) -> None:
        self.timeout = kwargs.get("_request_timeout")
        raise self.error


def answer(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = f'{{"message": "{message}"}}'
    return exc


def apply_with(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> BaseException:
    resource = Refusing(error)
    monkeypatch.setattr(kube, "_resource", lambda *_: resource)
    monkeypatch.setattr(kube, "_still_served", lambda *_: True)  # NB: a 404 of a kind discovery still knows
    with pytest.raises((PermanentError, TemporaryError)) as caught:
        kube.apply(OBJ)
    assert resource.timeout == kube.REQUEST_TIMEOUT, "every request has a timeout"
    return caught.value


@pytest.mark.parametrize("code", [400, 422])
def test_invalid_is_rejected_with_the_servers_message(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    error = apply_with(monkeypatch, answer(code, "spec.template.spec.containers[0].image: Required value"))
    assert isinstance(error, ApplyRejected) and error.reason == "ApplyFailed"
    assert f"HTTP {code}" in str(error) and "containers[0].image: Required value" in str(error)


@pytest.mark.parametrize(("code", "reason"), [
    (403, "Forbidden"), (404, "NotFound"), (409, "Conflict"), (429, "TooManyRequests"), (500, "ServerError"),
    (503, "ServerError"), (418, "ApiError"),
])
def test_answers_that_change_by_themselves_are_retried_with_their_reason(
        monkeypatch: pytest.MonkeyPatch, code: int, reason: str) -> None:
    error = apply_with(monkeypatch, answer(code, 'namespace ns is being terminated'))
    assert isinstance(error, ApplyDeferred) and error.reason == reason
    assert "being terminated" in str(error) and "retrying" in str(error)


@pytest.mark.parametrize("error", [urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"),
                                   ConnectionRefusedError("connection refused")])
def test_no_answer_is_retried(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    deferred = apply_with(monkeypatch, error)
    assert isinstance(deferred, ApplyDeferred) and deferred.reason == "ApiUnreachable"

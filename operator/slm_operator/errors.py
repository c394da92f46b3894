"""The operator's expected errors: each carries the condition ``reason`` a user reads.

Two families, as in kopf's ``PermanentError``/``TemporaryError``:

* :class:`PermanentError` — retrying the same spec cannot help (a bad spec, an unknown model, a
  failed measurement, an object the API server refuses). The phase becomes ``Failed`` until the
  spec changes.
* :class:`TemporaryError` — something outside the spec must change first (a profile still being
  measured, free GPUs). The phase stays ``Pending``/``Profiling`` and a timer looks again.

Handlers never inspect class names: they read ``reason`` (a CamelCase condition reason) and the
message, which names the field and the fix. Which condition turns False is the handler's call (it
knows the stage: a :class:`SpecError` while parsing is ``Planned``, while profiling ``Profiled``).
Anything else raised is a bug: kopf logs it and retries with backoff, and it is never reported
as the user's fault.

Bottom layer: imports nothing of ours.
"""

from __future__ import annotations

from typing import ClassVar


class SLMError(Exception):
    """Base of every expected error. ``reason`` is the condition reason it reports."""

    reason: ClassVar[str] = "Error"

    @property
    def message(self) -> str:
        return str(self)


class PermanentError(SLMError):
    """Retrying cannot help until the spec (or the cluster's configuration) changes."""


class TemporaryError(SLMError):
    """Retry later: something outside the spec has to happen first."""


# --- Permanent ----------------------------------------------------------------------------------

class SpecError(PermanentError, ValueError):
    """An SLMService spec the operator cannot act on. ``field`` is the dotted path in the spec."""

    reason = "InvalidSpec"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field
        self.detail = message


class ConfigError(PermanentError, ValueError):
    """A bad operator setting; the message names the environment variable and the allowed values."""

    reason = "InvalidOperatorConfig"


class UnknownGpuError(PermanentError, ValueError):
    """A GPU product the profiler's table does not know (the estimator needs its numbers)."""

    reason = "UnknownGPUProduct"


class UnknownModelError(PermanentError, ValueError):
    """A model whose architecture the operator cannot find (no config.json, no modelConfig)."""

    reason = "UnknownModel"


class ModelConfigError(PermanentError, ValueError):
    """A model config (``config.json`` or ``spec.profiling.modelConfig``) that is not usable."""

    reason = "InvalidModelConfig"


class ProfilingFailed(PermanentError):
    """A measurement failed; the message carries the profiler's own explanation (log tail)."""

    reason = "ProfilingFailed"


class ApplyRejected(PermanentError):
    """The API server refused a child object as invalid (400, 422: its message names the field):
    applying the same object again cannot help until the spec or a cluster policy changes."""

    reason = "ApplyFailed"


# --- Temporary ----------------------------------------------------------------------------------

class ProfilePending(TemporaryError):
    """A measurement is running; ``progress`` is a short human string for the status."""

    reason = "Profiling"

    def __init__(self, progress: str) -> None:
        super().__init__(progress)
        self.progress = progress


class ApplyDeferred(TemporaryError):
    """Applying a child got an answer that changes by itself: forbidden (RBAC being granted, a quota,
    a terminating namespace), conflict, too many requests, a server error, a timeout or no answer.
    Its ``reason`` is per instance (``Forbidden``, ``TooManyRequests``, ``ApiUnreachable``, ...)."""

    reason = "ApplyRetrying"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]  # NB: narrows the class default per instance


class PlanningError(TemporaryError):
    """No placement is possible now (no matching GPUs, every slot taken). Its ``reason`` is per
    instance (``NoMatchingGPUs``, ``InsufficientSlots``, ...): the message says what to change."""

    reason = "PlanningFailed"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # type: ignore[misc]  # NB: narrows the class default per instance

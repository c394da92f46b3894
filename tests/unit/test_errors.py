"""The error hierarchy: every expected error carries its condition reason; the families tell
handlers whether to fail or to wait."""

import pytest

from slm_operator import errors
from slm_operator.profiling.selection import SelectionError


@pytest.mark.parametrize("error, reason, family", [
    (errors.SpecError("scale", "x"), "InvalidSpec", errors.PermanentError),
    (errors.ConfigError("x"), "InvalidOperatorConfig", errors.PermanentError),
    (errors.UnknownGpuError("x"), "UnknownGPUProduct", errors.PermanentError),
    (errors.UnknownModelError("x"), "UnknownModel", errors.PermanentError),
    (errors.ModelConfigError("x"), "InvalidModelConfig", errors.PermanentError),
    (errors.ProfilingFailed("x"), "ProfilingFailed", errors.PermanentError),
    (errors.ApplyRejected("x"), "ApplyFailed", errors.PermanentError),
    (SelectionError("x"), "NoFeasibleBatchSize", errors.PermanentError),
    (errors.ProfilePending("x"), "Profiling", errors.TemporaryError),
    (errors.PlanningError("NoMatchingGPUs", "x"), "NoMatchingGPUs", errors.TemporaryError),
])
def test_reasons_and_families(error, reason, family):
    assert error.reason == reason and isinstance(error, family) and isinstance(error, errors.SLMError)


def test_a_planning_reason_is_per_instance_and_spec_errors_name_their_field():
    assert errors.PlanningError.reason == "PlanningFailed"
    assert errors.PlanningError("InsufficientSlots", "m").message == "m"
    err = errors.SpecError("gpu.sharing", "'mig' is not one of ...")
    assert err.message == "spec.gpu.sharing: 'mig' is not one of ..." and err.field == "gpu.sharing"
    assert isinstance(err, ValueError)  # callers that validate input catch it as one

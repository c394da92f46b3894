"""OperatorConfig: the environment the Helm chart sets, read once (the pod security and request settings)."""

import pytest

from slm_operator.builders.children import EngineDefaults
from slm_operator.config import ConfigError, OperatorConfig


def test_defaults_run_vllm_as_1000_with_no_engine_requests_and_a_sized_profiler():
    cfg = OperatorConfig.from_env({})
    assert cfg.engine_run_as_user == 1000
    assert (cfg.engine_cpu_request, cfg.engine_memory_request, cfg.engine_ephemeral_storage_request) == (
        None, None, None)
    assert (cfg.profiler_cpu_request, cfg.profiler_memory_request) == ("1", "8Gi")
    assert cfg.engine_defaults() == EngineDefaults()


def test_every_variable_is_read():
    cfg = OperatorConfig.from_env({
        "SLM_ENGINE_RUN_AS_USER": "2000", "SLM_ENGINE_CPU_REQUEST": "500m", "SLM_ENGINE_MEMORY_REQUEST": "12Gi",
        "SLM_ENGINE_EPHEMERAL_STORAGE_REQUEST": "20Gi", "SLM_PROFILER_CPU_REQUEST": "4",
        "SLM_PROFILER_MEMORY_REQUEST": "16Gi"})
    assert cfg.engine_defaults() == EngineDefaults(run_as_user=2000, cpu_request="500m", memory_request="12Gi",
                                                   ephemeral_storage_request="20Gi")
    assert (cfg.profiler_cpu_request, cfg.profiler_memory_request) == ("4", "16Gi")


def test_empty_values_mean_unset():
    """The chart writes every variable, empty where a value is not given."""
    cfg = OperatorConfig.from_env({name: "" for name in (
        "SLM_ENGINE_RUN_AS_USER", "SLM_ENGINE_CPU_REQUEST", "SLM_ENGINE_MEMORY_REQUEST",
        "SLM_ENGINE_EPHEMERAL_STORAGE_REQUEST", "SLM_PROFILER_CPU_REQUEST", "SLM_PROFILER_MEMORY_REQUEST")})
    assert cfg == OperatorConfig.from_env({})


@pytest.mark.parametrize("value", ["0", "-1", "root", "1000.5", "１０００"])
def test_the_engine_user_must_be_a_non_root_uid(value):
    with pytest.raises(ConfigError, match="SLM_ENGINE_RUN_AS_USER"):
        OperatorConfig.from_env({"SLM_ENGINE_RUN_AS_USER": value})


@pytest.mark.parametrize("variable", ["SLM_ENGINE_CPU_REQUEST", "SLM_ENGINE_MEMORY_REQUEST",
                                      "SLM_ENGINE_EPHEMERAL_STORAGE_REQUEST", "SLM_PROFILER_CPU_REQUEST",
                                      "SLM_PROFILER_MEMORY_REQUEST"])
@pytest.mark.parametrize("value", ["16GB", "lots", "-1", "1 Gi"])
def test_requests_must_be_quantities(variable, value):
    with pytest.raises(ConfigError, match=variable):
        OperatorConfig.from_env({variable: value})


@pytest.mark.parametrize("value", ["500m", "2", "0.5", "16Gi", "1e9", "128M", ".5"])
def test_quantities_kubernetes_takes_are_accepted(value):
    assert OperatorConfig.from_env({"SLM_ENGINE_MEMORY_REQUEST": value}).engine_memory_request == value


def test_metrics_port_defaults_to_the_charts_and_zero_serves_none() -> None:
    assert OperatorConfig.from_env({}).metrics_port == 8081
    assert OperatorConfig.from_env({"SLM_METRICS_PORT": "9102"}).metrics_port == 9102
    assert OperatorConfig.from_env({"SLM_METRICS_PORT": "0"}).metrics_port == 0


@pytest.mark.parametrize("raw", ["http", "-1", "65536", "80.5"])
def test_a_bad_metrics_port_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ConfigError, match="SLM_METRICS_PORT"):
        OperatorConfig.from_env({"SLM_METRICS_PORT": raw})


def test_leader_election_settings():
    assert OperatorConfig.from_env({}).leader_election is False
    config = OperatorConfig.from_env({"SLM_LEADER_ELECTION": "True", "SLM_PROFILER_NAMESPACE": "ops",
                                      "SLM_LEASE_NAME": "lead", "SLM_LEASE_DURATION_SECONDS": "6"})
    assert (config.leader_election, config.leader_election_namespace, config.lease_name,
            config.lease_duration_seconds) == (True, "ops", "lead", 6.0)
    assert OperatorConfig.from_env({"SLM_LEADER_ELECTION_NAMESPACE": "x", "SLM_PROFILER_NAMESPACE": "ops"}
                                   ).leader_election_namespace == "x"


@pytest.mark.parametrize(("variable", "value"), [
    ("SLM_LEADER_ELECTION", "yes"), ("SLM_LEASE_DURATION_SECONDS", "0.5"), ("SLM_LEASE_DURATION_SECONDS", "soon"),
])
def test_leader_election_settings_are_checked(variable, value):
    with pytest.raises(ConfigError, match=variable):
        OperatorConfig.from_env({variable: value})


def test_the_endpoint_picker_defaults_to_one_per_pool_and_is_read_from_the_chart():
    from slm_operator.spec import EndpointPickerRef

    assert OperatorConfig.from_env({}).endpoint_picker == EndpointPickerRef(
        name="{name}-epp", port=9002, failure_mode="FailClose")
    cfg = OperatorConfig.from_env({"SLM_ENDPOINT_PICKER_NAME": "shared-epp", "SLM_ENDPOINT_PICKER_PORT": "9100",
                                   "SLM_ENDPOINT_PICKER_FAILURE_MODE": "FailOpen"})
    assert cfg.endpoint_picker == EndpointPickerRef(name="shared-epp", port=9100, failure_mode="FailOpen")
    empty = {f"SLM_ENDPOINT_PICKER_{k}": "" for k in ("NAME", "PORT", "FAILURE_MODE")}
    assert OperatorConfig.from_env(empty) == OperatorConfig.from_env({})


@pytest.mark.parametrize(("variable", "value"), [
    ("SLM_ENDPOINT_PICKER_NAME", "Epp"),
    ("SLM_ENDPOINT_PICKER_NAME", "{service}-epp"),
    ("SLM_ENDPOINT_PICKER_NAME", "{name}-" + "x" * 20),  # 66 characters for a 45-character service
    ("SLM_ENDPOINT_PICKER_PORT", "0"),
    ("SLM_ENDPOINT_PICKER_PORT", "http"),
    ("SLM_ENDPOINT_PICKER_FAILURE_MODE", "failopen"),
])
def test_a_bad_endpoint_picker_setting_names_the_variable(variable, value):
    with pytest.raises(ConfigError, match=f"^{variable}="):
        OperatorConfig.from_env({variable: value})


def test_the_not_ready_grace_period_of_a_groups_node_is_read_and_checked():
    assert OperatorConfig.from_env({}).node_not_ready_seconds == 300
    assert OperatorConfig.from_env({"SLM_NODE_NOT_READY_SECONDS": "90"}).node_not_ready_seconds == 90
    with pytest.raises(ConfigError, match="SLM_NODE_NOT_READY_SECONDS"):
        OperatorConfig.from_env({"SLM_NODE_NOT_READY_SECONDS": "0"})


def test_the_device_plugin_allocation_policy_defaults_to_the_plugins_own_and_is_read():
    assert OperatorConfig.from_env({}).device_plugin_allocation_policy == "distributed"
    assert OperatorConfig.from_env({"SLM_DEVICE_PLUGIN_ALLOCATION_POLICY": ""}).device_plugin_allocation_policy == (
        "distributed")
    assert OperatorConfig.from_env({"SLM_DEVICE_PLUGIN_ALLOCATION_POLICY": "packed"}).device_plugin_allocation_policy \
        == "packed"


@pytest.mark.parametrize("value", ["spread", "Packed", "binpack", "none"])
def test_a_bad_allocation_policy_names_the_setting_and_the_choices(value):
    with pytest.raises(ConfigError) as err:
        OperatorConfig.from_env({"SLM_DEVICE_PLUGIN_ALLOCATION_POLICY": value})
    message = str(err.value)
    assert "SLM_DEVICE_PLUGIN_ALLOCATION_POLICY" in message and "devicePlugin.allocationPolicy" in message
    assert "distributed" in message and "packed" in message and "slm.pareto.dev/gpu-allocation-policy" in message

"""Operator configuration, read once from the environment (the Helm chart sets these variables)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping

from slm_operator import __version__
from slm_operator.builders import profiler_job
from slm_operator.builders.children import ENGINE_RUN_AS_USER, EngineDefaults
from slm_operator.constants import (
    ALLOCATION_POLICIES,
    DEFAULT_ALLOCATION_POLICY,
    FAILURE_MODES,
    GPU_RESOURCE,
    LABEL_ALLOCATION_POLICY,
    SHARING_MODES,
    AllocationPolicy,
)
from slm_operator.errors import ConfigError
from slm_operator.spec import EndpointPickerRef

__all__ = ["ConfigError", "OperatorConfig", "RUNNERS"]

RUNNERS = ("job", "local", "none")
#: The chart's default ``metrics.port``; kopf's liveness endpoint has 8080.
METRICS_PORT = 8081
#: A Service name (DNS-1035 label) once ``{name}`` is replaced.
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: The longest SLMService name the CRD admits, which ``{name}`` may stand for.
_LONGEST_SERVICE_NAME = "x" * 45
#: A Kubernetes quantity as a request takes it: ``500m``, ``2``, ``16Gi``, ``1e9``.
_QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    default_engine_image: str = "vllm/vllm-openai:v0.11.0"
    default_sharing: str = "auto"
    #: The NVIDIA device plugin's allocation policy for shared slots on nodes without the label
    #: ``slm.pareto.dev/gpu-allocation-policy`` (SLM_DEVICE_PLUGIN_ALLOCATION_POLICY, the chart's
    #: ``devicePlugin.allocationPolicy``); ``distributed`` is the plugin's own default.
    device_plugin_allocation_policy: AllocationPolicy = DEFAULT_ALLOCATION_POLICY
    #: The image `docker build --target profiler` makes, as the chart names it (docs/install.md).
    profiler_image: str = f"slm-profiler:{__version__}"
    #: ``job``: a Kubernetes Job on a GPU node; ``local``: a subprocess beside the operator (demo,
    #: tests, simulated engine); ``none``: profiling.mode auto falls back to the estimator.
    profiler_runner: str = "job"
    #: Engine the local runner profiles against (``simulated`` needs no GPU, and says so).
    profiler_engine: str = "simulated"
    profiler_namespace: str = "slm-system"
    profiler_service_account: str = "slm-profiler"
    #: Extra ``slm-profiler run`` flags for every profiler Job and local run (shorter windows on a dev cluster,
    #: ``--max-replicas``); SLM_PROFILER_EXTRA_ARGS holds them as a JSON list of strings.
    profiler_extra_args: tuple[str, ...] = ()
    work_dir: str = "/tmp/slm-operator"
    watch_namespace: str = ""
    #: Seconds between retries while something outside the spec must change (a Secret, a move).
    retry_seconds: int = 30
    #: Seconds between reconciles of a service that waits only for GPU capacity: the safety net
    #: under the event-driven wake-ups (``wakeups``), as a controller's resync period.
    resync_seconds: float = 3600.0
    #: Port of the Prometheus endpoint ``/metrics`` (``slm_operator.metrics``); 0 serves none.
    metrics_port: int = METRICS_PORT
    #: The uid (and gid, fsGroup) vLLM pods run as: non-root, for the ``restricted`` Pod Security Standard.
    engine_run_as_user: int = ENGINE_RUN_AS_USER
    #: Requests of each vLLM replica where ``spec.engine.resources`` leaves cpu or memory unset
    #: (the memory limit is the memory request); ``None``: no request.
    engine_cpu_request: str | None = None
    engine_memory_request: str | None = None
    engine_ephemeral_storage_request: str | None = None
    #: Requests of the profiler Job's pod (why these defaults: ``builders.profiler_job``).
    profiler_cpu_request: str = profiler_job.CPU_REQUEST
    profiler_memory_request: str = profiler_job.MEMORY_REQUEST
    #: A dedicated profiling pool (SLM_PROFILER_NODE_SELECTOR, _TOLERATIONS, _GPU_RESOURCE, _GPU_COUNT):
    #: every profiler Job goes there. ``None``: the operator picks a whole GPU from the inventory.
    profiler_pool: profiler_job.DedicatedPool | None = None
    #: A profiler Job whose pod cannot be scheduled (or started) this long falls back to the estimate.
    profiler_unschedulable_seconds: float = 600.0
    #: A GPU group whose node has been NotReady this long moves to another node (``planning.moves``).
    node_not_ready_seconds: float = 300.0
    #: One acting replica among several (``leader.py``): a Lease in ``leader_election_namespace``
    #: (the release namespace; empty: the profiler namespace), held ``lease_duration_seconds``.
    leader_election: bool = False
    leader_election_namespace: str = ""
    lease_name: str = "slm-operator-leader"
    lease_duration_seconds: float = 15.0
    #: The endpoint picker of every InferencePool (``spec.routing.inferencePool``) whose spec leaves
    #: it unset: ``{name}`` is the SLMService's name, as the inference extension's chart names one
    #: picker per pool; port 9002 is its ext-proc port; FailClose is the API's default.
    endpoint_picker: EndpointPickerRef = EndpointPickerRef(name="{name}-epp", port=9002, failure_mode="FailClose")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        defaults = cls()
        cfg = cls(
            default_engine_image=env.get("SLM_DEFAULT_ENGINE_IMAGE") or defaults.default_engine_image,
            default_sharing=env.get("SLM_DEFAULT_SHARING") or defaults.default_sharing,
            device_plugin_allocation_policy=_allocation_policy(env),
            profiler_image=env.get("SLM_PROFILER_IMAGE") or defaults.profiler_image,
            profiler_runner=env.get("SLM_PROFILER_RUNNER") or defaults.profiler_runner,
            profiler_engine=env.get("SLM_PROFILER_ENGINE") or defaults.profiler_engine,
            profiler_namespace=env.get("SLM_PROFILER_NAMESPACE") or defaults.profiler_namespace,
            profiler_service_account=env.get("SLM_PROFILER_SERVICE_ACCOUNT") or defaults.profiler_service_account,
            profiler_extra_args=_string_list("SLM_PROFILER_EXTRA_ARGS", env.get("SLM_PROFILER_EXTRA_ARGS") or "[]"),
            work_dir=env.get("SLM_WORK_DIR") or defaults.work_dir,
            watch_namespace=env.get("SLM_WATCH_NAMESPACE") or "",
            retry_seconds=int(env.get("SLM_RETRY_SECONDS") or defaults.retry_seconds),
            metrics_port=_port("SLM_METRICS_PORT", env.get("SLM_METRICS_PORT"), defaults.metrics_port),
            engine_run_as_user=_user_id("SLM_ENGINE_RUN_AS_USER", env.get("SLM_ENGINE_RUN_AS_USER"),
                                        defaults.engine_run_as_user),
            engine_cpu_request=_quantity("SLM_ENGINE_CPU_REQUEST", env),
            engine_memory_request=_quantity("SLM_ENGINE_MEMORY_REQUEST", env),
            engine_ephemeral_storage_request=_quantity("SLM_ENGINE_EPHEMERAL_STORAGE_REQUEST", env),
            profiler_cpu_request=_quantity("SLM_PROFILER_CPU_REQUEST", env) or defaults.profiler_cpu_request,
            profiler_memory_request=_quantity("SLM_PROFILER_MEMORY_REQUEST", env) or defaults.profiler_memory_request,
            profiler_pool=_profiler_pool(env),
            profiler_unschedulable_seconds=_seconds(
                "SLM_PROFILER_UNSCHEDULABLE_SECONDS", env.get("SLM_PROFILER_UNSCHEDULABLE_SECONDS"),
                defaults.profiler_unschedulable_seconds),
            resync_seconds=_seconds("SLM_RESYNC_SECONDS", env.get("SLM_RESYNC_SECONDS"), defaults.resync_seconds),
            node_not_ready_seconds=_seconds("SLM_NODE_NOT_READY_SECONDS", env.get("SLM_NODE_NOT_READY_SECONDS"),
                                            defaults.node_not_ready_seconds),
            leader_election=_flag("SLM_LEADER_ELECTION", env.get("SLM_LEADER_ELECTION"), defaults.leader_election),
            leader_election_namespace=(env.get("SLM_LEADER_ELECTION_NAMESPACE") or env.get("SLM_PROFILER_NAMESPACE")
                                       or defaults.profiler_namespace),
            lease_name=env.get("SLM_LEASE_NAME") or defaults.lease_name,
            lease_duration_seconds=_seconds("SLM_LEASE_DURATION_SECONDS", env.get("SLM_LEASE_DURATION_SECONDS"),
                                            defaults.lease_duration_seconds),
            endpoint_picker=_endpoint_picker(env, defaults.endpoint_picker),
        )
        if cfg.profiler_runner not in RUNNERS:
            raise ConfigError(f"SLM_PROFILER_RUNNER={cfg.profiler_runner!r}: use one of {', '.join(RUNNERS)}")
        if cfg.default_sharing not in SHARING_MODES:
            raise ConfigError(f"SLM_DEFAULT_SHARING={cfg.default_sharing!r}: use one of {', '.join(SHARING_MODES)}")
        if cfg.profiler_engine not in ("simulated", "vllm"):
            raise ConfigError(f"SLM_PROFILER_ENGINE={cfg.profiler_engine!r}: use simulated or vllm")
        return cfg

    def engine_defaults(self) -> EngineDefaults:
        """What this configuration adds to every vLLM pod (``build_group_statefulset``)."""
        return EngineDefaults(run_as_user=self.engine_run_as_user, cpu_request=self.engine_cpu_request,
                              memory_request=self.engine_memory_request,
                              ephemeral_storage_request=self.engine_ephemeral_storage_request)


def _allocation_policy(env: Mapping[str, str]) -> AllocationPolicy:
    """SLM_DEVICE_PLUGIN_ALLOCATION_POLICY (empty: the device plugin's default), or a ConfigError."""
    raw = (env.get("SLM_DEVICE_PLUGIN_ALLOCATION_POLICY") or "").strip()
    for policy in ALLOCATION_POLICIES:
        if raw == policy:
            return policy
    if not raw:
        return DEFAULT_ALLOCATION_POLICY
    raise ConfigError(
        f"SLM_DEVICE_PLUGIN_ALLOCATION_POLICY={raw!r} (the chart's devicePlugin.allocationPolicy): use distributed "
        "(the NVIDIA device plugin's default: a node's shared slots are spread over its GPUs) or packed (the "
        "plugin runs with its packed allocation policy); a node can differ with the label "
        f"{LABEL_ALLOCATION_POLICY}")


def _endpoint_picker(env: Mapping[str, str], default: EndpointPickerRef) -> EndpointPickerRef:
    """SLM_ENDPOINT_PICKER_NAME, _PORT and _FAILURE_MODE over ``default``, or a ConfigError."""
    name = (env.get("SLM_ENDPOINT_PICKER_NAME") or "").strip() or default.name or ""
    if "{" in name.replace("{name}", "") or not _SERVICE_NAME.fullmatch(name.replace("{name}", "x")) \
            or len(name.replace("{name}", _LONGEST_SERVICE_NAME)) > 63:
        raise ConfigError(f"SLM_ENDPOINT_PICKER_NAME={name!r}: give a Service name of lowercase letters, digits "
                          "and '-', where {name} stands for the SLMService's name, such as {name}-epp (at most 63 "
                          "characters with a 45-character SLMService name)")
    raw_port = (env.get("SLM_ENDPOINT_PICKER_PORT") or "").strip()
    if raw_port and not (raw_port.isdigit() and 1 <= int(raw_port) <= 65535):
        raise ConfigError(f"SLM_ENDPOINT_PICKER_PORT={raw_port!r}: give a port from 1 to 65535, such as 9002")
    mode = (env.get("SLM_ENDPOINT_PICKER_FAILURE_MODE") or "").strip() or default.failure_mode
    if mode not in FAILURE_MODES:
        raise ConfigError(f"SLM_ENDPOINT_PICKER_FAILURE_MODE={mode!r}: use one of {', '.join(FAILURE_MODES)}")
    return EndpointPickerRef(name=name, port=int(raw_port) if raw_port else default.port, failure_mode=mode)


def _profiler_pool(env: Mapping[str, str]) -> profiler_job.DedicatedPool | None:
    """The chart's profiling pool, or ``None`` when neither a node selector nor a GPU resource is set."""
    selector = _json_env("SLM_PROFILER_NODE_SELECTOR", env, "{}", example='{"pool": "profiling"}')
    if not isinstance(selector, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in selector.items()):
        raise ConfigError(f"SLM_PROFILER_NODE_SELECTOR={env.get('SLM_PROFILER_NODE_SELECTOR')!r}: give a JSON "
                          'object of label values, such as {"pool": "profiling"}')
    tolerations = _json_env("SLM_PROFILER_TOLERATIONS", env, "[]", example='[{"key": "profiling", '
                            '"operator": "Exists", "effect": "NoSchedule"}]')
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        raise ConfigError(f"SLM_PROFILER_TOLERATIONS={env.get('SLM_PROFILER_TOLERATIONS')!r}: give a JSON list "
                          'of tolerations, such as [{"key": "profiling", "operator": "Exists"}]')
    resource = (env.get("SLM_PROFILER_GPU_RESOURCE") or "").strip()
    raw_count = (env.get("SLM_PROFILER_GPU_COUNT") or "").strip()
    if raw_count and not (raw_count.isdigit() and int(raw_count) >= 1):
        raise ConfigError(f"SLM_PROFILER_GPU_COUNT={raw_count!r}: give how many of SLM_PROFILER_GPU_RESOURCE make "
                          "one whole GPU, at least 1 (e.g. 4 on a pool shared 4 ways)")
    if not selector and not resource:
        if tolerations or raw_count not in ("", "1"):
            raise ConfigError("SLM_PROFILER_TOLERATIONS and SLM_PROFILER_GPU_COUNT describe a profiling pool: "
                              "also set SLM_PROFILER_NODE_SELECTOR or SLM_PROFILER_GPU_RESOURCE (the chart's "
                              "profiler.nodeSelector, profiler.gpuResource)")
        return None
    return profiler_job.DedicatedPool(node_selector=selector, tolerations=tuple(tolerations),
                                      resource_name=resource or GPU_RESOURCE,
                                      count=int(raw_count) if raw_count else 1)


def _json_env(name: str, env: Mapping[str, str], default: str, *, example: str) -> object:
    raw = (env.get(name) or "").strip() or default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}={raw!r} is not JSON ({exc}): give one such as {example}") from None


def _user_id(name: str, raw: str | None, default: int) -> int:
    """A uid other than root's (``runAsNonRoot`` refuses 0), or a ConfigError naming ``name``."""
    if not raw:
        return default
    if not re.fullmatch(r"[0-9]+", raw.strip()) or int(raw) == 0:
        raise ConfigError(f"{name}={raw!r}: give a numeric user id other than 0, such as 1000")
    return int(raw)


def _port(name: str, raw: str | None, default: int) -> int:
    """A TCP port, or 0 for none; a ConfigError naming ``name`` otherwise."""
    if raw is None or not raw.strip():
        return default
    if not re.fullmatch(r"[0-9]+", raw.strip()) or int(raw) > 65535:
        raise ConfigError(f"{name}={raw!r}: give a port number 1-65535, or 0 to serve no metrics")
    return int(raw)


def _flag(name: str, raw: str | None, default: bool) -> bool:
    """``true``/``false`` (any case; empty: ``default``), or a ConfigError naming ``name``."""
    if not raw:
        return default
    if raw.strip().lower() not in ("true", "false"):
        raise ConfigError(f"{name}={raw!r}: give true or false")
    return raw.strip().lower() == "true"


def _seconds(name: str, raw: str | None, default: float) -> float:
    """A duration of at least one second, or a ConfigError naming ``name``."""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value < 1:
        raise ConfigError(f"{name}={raw!r}: give a number of seconds, at least 1, such as 15")
    return value


def _quantity(name: str, env: Mapping[str, str]) -> str | None:
    """A Kubernetes quantity (``500m``, ``16Gi``), ``None`` when unset or empty, or a ConfigError."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not _QUANTITY.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} is not a Kubernetes quantity: give one such as 500m, 2, 16Gi")
    return raw


def _string_list(name: str, raw: str) -> tuple[str, ...]:
    """A JSON list of strings (the chart writes it with toJson), or a ConfigError naming ``name``."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}={raw!r} is not JSON ({exc}): give a list such as [\"--duration-s=10\"]") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}={raw!r}: give a JSON list of strings such as [\"--duration-s=10\"]")
    return tuple(value)

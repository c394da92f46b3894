"""Operator configuration, read once from the environment (the Helm chart sets these variables)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

from slm_operator.constants import SHARING_MODES
from slm_operator.errors import ConfigError

__all__ = ["ConfigError", "OperatorConfig", "RUNNERS"]

RUNNERS = ("job", "local", "none")


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    default_engine_image: str = "vllm/vllm-openai:v0.11.0"
    default_sharing: str = "auto"
    profiler_image: str = "ghcr.io/slm-operator/slm-profiler:0.1.0"
    #: ``job``: a Kubernetes Job on a GPU node; ``local``: a subprocess beside the operator (demo,
    #: tests, simulated engine); ``none``: profiling.mode auto falls back to the estimator.
    profiler_runner: str = "job"
    #: Engine the local runner profiles against (``simulated`` needs no GPU, and says so).
    profiler_engine: str = "simulated"
    profiler_namespace: str = "slm-system"
    profiler_service_account: str = "slm-profiler"
    #: Extra ``slm-profiler run`` flags for every profiler Job (shorter windows on a dev cluster,
    #: ``--max-replicas``); SLM_PROFILER_EXTRA_ARGS holds them as a JSON list of strings.
    profiler_extra_args: tuple[str, ...] = ()
    work_dir: str = "/tmp/slm-operator"
    watch_namespace: str = ""
    #: Seconds between retries while something outside the spec must change (a Secret, free GPUs).
    retry_seconds: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        defaults = cls()
        cfg = cls(
            default_engine_image=env.get("SLM_DEFAULT_ENGINE_IMAGE") or defaults.default_engine_image,
            default_sharing=env.get("SLM_DEFAULT_SHARING") or defaults.default_sharing,
            profiler_image=env.get("SLM_PROFILER_IMAGE") or defaults.profiler_image,
            profiler_runner=env.get("SLM_PROFILER_RUNNER") or defaults.profiler_runner,
            profiler_engine=env.get("SLM_PROFILER_ENGINE") or defaults.profiler_engine,
            profiler_namespace=env.get("SLM_PROFILER_NAMESPACE") or defaults.profiler_namespace,
            profiler_service_account=env.get("SLM_PROFILER_SERVICE_ACCOUNT") or defaults.profiler_service_account,
            profiler_extra_args=_string_list("SLM_PROFILER_EXTRA_ARGS", env.get("SLM_PROFILER_EXTRA_ARGS") or "[]"),
            work_dir=env.get("SLM_WORK_DIR") or defaults.work_dir,
            watch_namespace=env.get("SLM_WATCH_NAMESPACE") or "",
            retry_seconds=int(env.get("SLM_RETRY_SECONDS") or defaults.retry_seconds),
        )
        if cfg.profiler_runner not in RUNNERS:
            raise ConfigError(f"SLM_PROFILER_RUNNER={cfg.profiler_runner!r}: use one of {', '.join(RUNNERS)}")
        if cfg.default_sharing not in SHARING_MODES:
            raise ConfigError(f"SLM_DEFAULT_SHARING={cfg.default_sharing!r}: use one of {', '.join(SHARING_MODES)}")
        if cfg.profiler_engine not in ("simulated", "vllm"):
            raise ConfigError(f"SLM_PROFILER_ENGINE={cfg.profiler_engine!r}: use simulated or vllm")
        return cfg


def _string_list(name: str, raw: str) -> tuple[str, ...]:
    """A JSON list of strings (the chart writes it with toJson), or a ConfigError naming ``name``."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}={raw!r} is not JSON ({exc}): give a list such as [\"--duration-s=10\"]") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}={raw!r}: give a JSON list of strings such as [\"--duration-s=10\"]")
    return tuple(value)

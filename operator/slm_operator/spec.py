"""Parse an SLMService ``spec`` (a plain dict, as the API server stores it) into typed values.

The API server's schema and CEL rules reject most bad input before we ever see it; this parser is
the second line: it applies the same defaults (so an object created before a default existed still
works) and raises :class:`SpecError` naming the field and the fix for what the schema can't express.

Side-effect free: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, get_args

from slm_operator.constants import DRA_DEVICE_CLASS, GPU_RESOURCE, SHARING_MODES, Sharing
from slm_operator.errors import SpecError
from slm_operator.profiling.types import Slo, Workload

__all__ = ["SLMServiceSpec", "SpecError", "parse_spec"]

ProfilingMode = Literal["auto", "estimate", "static", "skip"]
PROFILING_MODES: tuple[ProfilingMode, ...] = get_args(ProfilingMode)

#: vLLM flags the operator sets from the plan; a user setting them in ``engine.args`` would
#: silently fight the plan, so they are refused with the field to use instead.
OPERATOR_OWNED_FLAGS: Mapping[str, str] = {
    "--max-num-seqs": "profiling.static.batchSize (or let the profiler choose)",
    "--gpu-memory-utilization": "nothing: the operator computes the memory budget per replica",
    "--kv-cache-memory-bytes": "nothing: the operator computes the memory budget per replica",
    "--port": "nothing: the operator owns the serving port",
    "--model": "spec.model",
    "--max-model-len": "spec.workload.maxModelLen",
}


@dataclasses.dataclass(frozen=True)
class SecretRef:
    name: str
    key: str = "HF_TOKEN"


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    image: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    hf_token_secret_ref: SecretRef | None = None
    cpu: str | None = None
    memory: str | None = None


@dataclasses.dataclass(frozen=True)
class GpuRequest:
    product: str | None = None
    resource_name: str = GPU_RESOURCE
    sharing: Sharing = "auto"
    device_class_name: str = DRA_DEVICE_CLASS


@dataclasses.dataclass(frozen=True)
class StaticProfile:
    batch_size: int
    replicas_per_gpu: int
    memory_per_replica_gib: float
    tokens_per_second_per_gpu: float


@dataclasses.dataclass(frozen=True)
class ProfilingSpec:
    mode: ProfilingMode = "auto"
    epsilon: float = 0.1
    batch_sizes: tuple[int, ...] | None = None
    model_config: Mapping[str, Any] | None = None
    static: StaticProfile | None = None


@dataclasses.dataclass(frozen=True)
class ScaleSpec:
    """Either a fixed GPU count or a throughput target clamped to [min_gpus, max_gpus]."""

    gpus: int | None = 1
    target_tokens_per_second: float | None = None
    min_gpus: int = 0
    max_gpus: int | None = None


@dataclasses.dataclass(frozen=True)
class SLMServiceSpec:
    model: str
    revision: str | None
    served_model_name: str
    engine: EngineSpec
    gpu: GpuRequest
    workload: Workload
    slo: Slo
    profiling: ProfilingSpec
    scale: ScaleSpec


def parse_spec(spec: Mapping[str, Any]) -> SLMServiceSpec:
    """Turn a raw spec into :class:`SLMServiceSpec`, or raise :class:`SpecError`. Side-effect free."""
    model = spec.get("model")
    if not isinstance(model, str) or not model.strip():
        raise SpecError("model", "is required: a hub id (org/name), a local path, or pvc://claim/path")
    if any(ch.isspace() for ch in model):
        raise SpecError("model", f"{model!r} contains whitespace; remove it")
    return SLMServiceSpec(
        model=model,
        revision=spec.get("revision") or None,
        served_model_name=spec.get("servedModelName") or model,
        engine=_parse_engine(spec.get("engine") or {}),
        gpu=_parse_gpu(spec.get("gpu") or {}),
        workload=_parse_workload(spec.get("workload") or {}),
        slo=Slo(
            max_inter_token_latency_ms=(spec.get("slo") or {}).get("maxInterTokenLatencyMs"),
            max_time_to_first_token_ms=(spec.get("slo") or {}).get("maxTimeToFirstTokenMs"),
        ),
        profiling=_parse_profiling(spec.get("profiling") or {}),
        scale=_parse_scale(spec.get("scale")),
    )


def _parse_engine(raw: Mapping[str, Any]) -> EngineSpec:
    args = tuple(str(a) for a in raw.get("args") or ())
    for arg in args:
        # NB: vLLM's argparse accepts --max_num_seqs too, and "--flag value" as two list items.
        flag = arg.split("=", 1)[0].replace("_", "-")
        if flag in OPERATOR_OWNED_FLAGS:
            raise SpecError("engine.args", f"{flag} is set by the operator; use {OPERATOR_OWNED_FLAGS[flag]}")
    env = tuple((str(e["name"]), str(e.get("value", ""))) for e in raw.get("env") or ())
    ref = raw.get("hfTokenSecretRef")
    resources = raw.get("resources") or {}
    return EngineSpec(
        image=raw.get("image") or None,
        args=args,
        env=env,
        hf_token_secret_ref=SecretRef(name=ref["name"], key=ref.get("key") or "HF_TOKEN") if ref else None,
        cpu=_quantity(resources.get("cpu")),
        memory=_quantity(resources.get("memory")),
    )


def _quantity(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_gpu(raw: Mapping[str, Any]) -> GpuRequest:
    sharing = raw.get("sharing") or "auto"
    if sharing not in SHARING_MODES:
        raise SpecError("gpu.sharing", f"{sharing!r} is not one of {', '.join(SHARING_MODES)}")
    return GpuRequest(
        product=raw.get("product") or None,
        resource_name=raw.get("resourceName") or GPU_RESOURCE,
        sharing=sharing,
        device_class_name=raw.get("deviceClassName") or DRA_DEVICE_CLASS,
    )


def _parse_workload(raw: Mapping[str, Any]) -> Workload:
    workload = Workload(
        input_tokens=int(raw.get("inputTokens", 512)),
        output_tokens=int(raw.get("outputTokens", 256)),
        max_model_len=int(raw["maxModelLen"]) if raw.get("maxModelLen") else None,
    )
    if workload.max_model_len and workload.tokens_per_request > workload.max_model_len:
        raise SpecError(
            "workload.maxModelLen",
            f"{workload.max_model_len} is shorter than inputTokens+outputTokens "
            f"({workload.tokens_per_request}); raise maxModelLen or shorten the workload",
        )
    return workload


def _parse_profiling(raw: Mapping[str, Any]) -> ProfilingSpec:
    mode = raw.get("mode") or "auto"
    if mode not in PROFILING_MODES:
        raise SpecError("profiling.mode", f"{mode!r} is not one of {', '.join(PROFILING_MODES)}")
    epsilon = float(raw.get("epsilon", 0.1))
    if not 0.0 < epsilon < 1.0:
        raise SpecError("profiling.epsilon", f"{epsilon} must be strictly between 0 and 1 (e.g. 0.1)")
    static_raw = raw.get("static")
    static = None
    if static_raw:
        missing = [k for k in ("batchSize", "replicasPerGPU", "memoryPerReplicaGiB", "tokensPerSecondPerGPU")
                   if static_raw.get(k) is None]
        if missing:
            raise SpecError("profiling.static", f"missing {', '.join(missing)}")
        static = StaticProfile(
            batch_size=int(static_raw["batchSize"]),
            replicas_per_gpu=int(static_raw["replicasPerGPU"]),
            memory_per_replica_gib=float(static_raw["memoryPerReplicaGiB"]),
            tokens_per_second_per_gpu=float(static_raw["tokensPerSecondPerGPU"]),
        )
    if mode == "static" and static is None:
        raise SpecError("profiling.static", "is required when profiling.mode is static")
    sizes = raw.get("batchSizes")
    return ProfilingSpec(
        mode=mode,
        epsilon=epsilon,
        batch_sizes=tuple(sorted({int(b) for b in sizes})) if sizes else None,
        model_config=raw.get("modelConfig") or None,
        static=static,
    )


def _parse_scale(raw: Mapping[str, Any] | None) -> ScaleSpec:
    if not raw:
        return ScaleSpec()
    gpus, target = raw.get("gpus"), raw.get("targetTokensPerSecond")
    if (gpus is None) == (target is None):
        raise SpecError("scale", "set exactly one of scale.gpus or scale.targetTokensPerSecond")
    min_gpus = int(raw.get("minGPUs", 0))
    max_gpus = int(raw["maxGPUs"]) if raw.get("maxGPUs") is not None else None
    if max_gpus is not None and min_gpus > max_gpus:
        raise SpecError("scale.minGPUs", f"{min_gpus} is above scale.maxGPUs {max_gpus}")
    return ScaleSpec(
        gpus=int(gpus) if gpus is not None else None,
        target_tokens_per_second=float(target) if target is not None else None,
        min_gpus=min_gpus,
        max_gpus=max_gpus,
    )

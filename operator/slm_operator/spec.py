"""Parse an SLMService ``spec`` (a plain dict, as the API server stores it) into typed values.

The API server's schema and CEL rules reject most bad input before we ever see it; this parser is
the second line: it applies the same defaults (so an object created before a default existed still
works) and raises :class:`SpecError` naming the field and the fix for what the schema can't express.

Side-effect free: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args

from slm_operator.constants import DRA_DEVICE_CLASS, FAILURE_MODES, GPU_RESOURCE, SHARING_MODES, FailureMode, Sharing
from slm_operator.errors import SpecError
from slm_operator.profiling.types import Slo, Workload

__all__ = ["SLMServiceSpec", "SpecError", "parse_spec"]

T = TypeVar("T")
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


#: Environment variables the operator sets on the vLLM container from a Secret reference.
HF_TOKEN_ENV = "HF_TOKEN"
API_KEY_ENV = "VLLM_API_KEY"


def owned_flag(arg: str) -> str | None:
    """The operator-owned flag ``arg`` would set, in any spelling vLLM's parser accepts.

    NB: argparse takes ``--flag=value`` and ``--flag value`` (two list items), vLLM's parser maps
    ``_`` to ``-``, and argparse accepts any unambiguous abbreviation: ``--max-num-seq=4096`` sets
    ``--max-num-seqs``. A prefix of several flags is ambiguous and fails in vLLM anyway.
    """
    if not arg.startswith("--"):
        return None
    flag = arg.split("=", 1)[0].replace("_", "-")
    if len(flag) <= 2:
        return None
    return next((owned for owned in OPERATOR_OWNED_FLAGS if owned.startswith(flag)), None)


@dataclasses.dataclass(frozen=True)
class SecretRef:
    name: str
    key: str = HF_TOKEN_ENV


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    image: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    hf_token_secret_ref: SecretRef | None = None
    #: The OpenAI endpoint's API key (vLLM reads ``VLLM_API_KEY``); ``None``: no key.
    api_key_secret_ref: SecretRef | None = None
    cpu: str | None = None
    memory: str | None = None


@dataclasses.dataclass(frozen=True)
class NetworkPolicySpec:
    """Admit traffic to the replicas only from the service's namespace and these peers (each a
    NetworkPolicy peer: ``namespaceSelector`` and/or ``podSelector`` with ``matchLabels``)."""

    ingress_from: tuple[Mapping[str, Any], ...] = ()


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
class EndpointPickerRef:
    """The endpoint picker (EPP) Service an InferencePool names. In ``spec.routing`` a field left
    ``None`` takes the operator's default (``OperatorConfig.endpoint_picker``, Helm values
    ``routing.endpointPicker``), whose ``name`` may hold ``{name}``: the SLMService's name."""

    name: str | None = None
    port: int | None = None
    failure_mode: FailureMode | None = None

    def over(self, defaults: EndpointPickerRef) -> EndpointPickerRef:
        """This reference with the fields it leaves unset taken from ``defaults``."""
        return EndpointPickerRef(name=self.name or defaults.name, port=self.port or defaults.port,
                                 failure_mode=self.failure_mode or defaults.failure_mode)


@dataclasses.dataclass(frozen=True)
class RoutingSpec:
    """``spec.routing``: with ``inference_pool`` set, an InferencePool beside the Service."""

    inference_pool: EndpointPickerRef | None = None


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
    network_policy: NetworkPolicySpec | None = None
    routing: RoutingSpec = RoutingSpec()


def parse_spec(spec: Mapping[str, Any]) -> SLMServiceSpec:
    """Turn a raw spec into :class:`SLMServiceSpec`, or raise :class:`SpecError`. Side-effect free."""
    model = spec.get("model")
    if not isinstance(model, str) or not model.strip():
        raise SpecError("model", "is required: a hub id (org/name), a local path, or pvc://claim/path")
    if any(ch.isspace() for ch in model):
        raise SpecError("model", f"{model!r} contains whitespace; remove it")
    if model.startswith("-"):
        raise SpecError("model", f"{model!r} starts with '-' and vLLM would read it as a flag; use a hub id, "
                        "a path, or pvc://claim/path")
    served = spec.get("servedModelName") or model
    if not isinstance(served, str) or served.startswith("-"):
        raise SpecError("servedModelName", f"{served!r} must be a name that does not start with '-'")
    return SLMServiceSpec(
        model=model,
        revision=spec.get("revision") or None,
        served_model_name=served,
        engine=_section("engine", _parse_engine, spec.get("engine") or {}),
        gpu=_section("gpu", _parse_gpu, spec.get("gpu") or {}),
        workload=_section("workload", _parse_workload, spec.get("workload") or {}),
        slo=_section("slo", _parse_slo, spec.get("slo") or {}),
        profiling=_section("profiling", _parse_profiling, spec.get("profiling") or {}),
        scale=_section("scale", _parse_scale, spec.get("scale")),
        network_policy=_section("networkPolicy", _parse_network_policy, spec.get("networkPolicy")),
        routing=_section("routing", _parse_routing, spec.get("routing") or {}),
    )


def _section(field: str, parse: Callable[[Any], T], raw: Any) -> T:
    """``parse(raw)``, with any malformed value (an object stored before the CRD's schema said
    otherwise, a hand-edited etcd) turned into a SpecError naming ``field``."""
    try:
        return parse(raw)
    except SpecError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise SpecError(field, f"is malformed ({type(exc).__name__}: {exc}); see kubectl explain "
                        f"slmservice.spec.{field}") from None


def _parse_slo(raw: Mapping[str, Any]) -> Slo:
    itl, ttft = raw.get("maxInterTokenLatencyMs"), raw.get("maxTimeToFirstTokenMs")
    return Slo(max_inter_token_latency_ms=float(itl) if itl is not None else None,
               max_time_to_first_token_ms=float(ttft) if ttft is not None else None)


def _parse_network_policy(raw: Mapping[str, Any] | None) -> NetworkPolicySpec | None:
    if raw is None:
        return None
    peers = []
    for peer in raw.get("ingressFrom") or ():
        kept = {k: {"matchLabels": {str(lk): str(lv) for lk, lv in (peer[k].get("matchLabels") or {}).items()}}
                for k in ("namespaceSelector", "podSelector") if peer.get(k) is not None}
        if not kept:
            raise SpecError("networkPolicy.ingressFrom", "each peer needs a namespaceSelector or a podSelector")
        peers.append(kept)
    return NetworkPolicySpec(ingress_from=tuple(peers))


def _parse_routing(raw: Mapping[str, Any]) -> RoutingSpec:
    pool = raw.get("inferencePool")
    if pool is None:  # NB: `inferencePool: {}` asks for a pool with the operator's endpoint picker
        return RoutingSpec()
    picker = pool.get("endpointPicker") or {}
    mode = picker.get("failureMode")
    if mode is not None and mode not in FAILURE_MODES:
        raise SpecError("routing.inferencePool.endpointPicker.failureMode",
                        f"{mode!r} is not one of {', '.join(FAILURE_MODES)}")
    port = picker.get("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise SpecError("routing.inferencePool.endpointPicker.port", f"{port} is not a port: give 1 to 65535")
    return RoutingSpec(inference_pool=EndpointPickerRef(
        name=str(picker["name"]) if picker.get("name") else None,
        port=int(port) if port is not None else None,
        failure_mode=mode,
    ))


def _parse_engine(raw: Mapping[str, Any]) -> EngineSpec:
    args = tuple(str(a) for a in raw.get("args") or ())
    for arg in args:
        flag = owned_flag(arg)
        if flag is not None:
            raise SpecError("engine.args", f"{arg.split('=', 1)[0]} sets {flag}, which the operator sets; use "
                            f"{OPERATOR_OWNED_FLAGS[flag]}")
    env = tuple((str(e["name"]), str(e.get("value", ""))) for e in raw.get("env") or ())
    hf_token = _secret_ref(raw.get("hfTokenSecretRef"), default_key=HF_TOKEN_ENV)
    api_key = _secret_ref(raw.get("apiKeySecretRef"), default_key=API_KEY_ENV)
    refs = ((hf_token, HF_TOKEN_ENV, "hfTokenSecretRef"), (api_key, API_KEY_ENV, "apiKeySecretRef"))
    for ref, variable, field in refs:
        if ref is not None and any(name == variable for name, _ in env):
            raise SpecError("engine.env", f"sets {variable}, which the operator sets from engine.{field}; "
                            "remove one of the two")
    resources = raw.get("resources") or {}
    return EngineSpec(
        image=raw.get("image") or None,
        args=args,
        env=env,
        hf_token_secret_ref=hf_token,
        api_key_secret_ref=api_key,
        cpu=_quantity(resources.get("cpu")),
        memory=_quantity(resources.get("memory")),
    )


def _secret_ref(raw: Mapping[str, Any] | None, *, default_key: str) -> SecretRef | None:
    return SecretRef(name=str(raw["name"]), key=str(raw.get("key") or default_key)) if raw else None


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

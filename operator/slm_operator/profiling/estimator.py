"""Roofline estimate of one model's serving curve on one GPU, without running it.

Model of one engine step (steady state: a closed loop keeps ``b`` requests of ``I`` input and
``O`` output tokens in flight; each step emits one token per running request)::

    t_gpu  = max(weights / (η_mem·BW), 2·P·n_tokens / (η_flop·F))   # weights read once per step vs GEMMs
           + b · ctx · kv_bytes_per_token / (η_mem·BW)               # every sequence reads its KV cache
    t_seq  = a0 + a1·b                                               # per step, per sequence
    ITL    = t_seq + t_gpu (+ the prefill steps that interrupt decoding, when prefill is not chunked)

``ctx = I + O/2`` is the mean context; ``n_tokens`` counts the decode tokens plus, with chunked
prefill, the prefill tokens admitted in the same step (``b·I/O`` in steady state). The prefill
budget ``max_num_batched_tokens`` therefore caps the batch at ``budget·O/(I+O)``, and the KV pool
caps it at ``pool_tokens/(I+O)`` (beyond that the engine preempts). Output tok/s is ``b/ITL``;
total (input+output) tok/s is that times ``(I+O)/O``, the quantity the reference data reports.

The per-step overhead ``a0`` (scheduling, launches) is why throughput grows almost linearly at
small batches; the per-sequence term ``a1·b`` plus the KV reads are why it flattens into a
plateau. ``a1`` lumps what grows with the batch besides the ideal KV read: CPU work per sequence
(scheduling, sampling, detokenising) and attention kernels running below peak bandwidth; the
reference data cannot tell them apart, and the replication data say about half of it is GPU time
(replicas overlap only partly).

k replicas on one GPU (MPS): each replica's step stretches by a share ``γ`` of a solo step per
other replica, and the GPU's own time bounds it from below::

    ITL_k = max(ITL_1 · (1 + γ·(k−1)),  k · t_gpu)

The constants in :data:`CALIBRATION` were fitted ONCE against the OPT-1.3B / H100 64 GB reference
sweeps (``shared/reference``); :mod:`.calibration` reproduces the fit and reports the errors
(docs/profiling.md). They describe vLLM 0.6 (V0 engine) on that machine; a newer engine with less
CPU overhead per step makes real batches cheaper than estimated. Everything here is side-effect
free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from .gpus import GpuSpec
from .modelconfig import GIB, ModelConfig
from .selection import SelectionPoint, select_batch, select_replicas
from .types import Profile, Slo, Workload

__all__ = [
    "Calibration",
    "CALIBRATION",
    "BatchEstimate",
    "ReplicaEstimate",
    "DEFAULT_BATCH_SIZES",
    "estimate_batch",
    "estimate_curve",
    "estimate_replicas",
    "estimate_profile",
    "replica_memory_gib",
]

#: Batch sizes the estimate evaluates when none are given: geometric with ×1.5 steps past 32.
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Efficiency factors and overheads of the step model (see the module docstring)."""

    #: a0: fixed time per engine step (s): scheduling, kernel launches.
    step_overhead_s: float
    #: a1: time per running sequence per step (s) beyond the ideal KV read.
    per_sequence_overhead_s: float
    #: η_mem: achieved share of peak memory bandwidth (weights and KV reads).
    memory_efficiency: float
    #: η_flop: achieved share of peak tensor throughput in the GEMMs.
    compute_efficiency: float
    #: γ: slowdown of one replica's step per other replica sharing the GPU (MPS).
    replica_contention: float
    #: Device memory of the CUDA context, allocator and graphs, besides weights and KV (GiB).
    runtime_overhead_gib: float = 0.7
    #: Share of device memory the engine may use (vLLM's --gpu-memory-utilization default).
    gpu_memory_utilization: float = 0.9


#: Fitted on shared/reference (OPT-1.3B, H100 64 GB, vLLM 0.6 V0); see calibration.py and
#: docs/profiling.md for the fit and its errors. NB: the 0.7 GiB runtime overhead is the
#: reference's "initial memory usage" (3.11 GiB) minus its weights (2.45 GiB).
CALIBRATION = Calibration(
    step_overhead_s=2.55e-3,
    per_sequence_overhead_s=7.52e-5,
    memory_efficiency=1.0,
    compute_efficiency=0.7,  # NB: a prior, not fitted (see calibration.fit_calibration)
    replica_contention=0.545,
)


@dataclasses.dataclass(frozen=True)
class BatchEstimate:
    """Predicted steady-state behaviour of one replica run with ``batch_size`` concurrent requests."""

    batch_size: int
    #: Requests actually decoding together: the batch, capped by the prefill budget and the KV pool.
    effective_batch: float
    total_token_throughput_tok_s: float
    output_throughput_tok_s: float
    inter_token_latency_ms: float
    ttft_ms: float
    kv_cache_gib: float
    memory_gib: float
    #: The largest part of a step: "step-overhead" (a0), "per-sequence" (a1·b), "weights" (reading
    #: them), "compute" (GEMMs), "kv-cache" (reading it).
    bound: str
    #: The KV cache of ``batch_size`` requests does not fit the GPU: the engine would preempt.
    preempts: bool = False

    def to_dict(self) -> dict[str, object]:
        """The CLI's JSON shape (camelCase)."""
        return {
            "batchSize": self.batch_size,
            "effectiveBatch": round(self.effective_batch, 2),
            "tokensPerSecond": round(self.total_token_throughput_tok_s, 1),
            "outputTokensPerSecond": round(self.output_throughput_tok_s, 1),
            "interTokenLatencyMs": round(self.inter_token_latency_ms, 3),
            "timeToFirstTokenMs": round(self.ttft_ms, 3),
            "kvCacheGiB": round(self.kv_cache_gib, 4),
            "memoryGiB": round(self.memory_gib, 3),
            "bound": self.bound,
            "preempts": self.preempts,
        }


@dataclasses.dataclass(frozen=True)
class ReplicaEstimate:
    """k replicas at one batch size sharing one GPU."""

    replicas: int
    batch_size: int
    aggregate_tok_s: float
    inter_token_latency_ms: float
    memory_per_replica_gib: float
    fits_memory: bool


def _check_workload(workload: Workload) -> None:
    if workload.input_tokens < 1 or workload.output_tokens < 1:
        raise ValueError(
            f"workload needs inputTokens >= 1 and outputTokens >= 1, got {workload.input_tokens} "
            f"and {workload.output_tokens}"
        )


def replica_memory_gib(
    *,
    model_config: ModelConfig,
    workload: Workload,
    batch_size: float,
    max_num_batched_tokens: int | None = 2048,
    calibration: Calibration = CALIBRATION,
) -> tuple[float, float]:
    """(KV GiB, total GiB) one replica needs for ``batch_size`` requests at their full length."""
    kv = batch_size * workload.tokens_per_request * model_config.kv_bytes_per_token / GIB
    tokens = max_num_batched_tokens or workload.effective_max_model_len()
    # NB: activations of one step's tokens (hidden, attention output, MLP) and fp32 logits.
    activations = (
        tokens * (4 * model_config.hidden_size + 2 * model_config.intermediate_size) * model_config.dtype_bytes
        + batch_size * model_config.vocab_size * 4
    ) / GIB
    return kv, model_config.weights_gib + kv + calibration.runtime_overhead_gib + activations


def _gpu_times(
    *, m: ModelConfig, gpu: GpuSpec, c: Calibration, decoding: float, tokens: float, context: float
) -> tuple[float, float, float]:
    """(weights-or-GEMM time, KV read time, GEMM time) of one step, in seconds."""
    bandwidth = c.memory_efficiency * gpu.bandwidth_bytes_s
    weights = m.weights_bytes / bandwidth
    gemm = 2 * m.matmul_params * tokens / (c.compute_efficiency * gpu.flops)
    kv = decoding * context * m.kv_bytes_per_token / bandwidth
    return max(weights, gemm), kv, gemm


def estimate_batch(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    batch_size: float,
    max_num_batched_tokens: int | None = 2048,
    kv_pool_gib: float | None = None,
    calibration: Calibration = CALIBRATION,
) -> BatchEstimate:
    """Predict one replica at ``batch_size`` concurrent requests. Side-effect free.

    ``max_num_batched_tokens`` is the chunked-prefill budget per step (vLLM's V1 engine always
    chunks); ``None`` models an engine that runs prefills as separate steps. ``kv_pool_gib``
    defaults to what is left of the GPU after weights and overheads.
    """
    _check_workload(workload)
    if not batch_size >= 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size!r}")
    m, c = model_config, calibration
    inp, out = float(workload.input_tokens), float(workload.output_tokens)
    per_request = inp + out
    kv_gib, memory = replica_memory_gib(
        model_config=m, workload=workload, batch_size=batch_size,
        max_num_batched_tokens=max_num_batched_tokens, calibration=c,
    )
    if kv_pool_gib is None:
        fixed = memory - kv_gib
        kv_pool_gib = max(gpu.memory_gib * c.gpu_memory_utilization - fixed, 0.0)
    pool_requests = kv_pool_gib * GIB / m.kv_bytes_per_token / per_request
    decoding = min(float(batch_size), max(pool_requests, 1.0))
    preempts = batch_size > pool_requests
    if max_num_batched_tokens:
        # Steady state admits b·I/O prefill tokens per step; decode + prefill share the budget.
        decoding = min(decoding, max_num_batched_tokens * out / per_request)
    context = inp + out / 2
    per_step = c.step_overhead_s + c.per_sequence_overhead_s * decoding

    if max_num_batched_tokens:
        dense, kv, gemm = _gpu_times(
            m=m, gpu=gpu, c=c, decoding=decoding, tokens=decoding * per_request / out, context=context
        )
        itl = per_step + dense + kv
        prefill_steps = math.ceil(inp / max(max_num_batched_tokens - decoding, 1.0))
        ttft = prefill_steps * itl
    else:
        dense, kv, gemm = _gpu_times(m=m, gpu=gpu, c=c, decoding=decoding, tokens=decoding, context=context)
        # Each decode step in which a request finished is followed by a prefill step for its
        # replacement(s): P(at least one of b finishes) with exponential-ish lengths.
        finishing = decoding / out
        share = -math.expm1(-finishing)
        prefill_tokens = finishing / share * inp
        pre_dense, _, _ = _gpu_times(m=m, gpu=gpu, c=c, decoding=0, tokens=prefill_tokens, context=0)
        prefill_step = c.step_overhead_s + pre_dense
        itl = per_step + dense + kv + share * prefill_step
        ttft = prefill_step + itl / 2

    output_tok_s = decoding / itl
    parts = {
        "step-overhead": c.step_overhead_s,
        "per-sequence": c.per_sequence_overhead_s * decoding,
        "compute" if gemm >= dense else "weights": dense,
        "kv-cache": kv,
    }
    bound = max(parts, key=parts.__getitem__)
    return BatchEstimate(
        batch_size=int(batch_size),
        effective_batch=decoding,
        total_token_throughput_tok_s=output_tok_s * per_request / out,
        output_throughput_tok_s=output_tok_s,
        inter_token_latency_ms=itl * 1e3,
        ttft_ms=ttft * 1e3,
        kv_cache_gib=kv_gib,
        memory_gib=memory,
        bound=bound,
        preempts=preempts,
    )


def estimate_curve(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    batch_sizes: Sequence[int] | None = None,
    max_num_batched_tokens: int | None = 2048,
    calibration: Calibration = CALIBRATION,
) -> list[BatchEstimate]:
    """:func:`estimate_batch` for each batch size (default :data:`DEFAULT_BATCH_SIZES`)."""
    sizes = sorted(set(batch_sizes or DEFAULT_BATCH_SIZES))
    return [
        estimate_batch(
            model_config=model_config, gpu=gpu, workload=workload, batch_size=b,
            max_num_batched_tokens=max_num_batched_tokens, calibration=calibration,
        )
        for b in sizes
    ]


def estimate_replicas(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    batch_size: int,
    replicas: int,
    max_num_batched_tokens: int | None = 2048,
    calibration: Calibration = CALIBRATION,
) -> ReplicaEstimate:
    """k replicas of ``batch_size`` each on one GPU, under the contention model. Side-effect free."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    c = calibration
    share_gib = gpu.memory_gib * c.gpu_memory_utilization / replicas
    _, need = replica_memory_gib(
        model_config=model_config, workload=workload, batch_size=batch_size,
        max_num_batched_tokens=max_num_batched_tokens, calibration=c,
    )
    solo = estimate_batch(
        model_config=model_config, gpu=gpu, workload=workload, batch_size=batch_size,
        max_num_batched_tokens=max_num_batched_tokens, calibration=c,
    )
    per_request = workload.tokens_per_request
    dense, kv, _ = _gpu_times(
        m=model_config, gpu=gpu, c=c, decoding=solo.effective_batch,
        tokens=solo.effective_batch * (per_request / workload.output_tokens if max_num_batched_tokens else 1),
        context=workload.input_tokens + workload.output_tokens / 2,
    )
    itl_s = max(solo.inter_token_latency_ms / 1e3 * (1 + c.replica_contention * (replicas - 1)), replicas * (dense + kv))
    aggregate = replicas * solo.effective_batch / itl_s * per_request / workload.output_tokens
    return ReplicaEstimate(
        replicas=replicas,
        batch_size=batch_size,
        aggregate_tok_s=aggregate,
        inter_token_latency_ms=itl_s * 1e3,
        memory_per_replica_gib=need,
        fits_memory=need <= share_gib,
    )


def estimate_profile(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    slo: Slo,
    epsilon: float,
    batch_sizes: Sequence[int] | None = None,
    max_num_batched_tokens: int | None = 2048,
    calibration: Calibration = CALIBRATION,
) -> Profile:
    """An estimated :class:`Profile`: B* by the same rules as measured data, k* from memory.

    Raises :class:`~slm_operator.profiling.selection.SelectionError` when no batch size meets
    the SLO or fits the GPU. Side-effect free.
    """
    curve = estimate_curve(
        model_config=model_config, gpu=gpu, workload=workload, batch_sizes=batch_sizes,
        max_num_batched_tokens=max_num_batched_tokens, calibration=calibration,
    )
    points = [
        SelectionPoint(
            batch_size=e.batch_size,
            throughput_tok_s=e.total_token_throughput_tok_s,
            itl_ms=e.inter_token_latency_ms,
            ttft_ms=e.ttft_ms,
            preemptions=1 if e.preempts else 0,
            memory_gib=e.memory_gib,
        )
        for e in curve
    ]
    batch = select_batch(points=points, slo=slo, epsilon=epsilon)
    batch.raise_if_unselected()
    b_star = batch.b_star
    at_b = next(e for e in curve if e.batch_size == b_star)

    options = []
    replicas = 1
    while True:
        est = estimate_replicas(
            model_config=model_config, gpu=gpu, workload=workload, batch_size=b_star, replicas=replicas,
            max_num_batched_tokens=max_num_batched_tokens, calibration=calibration,
        )
        if not est.fits_memory and replicas > 1:
            break
        options.append(est)
        replicas += 1
        if replicas > 64:  # NB: a tiny model on a big GPU; more processes than this is not a plan.
            break
    packing = select_replicas(
        options=[(o.replicas, o.aggregate_tok_s, o.inter_token_latency_ms, 0) for o in options],
        slo=slo,
        estimated=True,
    )
    k = packing.replicas
    chosen = next(o for o in options if o.replicas == k)
    if len(options) == k:
        limit = "memory"
    elif str(k + 1) in packing.rejected:
        limit = "the ITL SLO"
    else:
        limit = "aggregate throughput"
    explanation = (
        f"Estimated (roofline, not measured) on {gpu.name}: {batch.explanation} "
        f"k*={k} replicas per GPU from a memory estimate ({at_b.memory_gib:.1f} GiB each, "
        f"{gpu.memory_gib:.0f} GiB GPU; limited by {limit}); aggregate {chosen.aggregate_tok_s:,.0f} tok/s "
        f"assumes replicas slow each other by {calibration.replica_contention:.0%} of a step each."
    )
    return Profile(
        source="estimated",
        gpu_product=gpu.name,
        pareto_batch_size=b_star,
        tokens_per_second_per_replica=round(at_b.total_token_throughput_tok_s, 1),
        tokens_per_second_per_gpu=round(chosen.aggregate_tok_s, 1),
        replicas_per_gpu=k,
        memory_per_replica_gib=round(at_b.memory_gib, 3),
        weights_gib=round(model_config.weights_gib, 3),
        kv_cache_gib=round(at_b.kv_cache_gib, 3),
        inter_token_latency_ms=round(chosen.inter_token_latency_ms, 3),
        engine=None,
        explanation=explanation,
    )

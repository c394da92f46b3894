"""Roofline estimate of one model's serving curve on one GPU, without running it.

Every term is bytes moved, FLOPs done or a fixed engine cost, and every constant belongs to one
of three owners (docs/profiling.md lists each with its source):

* **model** (``config.json``, :mod:`.modelconfig`): weights read per step ``W`` (every matrix
  once, the LM head included, embedding gathers not), matmul parameters ``P``, layers ``L``, KV
  bytes per token ``kv`` (2 × L × kv_heads × head_dim × dtype: GQA/MQA shrink it), sliding window.
* **GPU** (:mod:`.gpus`): peak bandwidth ``BW`` and bf16 tensor rate ``F`` of the datasheet; the
  effective bandwidth ``BW_eff = η_mem·BW`` with one efficiency per memory technology.
* **engine** (:class:`Calibration`, one set per engine version, fitted on measured curves by
  :mod:`.calibration`): host time per step ``a0`` and per running sequence ``a1``, GPU time per
  decoder layer ``t_L`` beyond what its bytes cost (kernel launch and tail floors), GEMM
  efficiency ``η_F``, paged-attention efficiency ``η_A``.

One decode step of ``b`` sequences whose mean context is ``c`` tokens::

    host  = a0 + a1·b                                           # scheduling, inputs, sampling: CPU
    gpu   = L·t_L + max(W / BW_eff, (2·P·n + attn) / (η_F·F))   # weights read once, or GEMM-bound
          + b · kv·c / (η_A·BW_eff)                             # paged attention reads the KV cache
    ITL   = host + gpu (+ the prefill steps that interrupt decoding, when prefill is not chunked)

``n`` is the tokens of the step: ``b`` decode tokens plus, with chunked prefill, the prompt
tokens admitted alongside (``b·I/O`` in steady state, capped by ``max_num_batched_tokens``, which
also caps ``b`` at ``budget·O/(I+O)``). ``c = I + O·(1+cv²)/2``: fixed output lengths (``cv = 0``,
our load generator) give ``I + O/2``; EOS-terminated, geometric-like lengths (``cv = 1``, chat
traces) give ``I + O``, because a request in flight is more likely a long one.

**KV pool and preemption**: the pool is what vLLM leaves at start-up, ``util·memory − weights −
profiling peak`` (activations of one ``max_num_batched_tokens`` step and the sampler's fp32
vocabulary rows for ``max_num_seqs`` sequences). A request may grow to ``I + O`` tokens, so the
pool holds ``pool / ((I+O)·kv)`` requests; past that batch the engine preempts and the curve stops.

**k replicas on one GPU** (MPS, each at ``util/k``): host work of one replica overlaps the GPU
work of the others; the GPU parts share the GPU (processor sharing, each replica reads its own
weights every step). A replica's GPU phase stretches by the other replicas' expected presence on
the GPU, ``g_k = g·(1 + (k−1)·g_k/(h + g_k))``, whose positive root is
``g_k = ((k·g − h) + √((k·g − h)² + 4·g·h)) / 2``; ``ITL_k = h + g_k``. Small models with a large
host share gain most; a GPU-bound replica gains nothing.

The HBM roofline of a step is ``(W + b·kv·c) / BW`` at the *peak* bandwidth: the fastest any
engine could decode that batch. :attr:`BatchEstimate.roofline_fraction` is that over the ITL.
Everything here is side-effect free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from slm_operator.constants import GIB

from .gpus import GpuSpec
from .modelconfig import ModelConfig
from .selection import SelectionPoint, select_batch, select_replicas
from .types import Profile, Slo, Workload

__all__ = [
    "Calibration",
    "CALIBRATION",
    "BatchEstimate",
    "ReplicaEstimate",
    "StepTime",
    "DEFAULT_BATCH_SIZES",
    "estimate_batch",
    "estimate_curve",
    "estimate_replicas",
    "estimate_profile",
    "kv_pool_gib",
    "parameter_sources",
    "replica_memory_gib",
    "roofline_fraction",
    "step_time",
]

#: Batch sizes the estimate evaluates when none are given: geometric with ×1.5 steps past 32.
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Engine constants of the step model (see the module docstring): one set per engine version."""

    #: a0: host time per engine step (s): scheduling, input preparation, graph launch, sampling sync.
    step_overhead_s: float
    #: a1: host time per running sequence per step (s): per-sequence scheduling, metadata, sampling,
    #: detokenisation.
    per_sequence_overhead_s: float
    #: t_L: GPU time per decoder layer per step beyond its bytes and FLOPs (s): the launch and tail
    #: floors of the layer's ~10 small kernels. It occupies the GPU (replicas do not overlap it).
    per_layer_overhead_s: float
    #: η_F: achieved share of the peak tensor rate in the GEMMs (a prior; the reference decodes
    #: are rarely compute-bound, so they barely constrain it).
    compute_efficiency: float = 0.7
    #: η_A: paged-attention KV reads relative to the GPU's effective bandwidth.
    attention_efficiency: float = 1.0
    #: Memory vLLM's start-up profiling holds per ``max_num_seqs`` sequence, in fp32 vocabulary rows
    #: (logits, probabilities, log-probabilities, sorting): 9 on the reference (1.28 GiB between
    #: max_num_seqs 1 and 768 for OPT-1.3B's 50,272-token vocabulary).
    sampler_vocab_rows: float = 9.0
    #: Activations of the profiling step, in units of ``(4·hidden + 2·ffn)·dtype`` bytes per
    #: batched token: 2.4 on the reference (0.23 GiB for 2,048 OPT-1.3B tokens).
    activation_factor: float = 2.4
    #: Device memory of the CUDA context and allocator outside vLLM's pool accounting (GiB): the
    #: reference's "initial memory usage" (3.11 GiB) minus its weights (2.45 GiB).
    runtime_overhead_gib: float = 0.7
    #: Share of device memory the engine may use (vLLM's --gpu-memory-utilization default).
    gpu_memory_utilization: float = 0.9
    #: The engine these constants describe.
    engine: str = "vllm-0.6.3-v0"


#: vLLM 0.6.3 (V0 engine, CUDA graphs, async output processing) on the reference host: fitted on
#: the OPT-1.3B / H100 64 GB sweeps and replication table (``shared/reference``) by
#: :func:`~slm_operator.profiling.calibration.fit_calibration`, with the GPU's effective
#: bandwidth fixed by the GPU table. docs/profiling.md has the fit and its leave-one-out errors.
#: A newer engine (V1: async scheduling, less Python per sequence) has smaller a0 and a1, so these
#: are pessimistic for it.
CALIBRATION = Calibration(
    step_overhead_s=3.22e-4,
    per_sequence_overhead_s=5.47e-5,
    per_layer_overhead_s=6.63e-5,
)


@dataclasses.dataclass(frozen=True)
class StepTime:
    """One engine step's time split by who pays it (seconds). Prefill terms are the mean per
    decode step of the prefill steps that interrupt decoding (non-chunked engines only)."""

    host_s: float
    layers_s: float
    dense_s: float
    kv_s: float
    prefill_gpu_s: float
    compute_bound: bool
    #: (W + b·kv·c) / peak bandwidth: the HBM roofline of the decode step.
    roofline_s: float

    @property
    def gpu_s(self) -> float:
        return self.layers_s + self.dense_s + self.kv_s + self.prefill_gpu_s

    @property
    def itl_s(self) -> float:
        return self.host_s + self.gpu_s

    def shared_itl_s(self, replicas: int) -> float:
        """ITL when ``replicas`` identical replicas share the GPU (processor sharing of the GPU
        phase, host phases overlapped): the positive root of ``g_k = g·(1 + (k−1)·g_k/(h+g_k))``."""
        h, g, k = self.host_s, self.gpu_s, replicas
        g_k = ((k * g - h) + math.sqrt((k * g - h) ** 2 + 4 * g * h)) / 2
        return h + g_k


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
    #: The largest part of a step: "step-overhead" (a0 + L·t_L), "per-sequence" (a1·b), "weights"
    #: (reading them), "compute" (GEMMs), "kv-cache" (reading it).
    bound: str
    #: The KV cache of ``batch_size`` requests does not fit the GPU: the engine would preempt.
    preempts: bool = False
    #: Requests of the workload shape the KV pool holds at full length (past it: preemption).
    kv_pool_requests: float = math.inf
    #: Share of the HBM roofline (peak bandwidth) this point reaches: roofline step time / ITL.
    roofline_fraction: float = math.nan

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
            "kvPoolRequests": round(self.kv_pool_requests, 1) if math.isfinite(self.kv_pool_requests) else None,
            "rooflineFraction": round(self.roofline_fraction, 4),
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
    #: Each replica's KV pool (at ``util/k``) cannot hold ``batch_size`` requests: it would preempt.
    preempts: bool = False


def _check_workload(workload: Workload) -> None:
    if workload.input_tokens < 1 or workload.output_tokens < 1:
        raise ValueError(
            f"workload needs inputTokens >= 1 and outputTokens >= 1, got {workload.input_tokens} "
            f"and {workload.output_tokens}"
        )


def _profile_peak_gib(m: ModelConfig, c: Calibration, *, max_num_seqs: float, tokens: float) -> float:
    """vLLM's start-up profiling peak besides the weights: one step's activations, sampler rows."""
    activations = c.activation_factor * tokens * (4 * m.hidden_size + 2 * m.intermediate_size) * m.dtype_bytes
    sampler = c.sampler_vocab_rows * max_num_seqs * m.vocab_size * 4
    return (activations + sampler) / GIB


def _profile_tokens(workload: Workload, max_num_batched_tokens: int | None) -> int:
    # NB: without chunked prefill vLLM's budget is max(max_model_len, 2048) and profiling uses it.
    return max_num_batched_tokens or max(workload.effective_max_model_len(), 2048)


def replica_memory_gib(
    *,
    model_config: ModelConfig,
    workload: Workload,
    batch_size: float,
    max_num_batched_tokens: int | None = 2048,
    calibration: Calibration = CALIBRATION,
) -> tuple[float, float]:
    """(KV GiB, total GiB) one replica needs for ``batch_size`` requests at their full length:
    weights + KV + runtime (CUDA context) + the profiling peak (activations, sampler)."""
    m, c = model_config, calibration
    kv = batch_size * workload.tokens_per_request * m.kv_bytes_per_token / GIB
    peak = _profile_peak_gib(
        m, c, max_num_seqs=batch_size, tokens=_profile_tokens(workload, max_num_batched_tokens)
    )
    return kv, m.weights_gib + kv + c.runtime_overhead_gib + peak


def kv_pool_gib(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    max_num_seqs: float,
    max_num_batched_tokens: int | None = 2048,
    gpu_memory_utilization: float | None = None,
    calibration: Calibration = CALIBRATION,
) -> float:
    """The KV pool vLLM allocates at start-up: ``util·memory − weights − profiling peak`` (GiB, ≥ 0).
    On the reference it gives 54.4 GiB for OPT-1.3B at max_num_seqs 1 (measured 54.41) and 53.1 at
    768 (53.13)."""
    return _pool_gib(
        model_config, gpu, workload, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
        gpu_memory_utilization=gpu_memory_utilization, calibration=calibration,
    )


def _pool_gib(
    m: ModelConfig, gpu: GpuSpec, workload: Workload, *, max_num_seqs: float, max_num_batched_tokens: int | None,
    gpu_memory_utilization: float | None, calibration: Calibration,
) -> float:
    c = calibration
    util = c.gpu_memory_utilization if gpu_memory_utilization is None else gpu_memory_utilization
    peak = _profile_peak_gib(
        m, c, max_num_seqs=max_num_seqs, tokens=_profile_tokens(workload, max_num_batched_tokens)
    )
    return max(gpu.memory_gib * util - m.weights_gib - peak, 0.0)


def _context(workload: Workload, length_cv: float) -> float:
    return workload.input_tokens + workload.output_tokens * (1 + length_cv**2) / 2


def step_time(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    decoding: float,
    max_num_batched_tokens: int | None = 2048,
    length_cv: float = 0.0,
    calibration: Calibration = CALIBRATION,
) -> StepTime:
    """The step model of the module docstring for ``decoding`` running sequences. Side-effect free."""
    m, c = model_config, calibration
    inp, out = float(workload.input_tokens), float(workload.output_tokens)
    bandwidth = gpu.effective_bandwidth_bytes_s
    flops = c.compute_efficiency * gpu.flops
    context = _context(workload, length_cv)
    kv_bytes = decoding * m.kv_read_bytes(context)
    weights = m.weights_read_bytes / bandwidth
    layers = m.num_layers * c.per_layer_overhead_s
    host = c.step_overhead_s + c.per_sequence_overhead_s * decoding
    prefill_gpu = 0.0
    if max_num_batched_tokens:
        # Steady state admits b·I/O prompt tokens per step alongside the b decode tokens.
        prompt = min(decoding * inp / out, max(max_num_batched_tokens - decoding, 0.0))
        gemm = (2 * m.matmul_params * (decoding + prompt) + m.attention_flops(prompt, inp / 2)) / flops
    else:
        gemm = 2 * m.matmul_params * decoding / flops
        # Each decode step in which a request finished is followed by a prefill step for its
        # replacement(s): P(at least one of b finishes) with geometric-like lengths.
        finishing = decoding / out
        share = -math.expm1(-finishing)
        prompt = finishing / share * inp
        pre_gemm = (2 * m.matmul_params * prompt + m.attention_flops(prompt, inp / 2)) / flops
        host += share * c.step_overhead_s
        prefill_gpu = share * (layers + max(weights, pre_gemm))
    return StepTime(
        host_s=host,
        layers_s=layers,
        dense_s=max(weights, gemm),
        kv_s=kv_bytes / (c.attention_efficiency * bandwidth),
        prefill_gpu_s=prefill_gpu,
        compute_bound=gemm > weights,
        roofline_s=(m.weights_read_bytes + kv_bytes) / gpu.bandwidth_bytes_s,
    )


def _effective_batch(
    *, batch_size: float, workload: Workload, pool_gib: float, kv_bytes_per_token: int,
    max_num_batched_tokens: int | None,
) -> tuple[float, float]:
    """(requests decoding together, requests the pool holds at full length)."""
    pool_requests = pool_gib * GIB / kv_bytes_per_token / workload.tokens_per_request
    decoding = min(float(batch_size), max(pool_requests, 1.0))
    if max_num_batched_tokens:
        # Decode and prefill share the budget: steady state admits b·I/O prompt tokens per step.
        decoding = min(decoding, max_num_batched_tokens * workload.output_tokens / workload.tokens_per_request)
    return max(decoding, 1.0), pool_requests


@dataclasses.dataclass(frozen=True)
class _ReplicaStep:
    """One replica at ``batch_size``: its memory, its KV pool, what decodes together, one step."""

    batch_size: float
    kv_cache_gib: float
    memory_gib: float
    decoding: float
    pool_requests: float
    step: StepTime

    @property
    def preempts(self) -> bool:
        # NB: a hair of tolerance so a pool sized for exactly b requests is not a preemption.
        return self.batch_size > self.pool_requests * (1 + 1e-9)


def _replica_step(
    *, model_config: ModelConfig, gpu: GpuSpec, workload: Workload, batch_size: float,
    max_num_batched_tokens: int | None, gpu_memory_utilization: float | None, pool_gib: float | None,
    length_cv: float, calibration: Calibration,
) -> _ReplicaStep:
    """Memory → KV pool (given, or what vLLM leaves at ``gpu_memory_utilization``) → the batch that
    decodes together → one step: what one replica and k replicas are both estimated from."""
    kv_gib, memory = replica_memory_gib(model_config=model_config, workload=workload, batch_size=batch_size,
                                        max_num_batched_tokens=max_num_batched_tokens, calibration=calibration)
    if pool_gib is None:
        pool_gib = _pool_gib(model_config, gpu, workload, max_num_seqs=batch_size,
                             max_num_batched_tokens=max_num_batched_tokens,
                             gpu_memory_utilization=gpu_memory_utilization, calibration=calibration)
    decoding, pool_requests = _effective_batch(
        batch_size=batch_size, workload=workload, pool_gib=pool_gib, kv_bytes_per_token=model_config.kv_bytes_per_token,
        max_num_batched_tokens=max_num_batched_tokens,
    )
    step = step_time(model_config=model_config, gpu=gpu, workload=workload, decoding=decoding,
                     max_num_batched_tokens=max_num_batched_tokens, length_cv=length_cv, calibration=calibration)
    return _ReplicaStep(batch_size=batch_size, kv_cache_gib=kv_gib, memory_gib=memory, decoding=decoding,
                        pool_requests=pool_requests, step=step)


def _bound(step: StepTime, c: Calibration, decoding: float) -> str:
    per_seq = c.per_sequence_overhead_s * decoding
    parts = {
        "step-overhead": step.host_s - per_seq + step.layers_s,
        "per-sequence": per_seq,
        "compute" if step.compute_bound else "weights": step.dense_s + step.prefill_gpu_s,
        "kv-cache": step.kv_s,
    }
    return max(parts, key=parts.__getitem__)


def estimate_batch(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    batch_size: float,
    max_num_batched_tokens: int | None = 2048,
    kv_pool_gib: float | None = None,
    calibration: Calibration = CALIBRATION,
    length_cv: float = 0.0,
) -> BatchEstimate:
    """Predict one replica at ``batch_size`` concurrent requests. Side-effect free.

    ``max_num_batched_tokens`` is the chunked-prefill budget per step (vLLM's V1 engine always
    chunks); ``None`` models an engine that runs prefills as separate steps. ``kv_pool_gib``
    defaults to what vLLM leaves at start-up (:func:`kv_pool_gib`). ``length_cv`` is the
    coefficient of variation of the output length (0: fixed lengths; 1: EOS-terminated chat).
    """
    _check_workload(workload)
    if not batch_size >= 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size!r}")
    m, c = model_config, calibration
    inp, out = float(workload.input_tokens), float(workload.output_tokens)
    per_request = inp + out
    replica = _replica_step(model_config=m, gpu=gpu, workload=workload, batch_size=batch_size,
                            max_num_batched_tokens=max_num_batched_tokens, gpu_memory_utilization=None,
                            pool_gib=kv_pool_gib, length_cv=length_cv, calibration=c)
    step, decoding = replica.step, replica.decoding
    itl = step.itl_s
    if max_num_batched_tokens:
        prefill_steps = math.ceil(inp / max(max_num_batched_tokens - decoding, 1.0))
        ttft = prefill_steps * itl
    else:
        prompt_gpu = m.num_layers * c.per_layer_overhead_s + max(
            m.weights_read_bytes / gpu.effective_bandwidth_bytes_s,
            (2 * m.matmul_params * inp + m.attention_flops(inp, inp / 2)) / (c.compute_efficiency * gpu.flops),
        )
        ttft = c.step_overhead_s + prompt_gpu + itl / 2
    output_tok_s = decoding / itl
    return BatchEstimate(
        batch_size=int(batch_size),
        effective_batch=decoding,
        total_token_throughput_tok_s=output_tok_s * per_request / out,
        output_throughput_tok_s=output_tok_s,
        inter_token_latency_ms=itl * 1e3,
        ttft_ms=ttft * 1e3,
        kv_cache_gib=replica.kv_cache_gib,
        memory_gib=replica.memory_gib,
        bound=_bound(step, c, decoding),
        preempts=replica.preempts,
        kv_pool_requests=replica.pool_requests,
        roofline_fraction=step.roofline_s / itl,
    )


def estimate_curve(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    batch_sizes: Sequence[int] | None = None,
    max_num_batched_tokens: int | None = 2048,
    calibration: Calibration = CALIBRATION,
    length_cv: float = 0.0,
) -> list[BatchEstimate]:
    """:func:`estimate_batch` for each batch size (default :data:`DEFAULT_BATCH_SIZES`)."""
    sizes = sorted(set(batch_sizes or DEFAULT_BATCH_SIZES))
    return [
        estimate_batch(
            model_config=model_config, gpu=gpu, workload=workload, batch_size=b,
            max_num_batched_tokens=max_num_batched_tokens, calibration=calibration, length_cv=length_cv,
        )
        for b in sizes
    ]


def estimate_replicas(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    batch_size: float,
    replicas: int,
    max_num_batched_tokens: int | None = 2048,
    calibration: Calibration = CALIBRATION,
    length_cv: float = 0.0,
    kv_pool_gib_per_replica: float | None = None,
) -> ReplicaEstimate:
    """k replicas of ``batch_size`` each on one GPU (MPS, each at ``util/k`` of its memory), under
    the processor-sharing model of the module docstring. Side-effect free."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    _check_workload(workload)
    util = calibration.gpu_memory_utilization / replicas
    replica = _replica_step(model_config=model_config, gpu=gpu, workload=workload, batch_size=batch_size,
                            max_num_batched_tokens=max_num_batched_tokens, gpu_memory_utilization=util,
                            pool_gib=kv_pool_gib_per_replica, length_cv=length_cv, calibration=calibration)
    need = replica.memory_gib
    itl_s = replica.step.shared_itl_s(replicas)
    aggregate = replicas * replica.decoding / itl_s * workload.tokens_per_request / workload.output_tokens
    return ReplicaEstimate(
        replicas=replicas,
        batch_size=int(batch_size),
        aggregate_tok_s=aggregate,
        inter_token_latency_ms=itl_s * 1e3,
        memory_per_replica_gib=need,
        fits_memory=need <= gpu.memory_gib * util,
        preempts=replica.preempts,
    )


def roofline_fraction(
    *,
    model_config: ModelConfig,
    gpu: GpuSpec,
    workload: Workload,
    batch_size: float,
    inter_token_latency_ms: float,
    length_cv: float = 0.0,
) -> float:
    """Share of the GPU's HBM roofline a decode at ``batch_size`` with this ITL reaches: the time
    the step's bytes (weights once, the batch's KV) take at the peak bandwidth ÷ the ITL. Works for
    a measured ITL as well as an estimated one. Side-effect free."""
    if not inter_token_latency_ms > 0:
        raise ValueError(f"inter-token latency must be > 0 ms, got {inter_token_latency_ms!r}")
    m = model_config
    moved = m.weights_read_bytes + batch_size * m.kv_read_bytes(_context(workload, length_cv))
    return moved / gpu.bandwidth_bytes_s / (inter_token_latency_ms / 1e3)


def parameter_sources(
    *, model_config: ModelConfig, gpu: GpuSpec, calibration: Calibration = CALIBRATION
) -> list[str]:
    """One line per owner (model, GPU, engine): each number the estimate uses and where it comes from."""
    m, c = model_config, calibration
    attention = (
        "MHA" if m.num_kv_heads == m.num_attention_heads
        else "MQA" if m.num_kv_heads == 1
        else f"GQA {m.num_attention_heads // m.num_kv_heads}:1"
    )
    window = f", sliding window {m.sliding_window}" if m.sliding_window else ""
    tied = "tied LM head read once" if m.tie_word_embeddings else "untied: embedding gathered, LM head read"
    gpu_source = "datasheet" if not gpu.note else f"note: {gpu.note}"
    return [
        f"model (config.json): {m.model_type}, {m.num_params / 1e9:.2f}B parameters, {m.num_layers} layers, "
        f"{m.num_attention_heads} heads / {m.num_kv_heads} KV heads ({attention}{window}) x {m.head_dim} head dim, "
        f"{m.dtype}; reads {m.weights_read_bytes / 1e9:.2f} GB of weights per step ({tied}), "
        f"{m.kv_bytes_per_token:,} KV bytes per token",
        f"GPU (table, {gpu.name}): {gpu.hbm_bandwidth_gbs:,.0f} GB/s peak {gpu.memory_type} x "
        f"{gpu.memory_efficiency:.2f} ({gpu.memory_type} efficiency, one per memory technology) = "
        f"{gpu.effective_bandwidth_bytes_s / 1e9:,.0f} GB/s effective; {gpu.bf16_tflops:,.0f} TFLOP/s dense bf16; "
        f"{gpu.memory_gib:.1f} GiB",
        f"GPU numbers: {gpu_source}",
        f"engine ({c.engine}, fitted on the reference sweeps and replication table): "
        f"host {c.step_overhead_s * 1e3:.3f} ms/step + {c.per_sequence_overhead_s * 1e6:.1f} us/sequence, "
        f"GPU {c.per_layer_overhead_s * 1e6:.1f} us/layer; priors: GEMM efficiency {c.compute_efficiency:.2f}, "
        f"paged-attention efficiency {c.attention_efficiency:.2f}, "
        f"gpu_memory_utilization {c.gpu_memory_utilization:.2f}",
    ]


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
    length_cv: float = 0.0,
) -> Profile:
    """An estimated :class:`Profile`: the batch size (B*) by the same rules as measured data, the
    replicas that saturate the GPU (k*) from the same step model and memory.

    Raises :class:`~slm_operator.profiling.selection.SelectionError` when no batch size meets
    the SLO or fits the GPU. Side-effect free.
    """
    curve = estimate_curve(
        model_config=model_config, gpu=gpu, workload=workload, batch_sizes=batch_sizes,
        max_num_batched_tokens=max_num_batched_tokens, calibration=calibration, length_cv=length_cv,
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
    batch_size = batch.selected_batch_size()
    at_b = next(e for e in curve if e.batch_size == batch_size)

    options = []
    replicas = 1
    while True:
        est = estimate_replicas(
            model_config=model_config, gpu=gpu, workload=workload, batch_size=batch_size, replicas=replicas,
            max_num_batched_tokens=max_num_batched_tokens, calibration=calibration, length_cv=length_cv,
        )
        if (not est.fits_memory or est.preempts) and replicas > 1:
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
    saturating = packing.replicas
    chosen = next(o for o in options if o.replicas == saturating)
    if len(options) == saturating:
        limit = "memory (each replica's KV pool at 0.9/k of the GPU)"
    elif str(saturating + 1) in packing.rejected:
        limit = "the ITL SLO"
    else:
        limit = "aggregate throughput: the GPU phases of the replicas no longer overlap"
    bandwidth = gpu.effective_bandwidth_bytes_s / 1e12
    explanation = (
        f"Estimated (roofline, not measured) on {gpu.name}: {batch.explanation} At B*={batch_size} one replica "
        f"reaches {at_b.roofline_fraction:.0%} of the HBM roofline ({gpu.hbm_bandwidth_gbs / 1e3:.2f} TB/s peak, "
        f"{bandwidth:.2f} TB/s effective); the KV pool holds {at_b.kv_pool_requests:,.0f} requests of "
        f"{workload.tokens_per_request} tokens. k*={saturating} replicas per GPU from the step model and a memory "
        f"estimate ({at_b.memory_gib:.1f} GiB each, {gpu.memory_gib:.0f} GiB GPU; limited by {limit}); aggregate "
        f"{chosen.aggregate_tok_s:,.0f} tok/s assumes MPS: host work overlaps, GPU work is shared. Engine "
        f"constants: {calibration.engine}."
    )
    return Profile(
        source="estimated",
        gpu_product=gpu.name,
        batch_size=batch_size,
        tokens_per_second_per_replica=round(at_b.total_token_throughput_tok_s, 1),
        tokens_per_second_per_gpu=round(chosen.aggregate_tok_s, 1),
        replicas_to_saturate=saturating,
        memory_per_replica_gib=round(at_b.memory_gib, 3),
        weights_gib=round(model_config.weights_gib, 3),
        kv_cache_gib=round(at_b.kv_cache_gib, 3),
        inter_token_latency_ms=round(chosen.inter_token_latency_ms, 3),
        engine=None,
        explanation=explanation,
        roofline_fraction=round(at_b.roofline_fraction, 4),
    )

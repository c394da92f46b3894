"""The measured sweep: batch sizes on one server, then replica counts, then the Profile.

Batch phase — ONE server with a generous ``--max-num-seqs``; the client's concurrency is the batch
size. Concurrency doubles (1, 2, 4, ...) until one of: the throughput gain of a doubling is
below ε (plateau), the SLO is breached, the engine preempts, or the engine cannot run the batch
(mean running requests well below the concurrency: KV pool or max-num-seqs). Then up to
``refine_steps`` midpoints between the selected batch size (B*) and the step below it refine the
knee. This needs one server start instead of one per ``max-num-seqs`` value
(bench/profiling_cost.py counts both).

Replication phase — for k = 2, 3, ... while memory allows: k servers started one after another
(several vLLM servers starting at once misread free memory), each with
``--kv-cache-memory-bytes`` sized for the batch size (else ``--gpu-memory-utilization`` 0.9/k),
each driven at that batch size; stop when the aggregate gains < ε, the SLO breaks, or anything
preempts. An MPS daemon, if wanted, is the node's business (device plugin); the Job only inherits
it.

Progress (point i of n, elapsed) goes to the log and, atomically, to a JSON file the operator reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import aiohttp

from slm_operator.constants import GIB, LABEL_GPU_MEMORY_MIB
from slm_operator.errors import ModelConfigError, UnknownGpuError, UnknownModelError

from .engines.base import EngineError, EngineServer
from .estimator import CALIBRATION, replica_memory_gib, roofline_fraction
from .gpus import lookup_gpu
from .loadgen import LoadError, LoadResult, run_load
from .metrics import MetricsSampler, MetricsSummary
from .modelconfig import ModelConfig, resolve_model_config
from .nvml import NvmlSampler
from .results import SweepPoint, SweepResult
from .selection import select_batch, select_replicas
from .types import Profile, ProfileRequest, Slo

__all__ = [
    "SweepSettings", "ProgressReporter", "run_sweep", "profile_from_sweep", "EngineFactory", "request_model_config",
]

log = logging.getLogger(__name__)

#: (max_num_seqs, replica index, replica count, kv_cache_memory_bytes or None) -> started server
EngineFactory = Callable[[int, int, int, "int | None"], EngineServer]


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    warmup_s: float = 5.0
    duration_s: float = 20.0
    max_batch: int = 512
    refine_steps: int = 2
    replication: bool = True
    max_replicas: int = 8
    #: A doubling that runs fewer than this share of its requests concurrently is "engine-capped"
    #: (KV pool or max-num-seqs); closed-loop clients alone keep real engines near 85%.
    min_running_share: float = 0.6
    #: Unmeasured load right after a server starts: first requests trigger compilation and
    #: allocation, which would stall the first measured window.
    engine_warmup_s: float = 5.0
    engine_warmup_concurrency: int = 4
    metrics_interval_s: float = 0.5
    #: Extra KV headroom per replica over what its batch size needs at full length.
    kv_headroom: float = 1.2


class ProgressReporter:
    """Logs each point and rewrites ``path`` (if given) with the latest state, atomically."""

    def __init__(self, path: str | pathlib.Path | None, *, planned: int) -> None:
        self.path = pathlib.Path(path) if path else None
        self.planned = planned
        self.done = 0
        self.started = time.monotonic()
        self.state: dict[str, object] = {}

    def update(self, *, phase: str, message: str, point_done: bool = False, **extra: object) -> None:
        if point_done:
            self.done += 1
            self.planned = max(self.planned, self.done)
        elapsed = time.monotonic() - self.started
        self.state = {
            "phase": phase, "point": self.done, "of": self.planned, "elapsedSeconds": round(elapsed, 1),
            "message": message, "updatedAt": _now(), **extra,
        }
        log.info("[%s %d/%d, %.0f s] %s", phase, self.done, self.planned, elapsed, message)
        if self.path:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.state))
            os.replace(tmp, self.path)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _breaches(point: SweepPoint, slo: Slo) -> str | None:
    if slo.max_inter_token_latency_ms is not None and point.mean_itl_ms is not None:
        if point.mean_itl_ms > slo.max_inter_token_latency_ms:
            return f"ITL {point.mean_itl_ms:.1f} ms breaches the SLO ({slo.max_inter_token_latency_ms:g} ms)"
    if slo.max_time_to_first_token_ms is not None and point.mean_ttft_ms is not None:
        if point.mean_ttft_ms > slo.max_time_to_first_token_ms:
            return f"TTFT {point.mean_ttft_ms:.0f} ms breaches the SLO ({slo.max_time_to_first_token_ms:g} ms)"
    return None


async def _warm_up(*, servers: Sequence[EngineServer], request: ProfileRequest, settings: SweepSettings) -> None:
    await asyncio.gather(*[
        run_load(url=s.url, model=s.model_name, concurrency=settings.engine_warmup_concurrency,
                 input_tokens=request.workload.input_tokens, output_tokens=request.workload.output_tokens,
                 warmup_s=0.0, duration_s=settings.engine_warmup_s, seed=99)
        for s in servers
    ])


async def _measure_async(
    *, servers: Sequence[EngineServer], concurrency: int, request: ProfileRequest, settings: SweepSettings,
    nvml: NvmlSampler, seed: int,
) -> tuple[list[LoadResult], list[MetricsSummary]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        samplers = [MetricsSampler(session=session, url=s.url, interval_s=settings.metrics_interval_s) for s in servers]
        for sampler in samplers:
            await sampler.scrape()  # NB: the counters' starting values
        nvml.reset()

        async def nvml_loop() -> None:
            while True:
                nvml.sample()
                await asyncio.sleep(settings.metrics_interval_s)

        for sampler in samplers:
            sampler.start()
        sampling = asyncio.create_task(nvml_loop())
        try:
            loads = await asyncio.gather(*[
                run_load(
                    url=s.url, model=s.model_name, concurrency=concurrency,
                    input_tokens=request.workload.input_tokens, output_tokens=request.workload.output_tokens,
                    warmup_s=settings.warmup_s, duration_s=settings.duration_s, seed=seed + i,
                )
                for i, s in enumerate(servers)
            ])
        finally:
            sampling.cancel()
            for sampler in samplers:
                await sampler.stop()
        return list(loads), [s.summary() for s in samplers]


def _memory_gib(
    *, model_config: ModelConfig | None, request: ProfileRequest, batch: int, peak_kv: float | None, pool: int | None,
) -> float | None:
    if model_config is None:
        return None
    kv_gib, total = replica_memory_gib(model_config=model_config, workload=request.workload, batch_size=batch)
    if peak_kv is not None and pool:
        # NB: measured KV in use replaces the full-length estimate (it is what the batch needed).
        measured_kv = peak_kv * pool * model_config.kv_bytes_per_token / GIB
        return total - kv_gib + measured_kv
    return total


def _point(
    *, batch: int, replicas: int, loads: Sequence[LoadResult], summaries: Sequence[MetricsSummary],
    nvml: NvmlSampler, model_config: ModelConfig | None, request: ProfileRequest,
) -> tuple[SweepPoint, dict[str, str]]:
    def mean(values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else None

    gpu = nvml.summary()
    peak_kv = max((s.peak_kv_usage for s in summaries if s.peak_kv_usage is not None), default=None)
    pool = next((s.kv_pool_tokens for s in summaries if s.kv_pool_tokens), None)
    names: dict[str, str] = {}
    for s in summaries:
        names.update(s.names)
    point = SweepPoint(
        batch_size=batch,
        replicas=replicas,
        total_token_throughput_tok_s=sum(l.total_token_throughput_tok_s for l in loads),
        output_throughput_tok_s=sum(l.output_throughput_tok_s for l in loads),
        mean_itl_ms=mean([l.mean_itl_ms for l in loads]),
        median_itl_ms=mean([l.median_itl_ms for l in loads]),
        p99_itl_ms=max((l.p99_itl_ms for l in loads if l.p99_itl_ms is not None), default=None),
        mean_ttft_ms=mean([l.mean_ttft_ms for l in loads]),
        median_ttft_ms=mean([l.median_ttft_ms for l in loads]),
        p99_ttft_ms=max((l.p99_ttft_ms for l in loads if l.p99_ttft_ms is not None), default=None),
        completed=sum(l.completed for l in loads),
        duration_s=loads[0].window_s,
        total_input_tokens=sum(l.input_tokens for l in loads),
        total_output_tokens=sum(l.output_tokens for l in loads),
        mean_running_requests=mean([s.mean_running for s in summaries]),
        max_running_requests=max((s.max_running for s in summaries if s.max_running is not None), default=None),
        peak_kv_cache_usage_perc=round(peak_kv * 100, 3) if peak_kv is not None else None,
        kv_pool_tokens=pool,
        num_preemptions=int(sum(s.preemptions for s in summaries)),
        memory_gib=_memory_gib(model_config=model_config, request=request, batch=batch, peak_kv=peak_kv, pool=pool),
        gpu_mem_used_mib_peak=gpu.memory_used_mib_peak,
        mean_power_w=gpu.mean_power_w,
        mean_gpu_utilization_perc=gpu.mean_utilization_perc,
        engine_itl_ms=mean([s.engine_itl_ms for s in summaries]),
    )
    return point, names


def _batch_plan(max_batch: int) -> list[int]:
    plan, b = [], 1
    while b <= max_batch:
        plan.append(b)
        b *= 2
    return plan


@dataclasses.dataclass
class _BatchPhase:
    """The batch phase on its one server: the points measured so far and why it stopped.

    ``stop_reason`` is set by the rule that ended the phase or by a failed point; ``failed`` says
    it was a failure (nothing more is measured on this server then).
    """

    server: EngineServer
    request: ProfileRequest
    settings: SweepSettings
    progress: ProgressReporter
    nvml: NvmlSampler
    model_config: ModelConfig | None
    points: list[SweepPoint] = dataclasses.field(default_factory=list)
    #: Which engine metric names were read (quantity -> name).
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    stop_reason: str | None = None
    failed: bool = False
    #: Metric scrapes behind the last point: too few say nothing about the engine.
    samples: int = 0

    def measure(self, batch: int) -> SweepPoint | None:
        """Measure one batch size (client concurrency); ``None``, with ``stop_reason``, on failure."""
        self.progress.update(phase="batch", message=f"measuring batch {batch}", batchSize=batch)
        try:
            loads, summaries = asyncio.run(_measure_async(
                servers=[self.server], concurrency=batch, request=self.request, settings=self.settings,
                nvml=self.nvml, seed=batch,
            ))
        except (LoadError, aiohttp.ClientError, OSError) as exc:
            self.stop_reason = f"batch {batch} failed: {exc}"
            self.failed = True
            self.points.append(SweepPoint(batch_size=batch, total_token_throughput_tok_s=0.0, status=f"failed: {exc}"))
            self.progress.update(phase="batch", message=self.stop_reason, point_done=True)
            return None
        point, found = _point(batch=batch, replicas=1, loads=loads, summaries=summaries, nvml=self.nvml,
                              model_config=self.model_config, request=self.request)
        self.samples = min(s.samples for s in summaries)
        self.names.update(found)
        self.points.append(point)
        itl = point.mean_itl_ms if point.mean_itl_ms is not None else float("nan")
        self.progress.update(
            phase="batch", point_done=True, batchSize=batch,
            message=f"batch {batch}: {point.total_token_throughput_tok_s:,.0f} tok/s, ITL {itl:.2f} ms, "
            f"running {point.mean_running_requests}, preemptions {point.num_preemptions}",
        )
        return point

    def measure_each(self, plan: Sequence[int]) -> None:
        """Explicit batch sizes: every one is measured, no stop rule; a failed point ends the phase."""
        for batch in plan:
            if self.measure(batch) is None:
                return

    def double_until_stop(self, plan: Sequence[int]) -> None:
        """Measure the plan (1, 2, 4, ...) until a stop rule of the module docstring holds."""
        previous: SweepPoint | None = None
        for batch in plan:
            point = self.measure(batch)
            if point is None:
                return
            why = self._why_stop(point, previous)
            if why:
                self.stop_reason = why
                self.progress.update(phase="batch", message=f"stop: {why}")
                return
            previous = point
        self.stop_reason = f"reached the largest planned batch ({plan[-1]}) without a plateau"

    def _why_stop(self, point: SweepPoint, previous: SweepPoint | None) -> str | None:
        batch, epsilon = point.batch_size, self.request.epsilon
        why = _breaches(point, self.request.slo)
        if point.num_preemptions:
            why = f"{point.num_preemptions} preemptions at batch {batch}"
        elif (point.mean_running_requests is not None and batch > 1 and self.samples >= 5
              and point.mean_running_requests < self.settings.min_running_share * batch):
            why = f"the engine ran only {point.mean_running_requests:.0f} of {batch} requests at once"
        elif previous is not None and previous.total_token_throughput_tok_s > 0:
            gain = point.total_token_throughput_tok_s / previous.total_token_throughput_tok_s - 1
            if gain < epsilon:
                why = f"plateau: doubling to {batch} gained {gain:+.1%} < ε={epsilon:.0%}"
        return why

    def refine(self, steps: int) -> None:
        """Up to ``steps`` midpoints between the batch size selected so far and the size below it."""
        for _ in range(steps):
            selection = select_batch(
                points=[p.selection_point() for p in self.points], slo=self.request.slo, epsilon=self.request.epsilon,
            )
            if selection.batch_size is None:
                return
            below = [p.batch_size for p in self.points if p.batch_size < selection.batch_size]
            if not below:
                return
            mid = (max(below) + selection.batch_size) // 2
            if mid in {p.batch_size for p in self.points} or mid <= max(below):
                return
            if self.measure(mid) is None:
                return
            self.points.sort(key=lambda p: p.batch_size)


def run_sweep(
    *,
    request: ProfileRequest,
    engine_kind: str,
    start_engine: EngineFactory,
    settings: SweepSettings = SweepSettings(),
    progress: ProgressReporter | None = None,
    model_config: ModelConfig | None = None,
    attached: bool = False,
) -> SweepResult:
    """Measure the batch curve and the replica packing (see the module docstring).

    ``start_engine`` starts one server; ``attached`` means the factory returns a server someone
    else runs (the replication phase is then skipped: we cannot start more of it).
    Partial results are kept: a failing point ends the sweep with ``stop_reason`` set.
    """
    nvml = NvmlSampler()
    notes: list[str] = []
    if nvml.unavailable_reason:
        notes.append(nvml.unavailable_reason)
    if engine_kind == "simulated":
        notes.append("SIMULATED engine: timings come from the estimator, not from a GPU")
    explicit = sorted(set(request.batch_sizes)) if request.batch_sizes else None
    plan = explicit or _batch_plan(settings.max_batch)
    progress = progress or ProgressReporter(None, planned=len(plan))
    progress.planned = len(plan) + (settings.refine_steps if not explicit else 0)
    max_num_seqs = max(plan)

    progress.update(phase="batch", message=f"starting {engine_kind} engine (max-num-seqs {max_num_seqs})")
    server = start_engine(max_num_seqs, 0, 1, None)
    batches = _BatchPhase(server=server, request=request, settings=settings, progress=progress, nvml=nvml,
                          model_config=model_config)
    try:
        progress.update(phase="batch", message=f"warming the engine up for {settings.engine_warmup_s:g} s")
        asyncio.run(_warm_up(servers=[server], request=request, settings=settings))
        if explicit:
            batches.measure_each(explicit)
        else:
            batches.double_until_stop(plan)
            if not batches.failed:
                batches.refine(settings.refine_steps)
    finally:
        server.stop()

    points = sorted(batches.points, key=lambda p: p.batch_size)
    names = batches.names
    replication: list[SweepPoint] = []
    if settings.replication and not attached:
        replication = _replication_phase(
            request=request, points=points, start_engine=start_engine, settings=settings, progress=progress,
            nvml=nvml, model_config=model_config, names=names, notes=notes,
        )
    elif attached:
        notes.append("attached to a running server: replication not measured")
    progress.update(
        phase="done", message=f"sweep finished: {len(points)} batch points, {len(replication)} replication points",
    )
    return SweepResult(
        engine=engine_kind,
        model=request.model,
        gpu_product=request.gpu_product,
        input_tokens=request.workload.input_tokens,
        output_tokens=request.workload.output_tokens,
        points=tuple(points),
        replication=tuple(replication),
        created_at=_now(),
        metric_names=names,
        notes=tuple(notes),
        stop_reason=batches.stop_reason,
    )


def _replication_phase(
    *, request: ProfileRequest, points: list[SweepPoint], start_engine: EngineFactory, settings: SweepSettings,
    progress: ProgressReporter, nvml: NvmlSampler, model_config: ModelConfig | None, names: dict[str, str],
    notes: list[str],
) -> list[SweepPoint]:
    selection = select_batch(points=[p.selection_point() for p in points], slo=request.slo, epsilon=request.epsilon)
    if selection.batch_size is None:
        notes.append(f"replication skipped: {selection.explanation}")
        return []
    batch_size = selection.batch_size
    solo = next(p for p in points if p.batch_size == batch_size)
    # NB: the memory the request names (the nodes' label) is enough: a GPU the table lacks can
    # still be packed.
    memory_gib = _gpu_memory_gib(request)
    if model_config is None or memory_gib is None:
        notes.append("replication skipped: needs the model's config.json and the GPU's memory (a known GPU "
                     f"or the nodes' {LABEL_GPU_MEMORY_MIB} label) to size replicas")
        return []
    kv_gib, need_gib = replica_memory_gib(model_config=model_config, workload=request.workload, batch_size=batch_size)
    usable = memory_gib * CALIBRATION.gpu_memory_utilization
    k_max = min(settings.max_replicas, max(int(usable // need_gib), 1))
    if k_max < 2:
        notes.append(f"replication skipped: one replica at B*={batch_size} needs {need_gib:.1f} of {usable:.1f} GiB")
        return []
    kv_bytes = int(kv_gib * settings.kv_headroom * GIB)
    progress.planned += k_max - 1
    out: list[SweepPoint] = []
    best = solo.total_token_throughput_tok_s
    for k in range(2, k_max + 1):
        progress.update(
            phase="replication", message=f"starting {k} replicas at B*={batch_size}, one after another", replicas=k,
        )
        servers: list[EngineServer] = []
        try:
            for i in range(k):
                servers.append(start_engine(batch_size, i, k, kv_bytes))
            asyncio.run(_warm_up(servers=servers, request=request, settings=settings))
            loads, summaries = asyncio.run(_measure_async(
                servers=servers, concurrency=batch_size, request=request, settings=settings, nvml=nvml, seed=1000 * k,
            ))
        except (EngineError, LoadError, aiohttp.ClientError, OSError) as exc:
            notes.append(f"replication stopped at k={k}: {exc}")
            progress.update(phase="replication", message=f"k={k} failed: {exc}", point_done=True)
            break
        finally:
            for s in servers:
                s.stop()
        point, found = _point(batch=batch_size, replicas=k, loads=loads, summaries=summaries, nvml=nvml,
                              model_config=model_config, request=request)
        names.update(found)
        out.append(point)
        progress.update(
            phase="replication", point_done=True, replicas=k,
            message=f"{k}x{batch_size}: {point.total_token_throughput_tok_s:,.0f} tok/s aggregate, "
            f"ITL {point.mean_itl_ms} ms",
        )
        why = _breaches(point, request.slo)
        if point.num_preemptions:
            why = f"{point.num_preemptions} preemptions with {k} replicas"
        elif point.total_token_throughput_tok_s < (1 + request.epsilon) * best:
            why = f"{k} replicas gained less than ε={request.epsilon:.0%} over the best so far"
        best = max(best, point.total_token_throughput_tok_s)
        if why:
            notes.append(f"replication stopped: {why}")
            break
    return out


def _gpu_memory_gib(request: ProfileRequest) -> float | None:
    """One GPU's memory: the request's (the nodes' label), else the GPU table's, else unknown."""
    if request.gpu_memory_gib:
        return request.gpu_memory_gib
    try:
        return lookup_gpu(request.gpu_product).memory_gib
    except UnknownGpuError:
        return None


def _measured_roofline(
    *, request: ProfileRequest, model_config: ModelConfig | None, batch_size: int, itl_ms: float | None
) -> float | None:
    """The measured replica's share of the GPU's HBM roofline at B*, where the GPU table knows the
    product's bandwidth and the architecture is known; else ``None``."""
    if model_config is None or not itl_ms or itl_ms <= 0:
        return None
    try:
        gpu = lookup_gpu(request.gpu_product)
    except UnknownGpuError:
        return None
    return round(roofline_fraction(model_config=model_config, gpu=gpu, workload=request.workload,
                                   batch_size=batch_size, inter_token_latency_ms=itl_ms), 3)


def request_model_config(request: ProfileRequest) -> ModelConfig | None:
    """The request's architecture when it can be known (inline or built-in), else ``None``."""
    try:
        return resolve_model_config(model=request.model, inline=request.model_config)
    except (UnknownModelError, ModelConfigError):
        return None


def profile_from_sweep(*, sweep: SweepResult, request: ProfileRequest, model_config: ModelConfig | None) -> Profile:
    """Select the batch size (B*) and the replicas that saturate the GPU (k*) from measured data,
    and build the Profile. Side-effect free.

    Raises :class:`~slm_operator.profiling.selection.SelectionError` when nothing qualifies.
    """
    batch = select_batch(points=[p.selection_point() for p in sweep.points], slo=request.slo, epsilon=request.epsilon)
    batch_size = batch.selected_batch_size()
    solo = next(p for p in sweep.points if p.batch_size == batch_size)
    replica_options = [
        solo.replica_point(), *(p.replica_point() for p in sweep.replication if p.batch_size == batch_size),
    ]
    packing = select_replicas(options=replica_options, slo=request.slo)
    aggregate = packing.aggregate_tok_s or solo.total_token_throughput_tok_s
    itl = packing.itl_ms if packing.itl_ms is not None else solo.mean_itl_ms
    weights = model_config.weights_gib if model_config else None
    kv = None
    if model_config and solo.peak_kv_cache_usage_perc is not None and solo.kv_pool_tokens:
        kv = solo.peak_kv_cache_usage_perc / 100 * solo.kv_pool_tokens * model_config.kv_bytes_per_token / GIB
    memory = solo.memory_gib
    memory_note = ""
    if memory is None and solo.gpu_mem_used_mib_peak:
        # NB: without the architecture, the device's peak use (vLLM pre-allocates its KV pool) is
        # an upper bound; the planner then packs conservatively.
        memory = solo.gpu_mem_used_mib_peak / 1024
        memory_note = " Memory per replica is the GPU's peak use (no config.json to size it)."
    elif memory is None:
        memory = float("nan")
        memory_note = " Memory per replica unknown: give the model's config.json (modelConfig)."
    label = "SIMULATED engine (estimator timings), " if sweep.engine == "simulated" else ""
    replicas_note = packing.explanation if sweep.replication else "k*=1: replication not measured."
    return Profile(
        source="measured",
        gpu_product=request.gpu_product,
        batch_size=batch_size,
        tokens_per_second_per_replica=round(solo.total_token_throughput_tok_s, 1),
        tokens_per_second_per_gpu=round(aggregate, 1),
        replicas_to_saturate=packing.replicas,
        memory_per_replica_gib=round(memory, 3) if math.isfinite(memory) else 0.0,
        weights_gib=round(weights, 3) if weights is not None else None,
        kv_cache_gib=round(kv, 3) if kv is not None else None,
        inter_token_latency_ms=round(itl, 3) if itl is not None else None,
        roofline_fraction=_measured_roofline(request=request, model_config=model_config, batch_size=batch_size,
                                             itl_ms=solo.mean_itl_ms),
        measured_at=sweep.created_at,
        engine=sweep.engine,
        explanation=(
            f"Measured ({label}{len(sweep.points)} batch points): {batch.explanation} {replicas_note}{memory_note}"
        ),
    )


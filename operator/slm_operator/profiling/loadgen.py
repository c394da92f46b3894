"""Closed-loop load over the OpenAI HTTP API: ``concurrency`` streams, each starting a new request
as soon as its previous one ends, so the engine always has that many requests in flight.

Each request is a streaming ``POST /v1/completions`` whose prompt is a list of ``input_tokens``
random token ids (exact input length, no tokenizer needed, no prefix-cache hits) with
``max_tokens = output_tokens`` and ``ignore_eos`` (exact output length). After ``warmup_s`` the
steady window of ``duration_s`` starts; only what happens inside it counts:

* output tokens whose chunk arrived in the window, input tokens of requests whose first token
  arrived in it; total tok/s = (input + output) / window (the reference's definition);
* TTFT of requests whose first token arrived in the window (includes queueing, if any);
* ITL: mean, p50 and p99 over the gaps between consecutive chunks of a request, for chunks
  arriving in the window; a chunk carrying n tokens (vLLM merges a lagging stream's tokens,
  counted through ``continuous_usage_stats``) contributes n gaps of 1/n of its interval.

Engine-agnostic. Time comes from the wall clock, except when the engine stamps chunks with its
own clock (``sim_time``, the simulated engine): then the stamps are used, so a simulated sweep is
exact however slowly Python streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from typing import Any

import aiohttp

__all__ = ["LoadResult", "LoadError", "run_load"]

log = logging.getLogger(__name__)


class LoadError(RuntimeError):
    """The engine rejected or failed the requests; the message carries its answer."""


@dataclasses.dataclass(frozen=True)
class LoadResult:
    concurrency: int
    window_s: float
    completed: int
    input_tokens: int
    output_tokens: int
    total_token_throughput_tok_s: float
    output_throughput_tok_s: float
    mean_itl_ms: float | None
    median_itl_ms: float | None
    p99_itl_ms: float | None
    mean_ttft_ms: float | None
    median_ttft_ms: float | None
    p99_ttft_ms: float | None
    errors: int
    #: True when the timings are the engine's clock (simulated engine), not the wall clock.
    engine_clock: bool


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Clock:
    """Wall clock, or the engine's clock once a chunk carried ``sim_time``.

    Engine stamps are made relative to where the wall clock stood when the first one arrived, so
    a window keeps its meaning whatever the engine had done before this load started.
    """

    def __init__(self) -> None:
        self.engine = False
        self._t0 = time.monotonic()
        self._offset = 0.0
        self._latest = 0.0

    def now(self) -> float:
        return self._latest if self.engine else time.monotonic() - self._t0

    def engine_time(self, value: float) -> float:
        if not self.engine:
            self.engine = True
            self._offset = value - (time.monotonic() - self._t0)
        rel = value - self._offset
        self._latest = max(self._latest, rel)
        return rel


@dataclasses.dataclass
class _Window:
    start: float
    end: float
    input_tokens: int = 0
    output_tokens: int = 0
    completed: int = 0
    gaps: list[float] = dataclasses.field(default_factory=list)
    ttfts: list[float] = dataclasses.field(default_factory=list)
    #: TTFTs of requests whose first token came before the window (warm-up included): the fallback
    #: when requests outlast the window, so none starts inside it (long outputs, short windows).
    early_ttfts: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def inside(self, t: float) -> bool:
        return self.start <= t < self.end


async def _one_request(
    session: aiohttp.ClientSession, *, url: str, body: dict[str, Any], clock: _Clock, window: _Window,
    input_tokens: int,
) -> None:
    # NB: the window is updated chunk by chunk, so requests still streaming when the load stops
    # (cancelled) have their in-window tokens counted.
    sent = clock.now()
    previous: float | None = None
    arrival: float | None = None
    seen = 0
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            text = (await resp.text())[:500]
            raise LoadError(f"POST {url} -> HTTP {resp.status}: {text}")
        async for raw in resp.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise LoadError(f"engine error in stream: {chunk['error']}")
            if arrival is None and isinstance(chunk.get("sim_arrival"), (int, float)):
                arrival = clock.engine_time(float(chunk["sim_arrival"]))
            if not chunk.get("choices"):
                continue  # the usage-only chunk at the end
            sim = chunk.get("sim_time")
            t = clock.engine_time(float(sim)) if isinstance(sim, (int, float)) else clock.now()
            # NB: vLLM merges the tokens of a request whose stream lags behind into one chunk; the
            # running usage count (continuous_usage_stats) says how many tokens a chunk carries.
            usage = chunk.get("usage") or {}
            total = usage.get("completion_tokens")
            tokens = max(int(total) - seen, 1) if isinstance(total, int) and total > seen else 1
            seen = total if isinstance(total, int) else seen + tokens
            if not window.inside(t):
                if previous is None and t < window.start:
                    window.early_ttfts.append(t - (arrival if arrival is not None else sent))
                previous = t
                continue
            window.output_tokens += tokens
            if previous is None:
                window.ttfts.append(t - (arrival if arrival is not None else sent))
                window.input_tokens += input_tokens
                tokens -= 1  # the first token's time is the TTFT, not an inter-token gap
                previous = t
            if tokens > 0:
                window.gaps.extend([(t - previous) / tokens] * tokens)
            previous = t
    if previous is not None and window.inside(previous):
        window.completed += 1


async def run_load(
    *,
    url: str,
    model: str,
    concurrency: int,
    input_tokens: int,
    output_tokens: int,
    warmup_s: float,
    duration_s: float,
    seed: int = 0,
    vocab_low: int = 10,
    vocab_high: int = 1000,
    request_timeout_s: float = 600.0,
) -> LoadResult:
    """Run the closed loop and measure the steady window (see the module docstring)."""
    if concurrency < 1 or input_tokens < 1 or output_tokens < 1:
        raise ValueError("concurrency, input_tokens and output_tokens must all be >= 1")
    endpoint = url.rstrip("/") + "/v1/completions"
    clock = _Clock()
    window = _Window(start=warmup_s, end=warmup_s + duration_s)
    rng = random.Random(seed)
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            body = {
                "model": model,
                "prompt": [rng.randrange(vocab_low, vocab_high) for _ in range(input_tokens)],
                "max_tokens": output_tokens,
                "min_tokens": output_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            }
            try:
                await _one_request(
                    session, url=endpoint, body=body, clock=clock, window=window, input_tokens=input_tokens,
                )
            except asyncio.CancelledError:
                raise
            except (LoadError, aiohttp.ClientError, json.JSONDecodeError, asyncio.TimeoutError) as exc:
                window.errors += 1
                window.first_error = window.first_error or f"{type(exc).__name__}: {exc}"
                if window.errors >= 3 * concurrency:
                    stop.set()
                await asyncio.sleep(0.05)

    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        wall_limit = time.monotonic() + request_timeout_s + warmup_s + duration_s
        while not stop.is_set() and clock.now() < window.end:
            if time.monotonic() > wall_limit:
                stop.set()
                window.first_error = window.first_error or "load window did not finish in time"
                break
            await asyncio.sleep(0.01)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if window.errors and not window.output_tokens:
        raise LoadError(f"every request failed ({window.errors} errors); first: {window.first_error}")
    span = duration_s
    gaps_ms = [g * 1e3 for g in window.gaps]
    ttfts_ms = [t * 1e3 for t in (window.ttfts or window.early_ttfts)]
    return LoadResult(
        concurrency=concurrency,
        window_s=span,
        completed=window.completed,
        input_tokens=window.input_tokens,
        output_tokens=window.output_tokens,
        total_token_throughput_tok_s=(window.input_tokens + window.output_tokens) / span,
        output_throughput_tok_s=window.output_tokens / span,
        mean_itl_ms=sum(gaps_ms) / len(gaps_ms) if gaps_ms else None,
        median_itl_ms=_percentile(gaps_ms, 0.5),
        p99_itl_ms=_percentile(gaps_ms, 0.99),
        mean_ttft_ms=sum(ttfts_ms) / len(ttfts_ms) if ttfts_ms else None,
        median_ttft_ms=_percentile(ttfts_ms, 0.5),
        p99_ttft_ms=_percentile(ttfts_ms, 0.99),
        errors=window.errors,
        engine_clock=clock.engine,
    )

"""A simulated vLLM: an in-process aiohttp server whose timings come from the estimator.

It speaks ``POST /v1/completions`` (streaming or not), ``GET /v1/models``, ``/health`` and
``/metrics`` with vLLM's metric names, schedules like vLLM (at most ``max_num_seqs`` running,
FIFO waiting queue, KV pool in tokens, preemption of the newest request when the pool is full),
and takes each step's duration from :func:`~slm_operator.profiling.estimator.estimate_batch` at
the current batch. It keeps its own clock and stamps every chunk with it (``sim_time``, and
``sim_arrival`` on the first), so the load generator measures engine time exactly while the wall
clock runs ``time_scale`` times as fast (0 = as fast as Python streams): a sweep takes seconds.

For demos and logic tests only: every result it produces is labelled ``simulated`` and it logs
so when it starts.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import threading
import time
from typing import Any

from aiohttp import web

from slm_operator.constants import GIB

from ..estimator import CALIBRATION, Calibration, estimate_batch, estimate_replicas, replica_memory_gib
from ..gpus import GpuSpec
from ..modelconfig import ModelConfig
from ..types import Workload
from .base import EngineError, find_free_port, port_in_use

__all__ = ["SimulatedEngine", "SimulatedDevice", "start_simulated"]

log = logging.getLogger(__name__)
BLOCK_SIZE = 16


class SimulatedDevice:
    """One simulated GPU shared by the engines started on it: while k of them run, each step
    stretches by the estimator's replica-contention model (``estimate_replicas``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: set[int] = set()

    def attach(self, engine_id: int) -> None:
        with self._lock:
            self._engines.add(engine_id)

    def detach(self, engine_id: int) -> None:
        with self._lock:
            self._engines.discard(engine_id)

    @property
    def engines(self) -> int:
        with self._lock:
            return max(len(self._engines), 1)


@dataclasses.dataclass(eq=False)
class _Request:
    prompt_tokens: int
    max_tokens: int
    arrival: float
    #: (engine time, finished) per generated token.
    queue: asyncio.Queue[tuple[float, bool]]
    generated: int = 0
    aborted: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated


class SimulatedEngine:
    """One simulated server. Use :func:`start_simulated`; :meth:`stop` ends its thread."""

    kind = "simulated"

    def __init__(
        self,
        *,
        model_config: ModelConfig,
        gpu: GpuSpec,
        workload: Workload,
        max_num_seqs: int,
        served_model_name: str,
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float | None = None,
        max_num_batched_tokens: int | None = 2048,
        time_scale: float = 0.0,
        startup_s: float = 30.0,
        arrival_grace_s: float = 0.05,
        calibration: Calibration = CALIBRATION,
        port: int | None = None,
        host: str = "127.0.0.1",
        device: SimulatedDevice | None = None,
    ) -> None:
        self.model_config = model_config
        self.gpu = gpu
        self.workload = workload
        self.max_num_seqs = max_num_seqs
        self.model_name = served_model_name
        self.max_num_batched_tokens = max_num_batched_tokens
        self.time_scale = time_scale
        self.startup_s = startup_s
        self.arrival_grace_s = arrival_grace_s
        self.calibration = calibration
        self.host = host
        self.device = device or SimulatedDevice()
        self.port = port or find_free_port(host)
        self.url = f"http://{host}:{self.port}"
        _, fixed = replica_memory_gib(
            model_config=model_config, workload=workload, batch_size=0,
            max_num_batched_tokens=max_num_batched_tokens, calibration=calibration,
        )
        if kv_cache_memory_bytes:
            pool_bytes = float(kv_cache_memory_bytes)
        else:
            util = gpu_memory_utilization or calibration.gpu_memory_utilization
            pool_bytes = (gpu.memory_gib * util - fixed) * GIB
        if pool_bytes < model_config.kv_bytes_per_token * BLOCK_SIZE:
            raise EngineError(
                f"simulated engine: no memory left for a KV cache ({fixed:.1f} GiB of weights and overhead on a "
                f"{gpu.memory_gib:.0f} GiB {gpu.name}); use a bigger GPU or a smaller model"
            )
        self.num_blocks = int(pool_bytes // (model_config.kv_bytes_per_token * BLOCK_SIZE))
        self.pool_tokens = self.num_blocks * BLOCK_SIZE
        self.now = 0.0
        self.preemptions = 0
        self.generation_tokens = 0
        #: Batch of the latest step: what the running gauge reports (a real engine's gauge is
        #: also set per step; the current list would show the gaps between a request ending and
        #: its closed-loop replacement arriving, which cost engine time only in this simulation).
        self.last_batch = 0
        self.running: list[_Request] = []
        self.waiting: collections.deque[_Request] = collections.deque()
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._scheduler_task: asyncio.Task[None] | None = None
        #: (batch, engines sharing the device) -> step seconds: the estimator is pure, so cache it.
        self._step_cache: dict[tuple[int, int], float] = {}
        # NB: closed-loop clients answer a finished request with a new one; until they have (or a
        # short wall-clock grace passed) the engine's clock must not run on, or the Python client's
        # own latency would show up as idle engine time.
        self._replacements_due = 0
        self._arrived: asyncio.Event | None = None

    # -- the step model -------------------------------------------------------------------
    def step_seconds(self, batch: int) -> float:
        key = (max(batch, 1), self.device.engines)
        if key not in self._step_cache:
            self._step_cache[key] = self._step_seconds(*key)
        return self._step_cache[key]

    def _step_seconds(self, batch: int, engines: int) -> float:
        if engines > 1:
            shared = estimate_replicas(
                model_config=self.model_config, gpu=self.gpu, workload=self.workload, batch_size=batch,
                replicas=engines, max_num_batched_tokens=self.max_num_batched_tokens, calibration=self.calibration,
            )
            return shared.inter_token_latency_ms / 1e3
        solo = estimate_batch(
            model_config=self.model_config, gpu=self.gpu, workload=self.workload, batch_size=batch,
            max_num_batched_tokens=self.max_num_batched_tokens, calibration=self.calibration,
            kv_pool_gib=self.pool_tokens * self.model_config.kv_bytes_per_token / GIB,
        )
        return solo.inter_token_latency_ms / 1e3

    def _used_blocks(self) -> int:
        return sum(-(-r.tokens // BLOCK_SIZE) for r in self.running)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_num_seqs:
            head = self.waiting[0]
            if head.aborted:
                self.waiting.popleft()
                continue
            need = -(-(head.tokens + 1) // BLOCK_SIZE)
            if self._used_blocks() + need > self.num_blocks:
                break
            self.running.append(self.waiting.popleft())

    async def _scheduler(self) -> None:
        assert self._wake is not None
        while True:
            self.running = [r for r in self.running if not r.aborted]
            self._admit()
            if not self.running:
                self.last_batch = 0
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._replacements_due and len(self.running) < self.max_num_seqs:
                await self._await_replacements()
                self._admit()
            step = self.step_seconds(len(self.running))
            self.last_batch = len(self.running)
            self.now += step
            await asyncio.sleep(step * self.time_scale)
            finished = []
            for r in self.running:
                r.generated += 1
                self.generation_tokens += 1
                done = r.generated >= r.max_tokens
                r.queue.put_nowait((self.now, done))
                if done:
                    finished.append(r)
            for r in finished:
                self.running.remove(r)
            self._replacements_due = len(finished)
            # NB: like vLLM, preempt the most recently admitted request when the pool overflows.
            while self.running and self._used_blocks() > self.num_blocks:
                victim = self.running.pop()
                victim.generated = 0
                self.preemptions += 1
                self.waiting.appendleft(victim)

    async def _await_replacements(self) -> None:
        assert self._arrived is not None
        deadline = time.monotonic() + self.arrival_grace_s
        while self._replacements_due > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except asyncio.TimeoutError:
                break
        self._replacements_due = 0

    # -- HTTP -----------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        if body.get("model") != self.model_name:
            return web.json_response(
                {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}, status=404
            )
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt_tokens = len(prompt)
        elif isinstance(prompt, str):
            prompt_tokens = max(1, len(prompt.split()))
        else:
            return web.json_response(
                {"error": {"message": "prompt must be a string or a list of token ids"}}, status=400
            )
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return web.json_response({"error": {"message": "max_tokens must be a positive integer"}}, status=400)
        req = _Request(prompt_tokens=prompt_tokens, max_tokens=max_tokens, arrival=self.now, queue=asyncio.Queue())
        self.waiting.append(req)
        assert self._wake is not None and self._arrived is not None
        self._replacements_due = max(self._replacements_due - 1, 0)
        self._arrived.set()
        self._wake.set()
        created = int(time.time())
        base = {
            "id": f"cmpl-sim-{id(req):x}", "object": "text_completion", "created": created, "model": self.model_name,
        }
        try:
            if not body.get("stream"):
                while True:
                    _, done = await req.queue.get()
                    if done:
                        break
                return web.json_response({
                    **base,
                    "choices": [{"index": 0, "text": " tok" * max_tokens, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                              "total_tokens": prompt_tokens + max_tokens},
                    "simulated": True,
                })
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-SLM-Simulated": "true"})
            try:
                await resp.prepare(request)
                await self._stream(req, resp, base, body, prompt_tokens, max_tokens)
            except ConnectionResetError:
                pass  # NB: the load generator hangs up on in-flight requests when its window ends
            return resp
        finally:
            # NB: a client that goes away aborts its request, as vLLM does.
            req.aborted = True

    async def _stream(
        self, req: _Request, resp: web.StreamResponse, base: dict[str, Any], body: dict[str, Any],
        prompt_tokens: int, max_tokens: int,
    ) -> None:
        try:
            first = True
            while True:
                stamp, done = await req.queue.get()
                chunk = {**base, "choices": [{"index": 0, "text": " tok", "finish_reason": "length" if done else None}],
                         "sim_time": stamp}
                if first:
                    chunk["sim_arrival"] = req.arrival
                    first = False
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if done:
                    break
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                         "total_tokens": prompt_tokens + max_tokens}
                await resp.write(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            # NB: the load generator hangs up on in-flight requests when its window ends.
            return

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "owned_by": "slm-operator-simulated",
            "max_model_len": self.workload.effective_max_model_len(), "simulated": True,
        }]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        labels = f'engine="0",model_name="{self.model_name}"'
        usage = self._used_blocks() / self.num_blocks
        text = "\n".join([
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(self.last_batch)}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(len(self.waiting))}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {usage}",
            "# TYPE vllm:num_preemptions counter",
            f"vllm:num_preemptions_total{{{labels}}} {float(self.preemptions)}",
            "# TYPE vllm:generation_tokens counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens)}",
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{block_size="{BLOCK_SIZE}",engine="0",num_gpu_blocks="{self.num_blocks}",'
            f'kv_cache_size_tokens="{self.pool_tokens}",simulated="true"}} 1.0',
            "",
        ])
        return web.Response(text=text, content_type="text/plain")

    # -- lifecycle ------------------------------------------------------------------------
    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        self._arrived = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        await asyncio.sleep(self.startup_s * self.time_scale)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self._scheduler_task = asyncio.get_running_loop().create_task(self._scheduler())

    async def _shutdown(self) -> None:
        # NB: finish every open stream so its handler returns and the server closes at once.
        for r in [*self.running, *self.waiting]:
            r.queue.put_nowait((self.now, True))
        self.running, self.waiting = [], collections.deque()
        if self._scheduler_task is not None:
            self._scheduler_task.cancel()
            try:
                await self._scheduler_task
            except asyncio.CancelledError:
                pass
        if self._runner is not None:
            await self._runner.cleanup()
        asyncio.get_running_loop().stop()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def start(self, *, timeout_s: float = 60.0) -> SimulatedEngine:
        if port_in_use(self.port, self.host):
            raise EngineError(f"port {self.port} on {self.host} is already in use; choose another port")
        log.warning(
            "SIMULATED engine for %s on %s (KV pool %d tokens, max-num-seqs %d): timings come from the "
            "estimator, not from a GPU", self.model_name, self.gpu.name, self.pool_tokens, self.max_num_seqs,
        )
        self.lines.append(f"simulated engine started on {self.url}")
        self.device.attach(id(self))
        self._thread = threading.Thread(target=self._thread_main, name=f"sim-engine-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise EngineError(f"simulated engine did not start: {self._error!r}")
        return self

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.lines)[-lines:])

    def stop(self) -> None:
        self.device.detach(id(self))
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        if self._thread is not None:
            self._thread.join(timeout=10)


def start_simulated(**kwargs: Any) -> SimulatedEngine:
    """Create and start a :class:`SimulatedEngine` (keyword arguments as its constructor)."""
    return SimulatedEngine(**kwargs).start()

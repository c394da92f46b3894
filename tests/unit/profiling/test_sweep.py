"""The simulated engine, the load generator and the sweep, end to end on loopback (seconds)."""

import asyncio
import json
import sys

import aiohttp
import pytest

from slm_operator.profiling.engines.base import EngineError, find_free_port
from slm_operator.profiling.engines.simulated import SimulatedDevice, start_simulated
from slm_operator.profiling.engines.vllm import start_vllm, vllm_command
from slm_operator.profiling.estimator import estimate_batch
from slm_operator.profiling.gpus import lookup_gpu
from slm_operator.profiling.loadgen import LoadError, run_load
from slm_operator.profiling.metrics import parse_metrics
from slm_operator.profiling.modelconfig import resolve_model_config
from slm_operator.profiling.sweep import ProgressReporter, SweepSettings, profile_from_sweep, run_sweep
from slm_operator.profiling.types import ProfileRequest, Slo, Workload

MODEL = "facebook/opt-125m"
CONFIG = resolve_model_config(model=MODEL, inline=None)
GPU = lookup_gpu("NVIDIA-L4")
WORK = Workload(input_tokens=32, output_tokens=16)
FAST = SweepSettings(warmup_s=0.3, duration_s=1.5, max_batch=32, refine_steps=1, max_replicas=3,
                     metrics_interval_s=0.01, engine_warmup_s=0.3)


@pytest.fixture
def engine():
    server = start_simulated(model_config=CONFIG, gpu=GPU, workload=WORK, max_num_seqs=8, served_model_name=MODEL,
                             time_scale=0.02, startup_s=0)
    yield server
    server.stop()


async def _get(url):
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def _post(url, body):
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, await r.text()


def test_simulated_engine_speaks_the_openai_api_and_vllm_metrics(engine):
    status, text = asyncio.run(_get(engine.url + "/v1/models"))
    assert status == 200 and json.loads(text)["data"][0]["id"] == MODEL
    assert asyncio.run(_get(engine.url + "/health"))[0] == 200
    metrics = parse_metrics(asyncio.run(_get(engine.url + "/metrics"))[1])
    assert metrics.running == 0 and metrics.kv_pool_tokens == engine.pool_tokens
    status, text = asyncio.run(_post(engine.url + "/v1/completions",
                                     {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 5, "stream": True}))
    chunks = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "[DONE]" not in line]
    assert status == 200 and len(chunks) == 5 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    stamps = [c["sim_time"] for c in chunks]
    assert stamps == sorted(stamps) and "sim_arrival" in chunks[0]
    assert asyncio.run(_post(engine.url + "/v1/completions", {"model": "other", "prompt": "x"}))[0] == 404
    assert asyncio.run(_post(engine.url + "/v1/completions", {"model": MODEL, "prompt": {"a": 1}}))[0] == 400


def test_load_generator_measures_what_the_engine_models(engine):
    result = asyncio.run(run_load(url=engine.url, model=MODEL, concurrency=4, input_tokens=32, output_tokens=16,
                                  warmup_s=0.3, duration_s=2.0))
    expected = estimate_batch(model_config=CONFIG, gpu=GPU, workload=WORK, batch_size=4,
                              kv_pool_gib=engine.pool_tokens * CONFIG.kv_bytes_per_token / 2**30)
    assert result.engine_clock and result.errors == 0
    assert result.mean_itl_ms == pytest.approx(expected.inter_token_latency_ms, rel=0.05)
    assert result.output_throughput_tok_s == pytest.approx(expected.output_throughput_tok_s, rel=0.15)
    assert result.total_token_throughput_tok_s == pytest.approx(result.output_throughput_tok_s * 48 / 16, rel=0.15)


def test_load_generator_reports_engine_errors(engine):
    with pytest.raises(LoadError, match="404"):
        asyncio.run(run_load(url=engine.url, model="wrong", concurrency=1, input_tokens=4, output_tokens=2,
                             warmup_s=0, duration_s=0.5))


def _request(**kw):
    return ProfileRequest(model=MODEL, gpu_product="NVIDIA-L4", workload=WORK, epsilon=0.1, **kw)


def _factory():
    device = SimulatedDevice()

    def start(max_num_seqs, index, replicas, kv_bytes):
        return start_simulated(model_config=CONFIG, gpu=GPU, workload=WORK, max_num_seqs=max_num_seqs,
                               served_model_name=MODEL, kv_cache_memory_bytes=kv_bytes, time_scale=0.02,
                               startup_s=0, device=device)
    return start


def test_sweep_finds_the_batch_size_and_packs_replicas(tmp_path):
    progress_file = tmp_path / "progress.json"
    request = _request()
    sweep = run_sweep(request=request, engine_kind="simulated", start_engine=_factory(), settings=FAST,
                      progress=ProgressReporter(progress_file, planned=0), model_config=CONFIG)
    assert sweep.engine == "simulated" and any("SIMULATED" in n for n in sweep.notes)
    assert sweep.metric_names["running"] == "vllm:num_requests_running"
    assert sweep.stop_reason
    sizes = [p.batch_size for p in sweep.points]
    assert sizes == sorted(sizes) and sizes[:3] == [1, 2, 4]
    assert all(p.num_preemptions == 0 for p in sweep.points)
    progress = json.loads(progress_file.read_text())
    assert progress["phase"] == "done" and progress["point"] == len(sweep.points) + len(sweep.replication)
    profile = profile_from_sweep(sweep=sweep, request=request, model_config=CONFIG)
    assert profile.source == "measured" and profile.engine == "simulated" and "SIMULATED" in profile.explanation
    assert profile.batch_size in sizes
    solo = next(p for p in sweep.points if p.batch_size == profile.batch_size)
    assert sweep.replication, "a 125M model at this batch leaves room for more replicas on an L4"
    two = sweep.replication[0]
    # Shared GPU: two replicas beat one but not by 2x (the contention model the engine replays).
    assert solo.total_token_throughput_tok_s < two.total_token_throughput_tok_s < 2 * solo.total_token_throughput_tok_s
    assert profile.tokens_per_second_per_gpu >= profile.tokens_per_second_per_replica
    # The measured ITL at B* against the L4's datasheet bandwidth: a real share, below the limit.
    assert profile.roofline_fraction is not None and 0.05 < profile.roofline_fraction <= 1.0


def test_slo_stops_the_sweep_early():
    # The simulated OPT-125m on an L4 has an ITL of 2.64 ms at batch 8: the SLO stops the doubling there.
    request = _request(slo=Slo(max_inter_token_latency_ms=2.5))
    sweep = run_sweep(request=request, engine_kind="simulated", start_engine=_factory(),
                      settings=SweepSettings(**{**FAST.__dict__, "replication": False}), model_config=CONFIG)
    assert "breaches the SLO" in sweep.stop_reason
    assert max(p.batch_size for p in sweep.points) < 32


def test_explicit_batch_sizes_are_measured_exactly():
    sweep = run_sweep(request=_request(batch_sizes=(3, 5)), engine_kind="simulated", start_engine=_factory(),
                      settings=SweepSettings(**{**FAST.__dict__, "replication": False}), model_config=CONFIG)
    assert [p.batch_size for p in sweep.points] == [3, 5]


def test_vllm_command_sizes_the_kv_pool():
    cmd = vllm_command(python="py", model="m", port=1, max_num_seqs=8, max_model_len=256, kv_cache_memory_bytes=2**30)
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--kv-cache-memory-bytes" in cmd and "--gpu-memory-utilization" not in cmd
    assert "--no-enable-prefix-caching" in cmd
    cmd = vllm_command(python="py", model="m", port=1, max_num_seqs=8, max_model_len=None, gpu_memory_utilization=0.45)
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.4500"


def test_vllm_start_failures_carry_the_log_tail(tmp_path):
    fake = tmp_path / "fakepy"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('CUDA out of memory, sorry')\nsys.exit(3)\n")
    fake.chmod(0o755)
    with pytest.raises(EngineError, match="(?s)code 3.*CUDA out of memory"):
        start_vllm(model="m", port=find_free_port(), max_num_seqs=1, max_model_len=None, log_dir=tmp_path,
                   python=str(fake), ready_timeout_s=20)


def test_vllm_port_in_use_is_a_clear_error(engine, tmp_path):
    with pytest.raises(EngineError, match=f"port {engine.port} .* already in use"):
        start_vllm(model="m", port=engine.port, max_num_seqs=1, max_model_len=None, log_dir=tmp_path)


def test_simulated_engine_refuses_a_model_that_does_not_fit():
    big = resolve_model_config(model="microsoft/Phi-3-mini-4k-instruct", inline=None)
    with pytest.raises(EngineError, match="no memory left"):
        start_simulated(model_config=big, gpu=lookup_gpu("Tesla-T4", memory_gib=4), workload=WORK, max_num_seqs=1,
                        served_model_name="phi", startup_s=0)


def test_merged_chunks_count_every_token_and_split_the_gap():
    """vLLM merges a lagging stream's tokens into one chunk; the running usage count tells how many."""
    from aiohttp import web

    async def scenario():
        async def completions(request):
            resp = web.StreamResponse()
            await resp.prepare(request)
            for total in (1, 3, 4):  # the second chunk carries two tokens
                chunk = {"choices": [{"index": 0, "text": "x"}], "usage": {"completion_tokens": total}}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(0.02)
            await resp.write(b"data: [DONE]\n\n")
            return resp

        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        port = find_free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await run_load(url=f"http://127.0.0.1:{port}", model="m", concurrency=1, input_tokens=2,
                                  output_tokens=4, warmup_s=0.0, duration_s=0.5)
        finally:
            await runner.cleanup()

    result = asyncio.run(scenario())
    assert result.output_tokens >= 8 and result.completed >= 2
    assert result.mean_itl_ms == pytest.approx(20 * 2 / 3, rel=0.35)  # 3 gaps over 2 x 20 ms

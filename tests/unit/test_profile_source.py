"""Profile sources that need no cluster: static, skip, estimate, and the progress text."""

from slm_operator.config import OperatorConfig
from slm_operator.profile_source import _progress_text, obtain_profile
from slm_operator.spec import parse_spec

H100 = "NVIDIA-H100-80GB-HBM3"


def test_estimate_mode_needs_no_api_and_labels_its_source():
    spec = parse_spec({"model": "facebook/opt-1.3b", "profiling": {"mode": "estimate"}})
    profile = obtain_profile(spec=spec, gpu_product=H100, cfg=OperatorConfig())
    assert profile.source == "estimated" and profile.gpu_product == H100
    assert profile.batch_size >= 1 and profile.replicas_to_saturate >= 1
    assert profile.tokens_per_second_per_gpu >= profile.tokens_per_second_per_replica > 0


def test_auto_without_a_runner_falls_back_to_the_estimate_and_says_so():
    spec = parse_spec({"model": "facebook/opt-1.3b"})
    profile = obtain_profile(spec=spec, gpu_product=H100, cfg=OperatorConfig(profiler_runner="none"))
    assert profile.source == "estimated" and "no profiler runner" in profile.explanation


def test_progress_text_reads_the_runner_document():
    text = _progress_text({"phase": "batch sweep", "point": 3, "of": 12, "message": "measuring batch 8",
                           "elapsedSeconds": 41.2})
    assert text == "batch sweep: point 3 of 12 (measuring batch 8), 41 s"
    assert _progress_text(None) == "starting the profiler"


def test_profile_names_fit_a_job_name_and_depend_on_the_slo():
    from slm_operator.profiling.cache import profile_cache_key
    from slm_operator.profiling.types import ProfileRequest, Slo, Workload

    long = ProfileRequest(model="meta-llama/Llama-3.2-1B-Instruct-with-a-very-long-suffix",
                          gpu_product="NVIDIA-A100-SXM4-80GB-HBM2e-EXTRA", workload=Workload())
    key = profile_cache_key(request=long, engine_image="vllm/vllm-openai:v0.11.0")
    assert len(f"slm-profile-{key}") <= 63
    tighter = ProfileRequest(model=long.model, gpu_product=long.gpu_product, workload=Workload(),
                             slo=Slo(max_inter_token_latency_ms=20))
    assert profile_cache_key(request=tighter, engine_image="vllm/vllm-openai:v0.11.0") != key

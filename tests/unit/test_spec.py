"""Spec parsing: defaults, and errors that name the field and the fix."""

import pytest

from slm_operator.spec import SpecError, parse_spec


def test_minimal_spec_gets_the_crd_defaults():
    spec = parse_spec({"model": "facebook/opt-125m"})
    assert spec.served_model_name == "facebook/opt-125m"
    assert spec.gpu.sharing == "auto" and spec.gpu.resource_name == "nvidia.com/gpu"
    assert spec.profiling.mode == "auto" and spec.profiling.epsilon == 0.1
    assert spec.scale.gpus == 1 and spec.scale.target_tokens_per_second is None
    assert (spec.workload.input_tokens, spec.workload.output_tokens) == (512, 256)


def test_full_spec_round_trips_every_field():
    spec = parse_spec({
        "model": "pvc://models/opt", "revision": "main", "servedModelName": "opt",
        "engine": {"image": "img:1", "args": ["--enforce-eager"], "env": [{"name": "A", "value": "b"}],
                   "hfTokenSecretRef": {"name": "hf"}, "resources": {"cpu": "4", "memory": "16Gi"}},
        "gpu": {"product": "NVIDIA-L4", "sharing": "mps"},
        "workload": {"inputTokens": 100, "outputTokens": 50, "maxModelLen": 2048},
        "slo": {"maxInterTokenLatencyMs": 40},
        "profiling": {"mode": "estimate", "epsilon": 0.2, "batchSizes": [64, 8, 8]},
        "scale": {"targetTokensPerSecond": 5000, "minGPUs": 1, "maxGPUs": 4},
    })
    assert spec.engine.hf_token_secret_ref.key == "HF_TOKEN"
    assert spec.engine.env == (("A", "b"),)
    assert spec.profiling.batch_sizes == (8, 64)
    assert spec.scale.gpus is None and spec.scale.max_gpus == 4
    assert spec.slo.max_inter_token_latency_ms == 40


@pytest.mark.parametrize("raw, field, words", [
    ({}, "model", "required"),
    ({"model": "a b"}, "model", "whitespace"),
    ({"model": "m", "engine": {"args": ["--max-num-seqs=8"]}}, "engine.args", "profiling.static.batchSize"),
    ({"model": "m", "engine": {"args": ["--gpu-memory-utilization", "0.5"]}}, "engine.args", "memory budget"),
    ({"model": "m", "engine": {"args": ["--max_num_seqs", "8"]}}, "engine.args", "batchSize"),
    ({"model": "m", "profiling": {"mode": "static"}}, "profiling.static", "required"),
    ({"model": "m", "profiling": {"mode": "static", "static": {"batchSize": 8}}}, "profiling.static", "replicasPerGPU"),
    ({"model": "m", "profiling": {"epsilon": 1.5}}, "profiling.epsilon", "between 0 and 1"),
    ({"model": "m", "scale": {"gpus": 1, "targetTokensPerSecond": 10}}, "scale", "exactly one"),
    ({"model": "m", "scale": {"targetTokensPerSecond": 10, "minGPUs": 3, "maxGPUs": 2}}, "scale.minGPUs", "maxGPUs"),
    ({"model": "m", "workload": {"inputTokens": 2000, "outputTokens": 100, "maxModelLen": 1024}},
     "workload.maxModelLen", "raise maxModelLen"),
    ({"model": "m", "gpu": {"sharing": "vgpu"}}, "gpu.sharing", "time-slicing"),
])
def test_bad_specs_name_the_field_and_the_fix(raw, field, words):
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.field == field
    assert words in str(err.value)
    assert str(err.value).startswith(f"spec.{field}: ")

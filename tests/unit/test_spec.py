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
    # Hostile input the CRD refuses too; the parser is the second line (objects stored before the rule).
    ({"model": "m", "engine": {"args": ["--max-num-seq=4096"]}}, "engine.args", "sets --max-num-seqs"),
    ({"model": "m", "engine": {"args": ["--por", "1"]}}, "engine.args", "sets --port"),
    ({"model": "--help"}, "model", "read it as a flag"),
    ({"model": "m", "servedModelName": "-x"}, "servedModelName", "does not start with '-'"),
    ({"model": "m", "engine": {"hfTokenSecretRef": {"name": "hf"}, "env": [{"name": "HF_TOKEN", "value": "x"}]}},
     "engine.env", "remove one of the two"),
    ({"model": "m", "engine": {"apiKeySecretRef": {"name": "k"}, "env": [{"name": "VLLM_API_KEY"}]}},
     "engine.env", "engine.apiKeySecretRef"),
    ({"model": "m", "networkPolicy": {"ingressFrom": [{}]}}, "networkPolicy.ingressFrom", "namespaceSelector"),
    # Malformed values (a hand-edited object): an InvalidSpec naming the section, never a crash.
    ({"model": "m", "workload": {"inputTokens": "many"}}, "workload", "malformed"),
    ({"model": "m", "scale": {"gpus": [1]}}, "scale", "malformed"),
    ({"model": "m", "engine": {"env": [{"value": "no name"}]}}, "engine", "malformed"),
    ({"model": "m", "slo": {"maxInterTokenLatencyMs": "fast"}}, "slo", "malformed"),
])
def test_bad_specs_name_the_field_and_the_fix(raw, field, words):
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.field == field
    assert words in str(err.value)
    assert str(err.value).startswith(f"spec.{field}: ")


@pytest.mark.parametrize("arg, owned", [
    ("--max-num-seqs=8", "--max-num-seqs"), ("--max_num_seqs", "--max-num-seqs"), ("--max-num-s", "--max-num-seqs"),
    ("--gpu-mem", "--gpu-memory-utilization"), ("--mod=x", "--model"), ("--max-model", "--max-model-len"),
    ("--max-num-batched-tokens=8192", None), ("--model-impl=vllm", None), ("--enforce-eager", None),
    ("--", None), ("-m", None), ("8", None), ("--kv-cache-dtype=fp8", None),
])
def test_owned_flags_are_recognised_in_every_spelling_argparse_accepts(arg, owned):
    from slm_operator.spec import owned_flag

    assert owned_flag(arg) == owned


def test_secrets_and_network_policy_parse():
    spec = parse_spec({"model": "m", "engine": {"apiKeySecretRef": {"name": "api"}},
                       "networkPolicy": {"ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}})
    assert spec.engine.api_key_secret_ref is not None and spec.engine.api_key_secret_ref.key == "VLLM_API_KEY"
    assert spec.network_policy is not None
    assert spec.network_policy.ingress_from == ({"namespaceSelector": {"matchLabels": {"team": "a"}}},)
    assert parse_spec({"model": "m"}).network_policy is None
    assert parse_spec({"model": "m", "networkPolicy": {}}).network_policy.ingress_from == ()


def test_routing_is_off_unless_inference_pool_is_set_even_empty():
    from slm_operator.spec import EndpointPickerRef, RoutingSpec

    assert parse_spec({"model": "m"}).routing == RoutingSpec(inference_pool=None)
    assert parse_spec({"model": "m", "routing": {}}).routing.inference_pool is None
    assert parse_spec({"model": "m", "routing": {"inferencePool": {}}}).routing.inference_pool == EndpointPickerRef()
    asked = parse_spec({"model": "m", "routing": {"inferencePool": {"endpointPicker": {
        "name": "epp", "port": 9100, "failureMode": "FailOpen"}}}}).routing.inference_pool
    assert asked == EndpointPickerRef(name="epp", port=9100, failure_mode="FailOpen")


@pytest.mark.parametrize(("picker", "field"), [
    ({"failureMode": "Open"}, "routing.inferencePool.endpointPicker.failureMode"),
    ({"port": 70000}, "routing.inferencePool.endpointPicker.port"),
    ({"port": "x"}, "routing"),
])
def test_a_bad_endpoint_picker_names_its_field(picker, field):
    with pytest.raises(SpecError) as err:
        parse_spec({"model": "m", "routing": {"inferencePool": {"endpointPicker": picker}}})
    assert err.value.field == field

"""Architecture numbers from config.json: parameter counts, KV bytes, the built-in table."""

import json
import pathlib

import pytest

from slm_operator.errors import ModelConfigError, UnknownModelError
from slm_operator.profiling.modelconfig import (
    known_model_names,
    load_model_config_file,
    parse_model_config,
    resolve_model_config,
)

from .test_results import reference_dir

# Public parameter counts from the model cards / papers (billions); our count is from the architecture.
PUBLISHED_PARAMS_B = {
    "facebook/opt-125m": 0.125,
    "facebook/opt-1.3b": 1.3,
    "facebook/opt-2.7b": 2.7,
    "Qwen/Qwen2.5-0.5B-Instruct": 0.49,
    "Qwen/Qwen2.5-1.5B-Instruct": 1.54,
    "Qwen/Qwen2.5-3B-Instruct": 3.09,
    "meta-llama/Llama-3.2-1B-Instruct": 1.24,
    "meta-llama/Llama-3.2-3B-Instruct": 3.21,
    "microsoft/Phi-3-mini-4k-instruct": 3.8,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 1.1,
    "meta-llama/Llama-2-7b-hf": 6.74,
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
}


def test_opt_1_3b_reproduces_the_reference_kv_bytes_and_weights():
    config = json.loads((reference_dir() / "models" / "opt-1.3b.json").read_text())
    model = parse_model_config(config)
    assert model.kv_bytes_per_token == 196_608  # reference README, kv_pool.csv
    # vLLM logged "Loading model weights took 2.4509 GB" (GiB) for this model
    assert model.weights_gib == pytest.approx(2.4509, abs=0.001)


@pytest.mark.parametrize("name, billions", sorted(PUBLISHED_PARAMS_B.items()))
def test_builtin_models_match_published_sizes(name, billions):
    model = resolve_model_config(model=name, inline=None)
    assert model.num_params / 1e9 == pytest.approx(billions, rel=0.04)


def test_gqa_models_have_fewer_kv_heads():
    llama = resolve_model_config(model="meta-llama/Llama-3.2-1B-Instruct", inline=None)
    assert (llama.num_kv_heads, llama.head_dim) == (8, 64)
    assert llama.kv_bytes_per_token == 2 * 16 * 8 * 64 * 2


def test_resolution_prefers_inline_and_accepts_bare_names():
    inline = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 688, "vocab_size": 2048, "dtype": "bfloat16"}
    tiny = resolve_model_config(model="facebook/opt-1.3b", inline=inline)
    assert tiny.num_layers == 4 and tiny.dtype == "bfloat16"
    assert resolve_model_config(model="OPT-1.3B", inline=None).hidden_size == 2048
    assert resolve_model_config(model="/models/opt-1.3b/", inline=None).num_layers == 24
    assert "facebook/opt-1.3b" in known_model_names()


def test_unknown_model_says_what_to_set():
    with pytest.raises(UnknownModelError, match="spec.profiling.modelConfig.*profiling.mode: static"):
        resolve_model_config(model="acme/secret-model", inline=None)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"model_type": "llama", "hidden_size": 256}, "num_hidden_layers"),
        ({"model_type": "mamba"}, "not supported"),
        ({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": -1, "num_attention_heads": 4,
          "intermediate_size": 1, "vocab_size": 10}, "positive integer"),
        ({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 3, "intermediate_size": 1, "vocab_size": 10}, "multiple"),
        ({"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "ffn_dim": 8, "vocab_size": 10, "torch_dtype": "float64"}, "dtype"),
    ],
)
def test_bad_configs_name_the_field(config, match):
    with pytest.raises(ModelConfigError, match=match):
        parse_model_config(config)


def test_config_file_loading(tmp_path: pathlib.Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "opt"}))
    assert load_model_config_file(tmp_path) == {"model_type": "opt"}
    with pytest.raises(ModelConfigError, match="does not exist"):
        load_model_config_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ModelConfigError, match="not JSON"):
        load_model_config_file(tmp_path / "bad.json")


def test_a_decode_step_reads_every_matrix_once_and_no_gathered_table():
    opt = resolve_model_config(model="facebook/opt-1.3b", inline=None)
    # OPT ties the LM head to the embedding (read once) and gathers its learned positions.
    assert opt.position_embedding_params == 2050 * 2048
    assert opt.weights_read_bytes == (opt.num_params - opt.position_embedding_params) * 2
    llama = resolve_model_config(model="meta-llama/Llama-2-7b-hf", inline=None)
    # Untied: the input embedding is gathered, the separate LM head is read.
    assert llama.weights_read_bytes == (llama.num_params - 32000 * 4096) * 2
    tied = resolve_model_config(model="meta-llama/Llama-3.2-1B-Instruct", inline=None)
    assert tied.tie_word_embeddings and tied.weights_read_bytes == tied.num_params * 2


def test_attention_variants_of_the_table():
    names = {n: resolve_model_config(model=n, inline=None) for n in known_model_names()}
    kinds = {n: (m.num_attention_heads // m.num_kv_heads, m.sliding_window) for n, m in names.items()}
    assert kinds["facebook/opt-1.3b"] == (1, None)  # MHA
    assert kinds["Qwen/Qwen2.5-0.5B-Instruct"] == (7, None)  # GQA 7:1 (its config's window is unused)
    assert kinds["meta-llama/Llama-3.1-8B-Instruct"] == (4, None)  # GQA 4:1
    assert kinds["microsoft/Phi-3-mini-4k-instruct"] == (1, 2047)  # MHA with a sliding window
    for model in names.values():
        assert model.kv_bytes_per_token == 2 * model.num_layers * model.num_kv_heads * model.head_dim * 2
        assert model.attention_flops(1, 100) == 4 * model.num_layers * model.num_attention_heads * model.head_dim * 100


@pytest.mark.parametrize(
    "extra, window, share",
    [
        ({"model_type": "mistral", "sliding_window": 4096}, 4096, 1.0),
        ({"model_type": "qwen2", "sliding_window": 32768}, None, 1.0),
        ({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": True}, 4096, 1.0),
        ({"model_type": "gemma2", "sliding_window": 4096, "head_dim": 256}, 4096, 0.5),
        ({"model_type": "llama", "sliding_window": None}, None, 1.0),
    ],
)
def test_sliding_windows(extra, window, share):
    base = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1,
            "intermediate_size": 688, "vocab_size": 2048}
    model = parse_model_config({**base, **extra})
    assert (model.sliding_window, model.sliding_window_layer_share) == (window, share)
    assert model.num_kv_heads == 1  # MQA
    if window:
        long = model.kv_read_bytes(2 * window)
        assert long == pytest.approx(model.kv_bytes_per_token * (share * window + (1 - share) * 2 * window))

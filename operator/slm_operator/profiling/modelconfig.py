"""Model architecture numbers from a Hugging Face ``config.json``: parameters, weights and KV bytes.

The estimator and the simulated engine need a handful of numbers (layers, hidden size, heads, KV
heads, head dim, vocabulary, FFN size, dtype). They come from the model's ``config.json`` dict:
inline in the SLMService (``spec.profiling.modelConfig``), from a file for the CLI, or from a small
built-in table of public models (``slm_operator/data/known_models.json``) so the operator never
downloads anything.

The parameter count is computed from the architecture (embedding, attention, MLP, norms, head),
not read from the model card. ``kv_bytes_per_token = 2 (K and V) × layers × kv_heads × head_dim ×
dtype bytes``, so grouped-query (GQA) and multi-query (MQA) attention shrink it by heads/kv_heads.

What one decode step reads (:attr:`ModelConfig.weights_read_bytes`) is every matrix once: the
input embedding and learned position embeddings are gathered (a few rows per token), so they are
not read, unless the embedding is tied to the LM head, which reads it whole. Sliding-window
attention (Mistral, Phi-3, Gemma 2 on every other layer) reads at most the window of KV per
sequence (:meth:`ModelConfig.kv_read_bytes`). Side-effect free except :func:`load_model_config_file`
(reads one file).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from slm_operator.constants import GIB
from slm_operator.errors import ModelConfigError, UnknownModelError

__all__ = [
    "ModelConfig",
    "parse_model_config",
    "resolve_model_config",
    "load_model_config_file",
    "known_model_names",
]

_DTYPE_BYTES = {
    "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2,
    "float32": 4, "fp32": 4, "float": 4, "float8": 1, "fp8": 1, "int8": 1,
}
#: Families whose decoder block is Llama-shaped (q/k/v/o projections, gated MLP, RMSNorm).
_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo2", "stablelm"}
#: Of those, the ones with biases on q/k/v.
_QKV_BIAS = {"qwen2"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer, as far as serving cost goes."""

    model_type: str
    num_params: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    dtype: str
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    #: Learned position-embedding parameters (OPT); gathered per token, never read whole.
    position_embedding_params: int = 0
    #: Sliding attention window (tokens) and the share of layers that use it (Gemma 2: every other).
    sliding_window: int | None = None
    sliding_window_layer_share: float = 1.0

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES[self.dtype]

    @property
    def weights_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def weights_gib(self) -> float:
        return self.weights_bytes / GIB

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def embedding_params(self) -> int:
        """Input-embedding parameters: a table lookup, no FLOPs per token."""
        return self.vocab_size * self.hidden_size

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a matrix product per token (the LM head included)."""
        return (
            self.num_params - self.embedding_params - self.position_embedding_params
            + (self.embedding_params if self.tie_word_embeddings else 0)
        )

    @property
    def weights_read_bytes(self) -> int:
        """Bytes one decode step reads from the weights: every matrix once (the LM head included),
        not the gathered embedding rows."""
        return self.matmul_params * self.dtype_bytes

    def kv_read_bytes(self, context_tokens: float) -> float:
        """KV bytes one decoding sequence of ``context_tokens`` reads per step (windowed layers read
        at most their window)."""
        if self.sliding_window is None or context_tokens <= self.sliding_window:
            return context_tokens * self.kv_bytes_per_token
        share = self.sliding_window_layer_share
        return self.kv_bytes_per_token * (share * self.sliding_window + (1 - share) * context_tokens)

    def attention_flops(self, tokens: float, context_tokens: float) -> float:
        """FLOPs of ``tokens`` query tokens attending to ``context_tokens`` each (QKᵀ and PV)."""
        return 4.0 * self.num_layers * self.num_attention_heads * self.head_dim * tokens * context_tokens


def _get(config: Mapping[str, Any], *names: str, default: Any = None, required: bool = True) -> Any:
    for name in names:
        value = config.get(name)
        if value is not None:
            return value
    if required and default is None:
        raise ModelConfigError(
            f"model config.json lacks {' / '.join(repr(n) for n in names)}; "
            "give the model's full config.json in spec.profiling.modelConfig"
        )
    return default


def _positive_int(config: Mapping[str, Any], *names: str, default: int | None = None) -> int:
    value = _get(config, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ModelConfigError(f"model config field {names[0]!r} must be a positive integer, got {value!r}")
    return int(value)


def _dtype(config: Mapping[str, Any]) -> str:
    # NB: transformers >= 5 writes "dtype", older versions "torch_dtype"; default is what vLLM
    # serves an unlabelled checkpoint in.
    raw = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    dtype = str(raw).removeprefix("torch.").lower()
    if dtype not in _DTYPE_BYTES:
        raise ModelConfigError(f"model config dtype {raw!r} is not one of {sorted(_DTYPE_BYTES)}")
    return dtype


def parse_model_config(config: Mapping[str, Any]) -> ModelConfig:
    """Read the architecture from a config.json dict (OPT and Llama-like families). Side-effect free."""
    if not isinstance(config, Mapping):
        raise ModelConfigError(f"model config must be a JSON object (config.json content), got {type(config).__name__}")
    model_type = str(config.get("model_type") or "").lower()
    if not model_type:
        archs = config.get("architectures") or []
        model_type = "opt" if any(str(a).startswith("OPT") for a in archs) else "llama" if archs else ""
    if model_type == "opt":
        return _parse_opt(config)
    if model_type in _LLAMA_LIKE:
        return _parse_llama_like(config, model_type)
    raise ModelConfigError(
        f"model_type {model_type or '(missing)'!r} is not supported by the estimator; supported: "
        f"opt, {', '.join(sorted(_LLAMA_LIKE))}. Measure this model instead (profiling.mode: measure) "
        "or set profiling.mode: static"
    )


def _parse_opt(config: Mapping[str, Any]) -> ModelConfig:
    hidden = _positive_int(config, "hidden_size")
    layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    ffn = _positive_int(config, "ffn_dim")
    vocab = _positive_int(config, "vocab_size")
    max_pos = _positive_int(config, "max_position_embeddings", default=2048)
    proj = _positive_int(config, "word_embed_proj_dim", default=hidden)
    if hidden % heads:
        raise ModelConfigError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    # OPT: learned positions with an offset of 2; biases everywhere; LM head tied to the embedding.
    embed = vocab * proj + (max_pos + 2) * hidden + (2 * proj * hidden if proj != hidden else 0)
    per_layer = 4 * (hidden * hidden + hidden) + (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * 2 * hidden
    final_norm = 2 * hidden if config.get("do_layer_norm_before", True) else 0
    return ModelConfig(
        model_type="opt",
        num_params=embed + layers * per_layer + final_norm,
        position_embedding_params=(max_pos + 2) * hidden,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        vocab_size=vocab,
        intermediate_size=ffn,
        dtype=_dtype(config),
        max_position_embeddings=max_pos,
        tie_word_embeddings=True,
    )


def _parse_llama_like(config: Mapping[str, Any], model_type: str) -> ModelConfig:
    hidden = _positive_int(config, "hidden_size")
    layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = _positive_int(config, "num_key_value_heads", default=heads)
    head_dim = _positive_int(config, "head_dim", default=hidden // heads if hidden % heads == 0 else None)
    inter = _positive_int(config, "intermediate_size")
    vocab = _positive_int(config, "vocab_size")
    if heads % kv_heads:
        raise ModelConfigError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    # Gemma ties by default; the others untie unless the config says so.
    tie = bool(config.get("tie_word_embeddings", model_type.startswith("gemma")))
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden + (q + 2 * kv if model_type in _QKV_BIAS else 0)
    mlp = 3 * hidden * inter
    per_layer = attention + mlp + 2 * hidden
    params = vocab * hidden + layers * per_layer + hidden + (0 if tie else vocab * hidden)
    max_pos = config.get("max_position_embeddings")
    window, window_share = _sliding_window(config, model_type)
    return ModelConfig(
        model_type=model_type,
        num_params=params,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        intermediate_size=inter,
        dtype=_dtype(config),
        max_position_embeddings=int(max_pos) if isinstance(max_pos, int) and max_pos > 0 else None,
        tie_word_embeddings=tie,
        sliding_window=window,
        sliding_window_layer_share=window_share,
    )


def _sliding_window(config: Mapping[str, Any], model_type: str) -> tuple[int | None, float]:
    """(window, share of layers using it). Qwen2/3 configs carry a window they do not use unless
    ``use_sliding_window``; Gemma 2 alternates windowed and global layers; Gemma 1 has none."""
    window = config.get("sliding_window")
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        return None, 1.0
    if model_type in ("qwen2", "qwen3") and not config.get("use_sliding_window", False):
        return None, 1.0
    if model_type == "gemma":
        return None, 1.0
    return window, 0.5 if model_type == "gemma2" else 1.0


@functools.lru_cache(maxsize=1)
def _known_models() -> dict[str, dict[str, Any]]:
    text = importlib.resources.files("slm_operator").joinpath("data/known_models.json").read_text()
    return {name: cfg for name, cfg in json.loads(text).items() if not name.startswith("_")}


def known_model_names() -> list[str]:
    return sorted(_known_models())


def _find_known(model: str) -> dict[str, Any] | None:
    table = _known_models()
    by_lower = {name.lower(): cfg for name, cfg in table.items()}
    key = model.strip().rstrip("/").lower()
    if key in by_lower:
        return by_lower[key]
    # NB: a bare name ("opt-1.3b") or a local path ending in one is accepted when it is unambiguous.
    tail = key.rsplit("/", 1)[-1]
    matches = [cfg for name, cfg in by_lower.items() if name.rsplit("/", 1)[-1] == tail]
    return matches[0] if len(matches) == 1 else None


def resolve_model_config(*, model: str, inline: Mapping[str, Any] | None) -> ModelConfig:
    """The architecture for ``model``: the inline config.json when given, else the built-in table.

    Raises :class:`~slm_operator.errors.UnknownModelError` when neither knows the model,
    :class:`~slm_operator.errors.ModelConfigError` when the inline config is unusable. Side-effect
    free (the table is package data).
    """
    if inline:
        return parse_model_config(inline)
    known = _find_known(model) if isinstance(model, str) else None
    if known is None:
        raise UnknownModelError(
            f"no architecture known for model {model!r}: set spec.profiling.modelConfig to the model's "
            "config.json content, or use profiling.mode: static. Built-in models: "
            + ", ".join(known_model_names())
        )
    return parse_model_config(known)


def load_model_config_file(path: str | pathlib.Path) -> dict[str, Any]:
    """Read a config.json (or a model folder holding one) for the CLI."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelConfigError(f"model config file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"model config file {str(path)!r} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"model config file {str(path)!r} must hold a JSON object")
    return data

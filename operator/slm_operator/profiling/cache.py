"""The profile cache key: one measured profile serves every SLMService with the same shape.

What changes a profile: the model and its revision, the GPU product, the engine image, the
workload shape (input/output tokens, max model length) and the profile format. The SLO and ε do
not: they only change which measured point is selected, so a cached sweep is re-selected, not
re-measured. Side-effect free.
"""

from __future__ import annotations

import hashlib
import json
import re

from .types import PROFILE_FORMAT_VERSION, ProfileRequest

__all__ = ["profile_cache_key"]


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def profile_cache_key(*, request: ProfileRequest, engine_image: str | None) -> str:
    """A DNS-1123 label (≤ 48 chars) usable in a ConfigMap or Job name, e.g. ``opt-1-3b-nvidia-l4-3f2a...``.

    A readable model/GPU prefix plus 16 hex digits of a SHA-256 over everything that changes a
    profile.
    """
    identity = {
        "model": request.model,
        "revision": request.revision,
        "gpu": request.gpu_product.lower(),
        "gpuMemoryGiB": request.gpu_memory_gib,
        "engine": request.engine,
        "engineImage": engine_image or request.engine_image,
        "inputTokens": request.workload.input_tokens,
        "outputTokens": request.workload.output_tokens,
        "maxModelLen": request.workload.effective_max_model_len(),
        "batchSizes": list(request.batch_sizes) if request.batch_sizes else None,
        # NB: the stored profile holds a B* and k* chosen under this SLO and epsilon, so they are
        # part of the identity: a tighter SLO must not reuse a looser one's batch size.
        "slo": {"itlMs": request.slo.max_inter_token_latency_ms, "ttftMs": request.slo.max_time_to_first_token_ms},
        "epsilon": request.epsilon,
        "format": PROFILE_FORMAT_VERSION,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    # NB: ≤ 48 chars in all, so "slm-profile-<key>" still fits a 63-char Job name and pod label.
    model = _slug(request.model.rsplit("/", 1)[-1], 18)
    gpu = _slug(request.gpu_product.removeprefix("NVIDIA-"), 12)
    prefix = "-".join(part for part in (model, gpu) if part)
    return f"{prefix}-{digest}" if prefix else digest

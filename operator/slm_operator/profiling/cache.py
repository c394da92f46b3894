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
    """A DNS-1123 label (≤ 63 chars) usable in a ConfigMap name, e.g. ``opt-1-3b-nvidia-l4-3f2a...``.

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
        "format": PROFILE_FORMAT_VERSION,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    model = _slug(request.model.rsplit("/", 1)[-1], 24)
    gpu = _slug(request.gpu_product.removeprefix("NVIDIA-"), 20)
    prefix = "-".join(part for part in (model, gpu) if part)
    return f"{prefix}-{digest}" if prefix else digest

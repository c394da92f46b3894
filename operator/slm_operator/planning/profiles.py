"""Profiles that need no measurement: the user's ``static`` numbers, and ``skip``.

Side-effect free.
"""

from __future__ import annotations

from slm_operator.errors import SpecError
from slm_operator.profiling.types import Profile
from slm_operator.spec import SLMServiceSpec

#: vLLM's own default for ``--max-num-seqs``, used when profiling is skipped.
VLLM_DEFAULT_MAX_NUM_SEQS = 256


def static_profile(*, spec: SLMServiceSpec, gpu_product: str) -> Profile:
    """The user's measured numbers, taken as they are (``profiling.mode: static``)."""
    static = spec.profiling.static
    if static is None:
        raise SpecError("profiling.static", "is required when profiling.mode is static")
    k = static.replicas_per_gpu
    return Profile(
        source="static",
        gpu_product=gpu_product,
        batch_size=static.batch_size,
        tokens_per_second_per_replica=static.tokens_per_second_per_gpu / k,
        tokens_per_second_per_gpu=static.tokens_per_second_per_gpu,
        replicas_to_saturate=k,
        memory_per_replica_gib=static.memory_per_replica_gib,
        explanation=f"static profile from the spec: batch {static.batch_size}, {k} replica(s)/GPU",
    )


def skip_profile(*, spec: SLMServiceSpec, gpu_product: str) -> Profile:
    """No profile: one replica per GPU with vLLM's defaults, as a plain deployment would run it."""
    if spec.scale.target_tokens_per_second is not None:
        raise SpecError("scale.targetTokensPerSecond",
                        "needs a profile to size GPUs; use profiling.mode auto/estimate/static or scale.gpus")
    return Profile(
        source="static",
        gpu_product=gpu_product,
        batch_size=VLLM_DEFAULT_MAX_NUM_SEQS,
        tokens_per_second_per_replica=0.0,
        tokens_per_second_per_gpu=0.0,
        replicas_to_saturate=1,
        memory_per_replica_gib=0.0,
        explanation="profiling skipped: one replica per GPU with vLLM's default max-num-seqs",
    )

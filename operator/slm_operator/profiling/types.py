"""Data types shared by the profiler, the estimator, the planner and the operator.

Plain frozen dataclasses with ``to_dict``/``from_dict`` in the camelCase used by the CRD status and
the JSON files, so a profile can travel through a ConfigMap or a CLI pipe unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

#: Bumped when the meaning of a stored profile or sweep changes; part of the profile cache key.
#: 2: the batch size and k* fields were renamed (see :data:`DEPRECATED_PROFILE_KEYS`).
PROFILE_FORMAT_VERSION = 2

ProfileSource = Literal["measured", "estimated", "static"]


#: Acronyms keep the spelling the CRD uses (tokensPerSecondPerGPU, memoryPerReplicaGiB).
_ACRONYMS = {"gpu": "GPU", "gib": "GiB"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(_ACRONYMS.get(part, part[:1].upper() + part[1:]) for part in rest)


@dataclasses.dataclass(frozen=True)
class Workload:
    """The request shape a service is profiled and planned for (typical lengths, in tokens)."""

    input_tokens: int = 512
    output_tokens: int = 256
    max_model_len: int | None = None

    @property
    def tokens_per_request(self) -> int:
        return self.input_tokens + self.output_tokens

    def effective_max_model_len(self) -> int:
        """``--max-model-len`` to run with: the user's value, else the request shape rounded up."""
        if self.max_model_len:
            return self.max_model_len
        need = self.tokens_per_request
        return max(256, 1 << (need - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Slo:
    """Optional latency objectives. ``None`` means unconstrained."""

    max_inter_token_latency_ms: float | None = None
    max_time_to_first_token_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class Profile:
    """What one GPU can do for one model and workload: the input of the planner.

    ``batch_size`` is the batch size each replica runs (the papers' B*; vLLM's ``--max-num-seqs``).
    ``tokens_per_second_per_replica`` is input+output tokens/s of one replica at that batch size;
    ``tokens_per_second_per_gpu`` is the aggregate of ``replicas_to_saturate`` replicas on one GPU,
    the replica count past which one GPU gains no throughput (the papers' k*). What a plan runs
    per GPU is the planner's choice, at most this many.
    ``memory_per_replica_gib`` is the device memory one replica needs at its batch size (weights +
    KV for ``batch_size`` requests of the workload shape + runtime overhead).
    """

    source: ProfileSource
    gpu_product: str
    batch_size: int
    tokens_per_second_per_replica: float
    tokens_per_second_per_gpu: float
    replicas_to_saturate: int
    memory_per_replica_gib: float
    weights_gib: float | None = None
    kv_cache_gib: float | None = None
    inter_token_latency_ms: float | None = None
    measured_at: str | None = None
    profile_ref: str | None = None
    #: ``vllm`` or ``simulated`` for measured profiles; a simulated one is labelled as such in status.
    engine: str | None = None
    #: One or two sentences a user reads in ``kubectl describe``: why this batch size and this k.
    explanation: str = ""
    #: Share (0-1) of the GPU's HBM roofline one replica reaches at ``batch_size``: the time the
    #: step's bytes (weights once + the batch's KV cache) take at the datasheet peak bandwidth,
    #: divided by the inter-token latency. The physical limit for decode is 1.0. ``None`` when
    #: not computed (measured profiles may leave it out).
    roofline_fraction: float | None = None
    #: Why an ``auto`` profile is an estimate instead of a measurement, as a condition reason
    #: (``ProfilerUnschedulable``, ``ProfilerNotStarted``); ``None`` when nothing fell back.
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {_camel(k): v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Read :meth:`to_dict`'s shape; keys of :data:`DEPRECATED_PROFILE_KEYS` are read as their
        new names (a profile stored before format 2, in a ConfigMap or a CLI output file)."""
        by_camel = {_camel(f.name): f.name for f in dataclasses.fields(cls)}
        for old, new in DEPRECATED_PROFILE_KEYS.items():
            if old in data and new in data:
                raise ValueError(f"profile has both {new!r} and its old name {old!r}")
        current = {DEPRECATED_PROFILE_KEYS.get(k, k): v for k, v in data.items()}
        unknown = set(current) - set(by_camel)
        if unknown:
            raise ValueError(f"unknown profile fields: {sorted(unknown)}")
        return cls(**{by_camel[k]: v for k, v in current.items()})


#: Profile keys of format 1 -> their names since format 2. :meth:`Profile.from_dict` still reads
#: them: result ConfigMaps and ``slm-profiler run`` output files written before keep them.
DEPRECATED_PROFILE_KEYS: Mapping[str, str] = {
    "paretoBatchSize": "batchSize",
    "replicasPerGPU": "replicasToSaturate",
}


@dataclasses.dataclass(frozen=True)
class ProfileRequest:
    """Everything a profiler run needs; serialisable so it can be handed to a Job or a subprocess.

    ``model_config`` is the model's ``config.json`` as a dict (the estimator and the simulated
    engine need it; a real vLLM run reads the model itself).
    """

    model: str
    gpu_product: str
    workload: Workload
    slo: Slo = Slo()
    epsilon: float = 0.1
    batch_sizes: tuple[int, ...] | None = None
    engine: str = "simulated"
    engine_image: str | None = None
    revision: str | None = None
    model_config: Mapping[str, Any] | None = None
    gpu_memory_gib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["workload"] = {_camel(k): v for k, v in dataclasses.asdict(self.workload).items() if v is not None}
        data["slo"] = {_camel(k): v for k, v in dataclasses.asdict(self.slo).items() if v is not None}
        data["batch_sizes"] = list(self.batch_sizes) if self.batch_sizes else None
        data["model_config"] = dict(self.model_config) if self.model_config else None
        return {_camel(k): v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileRequest:
        names = {_camel(f.name): f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"unknown profile request fields: {sorted(unknown)}")
        kwargs = {names[k]: v for k, v in data.items()}
        if "workload" in kwargs:
            kwargs["workload"] = Workload(**{_snake(k): v for k, v in kwargs["workload"].items()})
        if "slo" in kwargs:
            kwargs["slo"] = Slo(**{_snake(k): v for k, v in kwargs["slo"].items()})
        if kwargs.get("batch_sizes"):
            kwargs["batch_sizes"] = tuple(int(b) for b in kwargs["batch_sizes"])
        return cls(**kwargs)


def _snake(name: str) -> str:
    name = re.sub("|".join(_ACRONYMS.values()), lambda m: "_" + m.group(0).lower(), name)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("__", "_").lstrip("_")

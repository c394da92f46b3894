"""Profile JSON: the current keys round-trip, and a profile stored with format 1's keys still reads."""

import json

import pytest

from slm_operator.profiling.types import DEPRECATED_PROFILE_KEYS, PROFILE_FORMAT_VERSION, Profile

PROFILE = Profile(source="measured", gpu_product="NVIDIA-L4", batch_size=96, tokens_per_second_per_replica=9000.0,
                  tokens_per_second_per_gpu=15000.0, replicas_to_saturate=2, memory_per_replica_gib=6.5,
                  engine="vllm", explanation="why")


def test_profile_round_trips_with_the_current_keys():
    data = PROFILE.to_dict()
    assert data["batchSize"] == 96 and data["replicasToSaturate"] == 2
    assert not set(data) & set(DEPRECATED_PROFILE_KEYS)
    assert Profile.from_dict(json.loads(json.dumps(data))) == PROFILE


def test_a_profile_stored_with_format_1_keys_still_reads():
    # What a result ConfigMap or an `slm-profiler run --output` file held before format 2.
    assert PROFILE_FORMAT_VERSION == 2
    stored = {"source": "measured", "gpuProduct": "NVIDIA-L4", "paretoBatchSize": 96,
              "tokensPerSecondPerReplica": 9000.0, "tokensPerSecondPerGPU": 15000.0, "replicasPerGPU": 2,
              "memoryPerReplicaGiB": 6.5, "engine": "vllm", "explanation": "why"}
    assert Profile.from_dict(stored) == PROFILE


def test_an_old_and_a_new_name_together_are_refused():
    with pytest.raises(ValueError, match="'batchSize' and its old name 'paretoBatchSize'"):
        Profile.from_dict({**PROFILE.to_dict(), "paretoBatchSize": 64})


def test_unknown_fields_are_still_refused():
    with pytest.raises(ValueError, match="unknown profile fields"):
        Profile.from_dict({**PROFILE.to_dict(), "bStar": 96})

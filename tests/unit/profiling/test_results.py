"""Sweep files: our versioned JSON, CSV export with the reference columns, reading reference CSVs."""

import json
import os
import pathlib

import pytest

from slm_operator.profiling.results import SweepFormatError, SweepPoint, SweepResult, load_sweep, to_csv
from slm_operator.profiling.types import PROFILE_FORMAT_VERSION

ROOT = pathlib.Path(__file__).resolve().parents[3]


def reference_dir() -> pathlib.Path:
    """shared/reference beside the repo root (or under $SHARED); skip when it is absent."""
    shared = pathlib.Path(os.environ.get("SHARED") or ROOT.parent / "shared")
    ref = shared / "reference"
    if not (ref / "sweep_sharegpt.csv").exists():
        pytest.skip(f"reference data not found at {ref} (set SHARED to the shared/ folder)")
    return ref


def _sweep() -> SweepResult:
    return SweepResult(
        engine="simulated", model="m", gpu_product="NVIDIA-L4", input_tokens=100, output_tokens=50,
        points=(SweepPoint(batch_size=1, total_token_throughput_tok_s=100.0, mean_itl_ms=5.0),
                SweepPoint(batch_size=8, total_token_throughput_tok_s=700.0, mean_itl_ms=6.0, num_preemptions=2)),
        replication=(SweepPoint(batch_size=8, replicas=2, total_token_throughput_tok_s=1200.0, mean_itl_ms=9.0),),
        metric_names={"kv_usage": "vllm:kv_cache_usage_perc"},
        notes=("SIMULATED",),
    )


def test_json_round_trip_is_versioned(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_sweep().to_dict()))
    data = json.loads(path.read_text())
    assert data["format"] == "slm-operator/sweep" and data["version"] == PROFILE_FORMAT_VERSION
    assert load_sweep(path) == _sweep()
    data["version"] = PROFILE_FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(SweepFormatError, match="version"):
        load_sweep(path)


def test_csv_export_reads_back_with_the_reference_columns(tmp_path):
    text = to_csv(_sweep())
    header = text.splitlines()[0].split(",")
    for column in ("max_num_seqs", "total_token_throughput_tok_s", "mean_itl_ms", "num_preemptions", "replicas"):
        assert column in header
    path = tmp_path / "s.csv"
    path.write_text(text)
    back = load_sweep(path)
    assert [p.batch_size for p in back.points] == [1, 8]
    assert back.points[1].num_preemptions == 2
    assert back.replication[0].replicas == 2 and back.replication[0].total_token_throughput_tok_s == 1200.0


def test_reference_sharegpt_csv_loads():
    sweep = load_sweep(reference_dir() / "sweep_sharegpt.csv")
    assert len(sweep.points) == 15 and sweep.model == "opt-1.3b"
    assert sweep.input_tokens == 111  # 221292 / 2000 = 110.6
    assert all(p.mean_itl_ms for p in sweep.points)


def test_mixed_reference_file_asks_for_a_filter_and_keeps_failed_rows():
    ref = reference_dir() / "sweep_output_length.csv"
    with pytest.raises(SweepFormatError, match="--where output_len="):
        load_sweep(ref)
    sweep = load_sweep(ref, where={"output_len": "130"})
    failed = [p for p in sweep.points if p.status != "ok"]
    assert {p.batch_size for p in failed} == {1, 256}
    assert all(p.selection_point().throughput_tok_s == 0 for p in failed)


def test_missing_columns_and_bad_values_are_named(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("max_num_seqs,mean_itl_ms\n1,3\n")
    with pytest.raises(SweepFormatError, match="total_token_throughput_tok_s"):
        load_sweep(path)
    path.write_text("max_num_seqs,total_token_throughput_tok_s\n1,fast\n")
    with pytest.raises(SweepFormatError, match="'fast'"):
        load_sweep(path)
    with pytest.raises(SweepFormatError, match="does not exist"):
        load_sweep(tmp_path / "none.csv")

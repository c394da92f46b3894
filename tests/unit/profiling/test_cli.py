"""``slm-profiler`` subcommands: output shapes, exit codes, files written."""

import json

import pytest

from slm_operator.profiling.cli import main
from slm_operator.profiling.types import Profile, ProfileRequest, Workload

from .test_results import reference_dir


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_has_the_documented_keys(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text((reference_dir() / "models" / "opt-1.3b.json").read_text())
    code, out, _ = _run(capsys, "estimate", "--model-config", str(config), "--gpu", "NVIDIA-L4",
                        "--input-tokens", "128", "--output-tokens", "64", "--batch-sizes", "1,8,64", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["batchSize"] for r in rows] == [1, 8, 64]
    for key in ("tokensPerSecond", "outputTokensPerSecond", "interTokenLatencyMs", "kvCacheGiB"):
        assert all(r[key] > 0 for r in rows)
    assert rows[0]["tokensPerSecond"] == pytest.approx(rows[0]["outputTokensPerSecond"] * 3, rel=1e-3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["estimate", "--model", "facebook/opt-1.3b", "--gpu", "GTX-480", "--input-tokens", "1",
          "--output-tokens", "1"], "known GPUs"),
        (["estimate", "--model", "acme/x", "--gpu", "L4", "--input-tokens", "1", "--output-tokens", "1"],
         "spec.profiling.modelConfig"),
        (["estimate", "--model", "facebook/opt-1.3b", "--gpu", "L4", "--input-tokens", "1", "--output-tokens", "1",
          "--batch-sizes", "1,x"], "--batch-sizes"),
        (["estimate", "--gpu", "L4", "--input-tokens", "1", "--output-tokens", "1"], "--model-config"),
    ],
)
def test_bad_input_exits_2_with_the_fix(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err


def test_analyze_reference_csv_json(capsys):
    code, out, _ = _run(capsys, "analyze", str(reference_dir() / "sweep_sharegpt.csv"), "--json")
    result = json.loads(out)
    assert code == 0 and result["batchSize"] == 192  # see test_selection for why
    assert result["plateauTokensPerSecond"] == pytest.approx(10317.7, abs=0.1)
    code, out, _ = _run(capsys, "analyze", str(reference_dir() / "replication.csv"), "--where", "chunked_prefill=false",
                        "--json")
    assert code == 0 and json.loads(out)["replicasToSaturate"] == 2


def test_analyze_text_table_and_mixed_file_error(capsys):
    code, out, _ = _run(capsys, "analyze", str(reference_dir() / "sweep_output_length.csv"),
                        "--where", "output_len=520", "--max-itl-ms", "20")
    assert code == 0 and "B*" in out and "ITL" in out
    code, _, err = _run(capsys, "analyze", str(reference_dir() / "sweep_output_length.csv"))
    assert code == 2 and "--where output_len=" in err


def test_plot_writes_a_png(capsys, tmp_path):
    png = tmp_path / "curve.png"
    code, out, _ = _run(capsys, "plot", str(reference_dir() / "sweep_sharegpt.csv"), "--output", str(png),
                        "--max-itl-ms", "40")
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "B*" in out


def _request_file(tmp_path, **kw):
    request = ProfileRequest(model="facebook/opt-125m", gpu_product="NVIDIA-L4",
                             workload=Workload(input_tokens=32, output_tokens=16), **kw)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request.to_dict()))
    return path


def test_run_simulated_writes_profile_sweep_csv_and_progress(capsys, caplog, tmp_path):
    out = tmp_path / "profile.json"
    code, _, err = _run(capsys, "run", "--request", str(_request_file(tmp_path)), "--output", str(out),
                        "--engine", "simulated", "--progress", str(tmp_path / "p.json"),
                        "--csv", str(tmp_path / "s.csv"),
                        "--max-batch", "8", "--warmup-s", "0.2", "--duration-s", "1", "--no-replication",
                        "--time-scale", "0.02")
    assert code == 0, err
    profile = Profile.from_dict(json.loads(out.read_text()))
    assert profile.engine == "simulated" and profile.source == "measured" and profile.replicas_to_saturate == 1
    assert json.loads((tmp_path / "profile.sweep.json").read_text())["format"] == "slm-operator/sweep"
    assert (tmp_path / "s.csv").read_text().startswith("model,gpu,replicas,max_num_seqs")
    assert json.loads((tmp_path / "p.json").read_text())["phase"] == "done"
    assert "SIMULATED engine" in caplog.text


def test_run_request_from_env_and_bad_requests(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("REQ", "{not json")
    code, _, err = _run(capsys, "run", "--request", "env:REQ", "--output", str(tmp_path / "o.json"))
    assert code == 2 and "not JSON" in err
    monkeypatch.setenv("REQ", json.dumps({"model": "acme/unknown", "gpuProduct": "NVIDIA-L4", "workload": {}}))
    code, _, err = _run(capsys, "run", "--request", "env:REQ", "--output", str(tmp_path / "o.json"),
                        "--engine", "simulated")
    assert code == 2 and "modelConfig" in err
    monkeypatch.setenv("REQ", json.dumps({"model": "m", "gpu": "x"}))
    code, _, err = _run(capsys, "run", "--request", "env:REQ", "--output", str(tmp_path / "o.json"))
    assert code == 2 and "unknown profile request fields" in err


def test_calibrate_prints_markdown_tables(capsys):
    code, out, _ = _run(capsys, "calibrate", str(reference_dir()))
    assert code == 0 and out.count("| sharegpt |") == 15 and "| 2x256 |" in out


def test_a_local_model_folder_gives_its_config_json_to_a_vllm_profile(tmp_path):
    from slm_operator.profiling.cli import _local_model_config

    assert _local_model_config("facebook/opt-1.3b") is None, "a hub id is not read from disk"
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 2048,
    }))
    config = _local_model_config(str(folder))
    assert config is not None and config.kv_bytes_per_token > 0 and config.weights_gib > 0
    (folder / "config.json").write_text("not json")
    assert _local_model_config(str(folder)) is None


def test_mix_predicts_each_replicas_share_of_its_own_plateau_not_the_solo_sum(capsys):
    code, out, _ = _run(capsys, "mix", "--model", "chat:2:4:20000:8000", "--model", "embed:1:4:30000:12000", "--json")
    prediction = json.loads(out)
    assert code == 0 and prediction["share"] == 0.75
    assert prediction["predictedTokensPerSecond"] == {"chat": 10000.0, "embed": 7500.0}
    assert prediction["totalTokensPerSecond"] == 17500.0 and prediction["soloSumTokensPerSecond"] == 28000.0
    code, out, _ = _run(capsys, "mix", "--model", "chat:2:4:20000:8000")
    assert code == 0 and "20,000/4 = 10,000 tok/s" in out and "bandwidth-bound" in out


@pytest.mark.parametrize(("model", "message"), [("chat:3:2:20000", "reserve 1.50 of the GPU"),
                                                ("chat:2:4", "NAME:REPLICAS:K:PLATEAU"),
                                                ("chat:x:4:100", "integers"), ("chat:0:4:100", "positive")])
def test_mix_refuses_more_than_one_gpu_and_bad_input(capsys, model, message):
    code, _, err = _run(capsys, "mix", "--model", model)
    assert code == 2 and message in err

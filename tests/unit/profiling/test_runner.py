"""Local subprocess runner, the profile cache key and the profiler Job manifest."""

import json
import re
import time

import pytest

from slm_operator.builders.profiler_job import REQUEST_ENV, ProfilerGpu, build_profiler_job
from slm_operator.errors import ProfilingFailed
from slm_operator.profiling.cache import profile_cache_key
from slm_operator.profiling.runner_local import start_local_profile
from slm_operator.profiling.types import ProfileRequest, Slo, Workload

REQUEST = ProfileRequest(model="facebook/opt-125m", gpu_product="NVIDIA-L4", workload=Workload(32, 16))
FAST = ["--max-batch", "4", "--warmup-s", "0.2", "--duration-s", "0.8", "--no-replication", "--time-scale", "0.02"]


def _wait(run, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = run.poll()
        if result is not None:
            return result
        time.sleep(0.2)
    run.cancel()
    raise AssertionError(f"profile did not finish in {timeout} s:\n{run.log_tail()}")


def test_local_profile_runs_in_the_background(tmp_path):
    run = start_local_profile(request=REQUEST, work_dir=str(tmp_path), extra_args=FAST)
    assert run.poll() is None  # returned at once, still running
    profile = _wait(run)
    assert profile.engine == "simulated" and profile.batch_size in (1, 2, 3, 4)
    assert run.progress()["phase"] == "done"


def test_failed_profile_raises_with_the_log_tail(tmp_path):
    bad = ProfileRequest(model="facebook/opt-125m", gpu_product="NVIDIA-GTX-480", workload=Workload(32, 16))
    run = start_local_profile(request=bad, work_dir=str(tmp_path), extra_args=FAST)
    with pytest.raises(ProfilingFailed, match="(?s)code 2.*unknown GPU"):
        _wait(run)


def test_cancel_ends_the_child(tmp_path):
    run = start_local_profile(request=REQUEST, work_dir=str(tmp_path),
                              extra_args=["--time-scale", "1", "--duration-s", "60"])
    run.cancel()
    assert run.process.poll() is not None
    with pytest.raises(ProfilingFailed):
        run.poll()


def test_cache_key_is_dns_safe_and_tracks_what_changes_a_profile():
    key = profile_cache_key(request=REQUEST, engine_image="vllm/vllm-openai:v0.9.0")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", key) and len(key) <= 63
    assert key.startswith("opt-125m-l4-")
    # The stored profile's B* was chosen under one SLO and ε: another SLO or ε is another profile.
    for change in ({"model": "facebook/opt-1.3b"}, {"gpu_product": "NVIDIA-H100-80GB-HBM3"}, {"revision": "abc"},
                   {"workload": Workload(64, 16)}, {"slo": Slo(10.0)}, {"epsilon": 0.3}):
        changed = ProfileRequest(**{**REQUEST.__dict__, **change})
        assert profile_cache_key(request=changed, engine_image="vllm/vllm-openai:v0.9.0") != key
    assert profile_cache_key(request=REQUEST, engine_image="vllm/vllm-openai:v0.10.0") != key
    long = ProfileRequest(**{**REQUEST.__dict__, "model": "org/" + "x" * 200, "gpu_product": "y" * 100})
    assert len(profile_cache_key(request=long, engine_image=None)) <= 63


def test_profiler_job_pins_one_whole_gpu_non_root_and_writes_the_configmap():
    owner = {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "name": "svc", "uid": "u-1"}
    job = build_profiler_job(name="svc-profile", namespace="ns", request=REQUEST, image="img:1",
                             result_configmap="profile-abc", service_account="slm-profiler",
                             gpu_product="NVIDIA-L4", owner=owner)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["serviceAccountName"] == "slm-profiler" and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    args = container["args"]
    assert args[0] == "run" and args[args.index("--write-configmap") + 1] == "ns/profile-abc"
    assert args[args.index("--request") + 1] == f"env:{REQUEST_ENV}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert ProfileRequest.from_dict(json.loads(env[REQUEST_ENV])) == REQUEST
    other = build_profiler_job(name="j", namespace="ns", request=REQUEST, image="i", result_configmap="c",
                               service_account="s", gpu_product="NVIDIA-L4",
                               gpu=ProfilerGpu(kind="dedicated", resource_name="nvidia.com/mig-1g.10gb"))
    assert other["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": 1}
    assert "ownerReferences" not in other["metadata"]


def test_profiler_extra_args_come_from_the_operator_config_and_follow_ours():
    from slm_operator.config import ConfigError, OperatorConfig

    cfg = OperatorConfig.from_env({"SLM_PROFILER_EXTRA_ARGS": '["--duration-s=6", "--vllm-arg", "--dtype float32"]'})
    assert cfg.profiler_extra_args == ("--duration-s=6", "--vllm-arg", "--dtype float32")
    assert OperatorConfig.from_env({}).profiler_extra_args == ()
    with pytest.raises(ConfigError, match="SLM_PROFILER_EXTRA_ARGS.*JSON list of strings"):
        OperatorConfig.from_env({"SLM_PROFILER_EXTRA_ARGS": '"--duration-s=6"'})
    with pytest.raises(ConfigError, match="SLM_PROFILER_EXTRA_ARGS.*is not JSON"):
        OperatorConfig.from_env({"SLM_PROFILER_EXTRA_ARGS": "--duration-s=6"})
    request = ProfileRequest(model="m", gpu_product="NVIDIA-L4", workload=Workload(input_tokens=8, output_tokens=8))
    job = build_profiler_job(name="p", namespace="slm-system", request=request, image="img", result_configmap="p",
                             service_account="sa", gpu_product="NVIDIA-L4", extra_args=cfg.profiler_extra_args)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-3:] == ["--duration-s=6", "--vllm-arg", "--dtype float32"]
    assert args.index("--write-configmap") < args.index("--duration-s=6"), "ours first, so the user's flag wins"

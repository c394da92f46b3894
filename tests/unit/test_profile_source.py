"""Profile sources: static, skip, estimate, the progress text, and the profiler Job's life (its GPU,
the fallback when it cannot run, a failed or deleted Job) against the in-memory API."""

import pytest

from slm_operator.config import OperatorConfig
from slm_operator.errors import ProfilePending, ProfilingFailed
from slm_operator.planning.inventory import build_inventory
from slm_operator.profile_source import _progress_text, obtain_profile
from slm_operator.spec import parse_spec
from slm_operator.status import profiled
from tests.unit.factories import dra_slice, node
from tests.unit.fakes import FakeApi

H100 = "NVIDIA-H100-80GB-HBM3"


def test_estimate_mode_needs_no_api_and_labels_its_source():
    spec = parse_spec({"model": "facebook/opt-1.3b", "profiling": {"mode": "estimate"}})
    profile = obtain_profile(spec=spec, gpu_product=H100, cfg=OperatorConfig())
    assert profile.source == "estimated" and profile.gpu_product == H100
    assert profile.batch_size >= 1 and profile.replicas_to_saturate >= 1
    assert profile.tokens_per_second_per_gpu >= profile.tokens_per_second_per_replica > 0


def test_auto_without_a_runner_falls_back_to_the_estimate_and_says_so():
    spec = parse_spec({"model": "facebook/opt-1.3b"})
    profile = obtain_profile(spec=spec, gpu_product=H100, cfg=OperatorConfig(profiler_runner="none"))
    assert profile.source == "estimated" and "no profiler runner" in profile.explanation


def test_progress_text_reads_the_runner_document():
    text = _progress_text({"phase": "batch sweep", "point": 3, "of": 12, "message": "measuring batch 8",
                           "elapsedSeconds": 41.2})
    assert text == "batch sweep: point 3 of 12 (measuring batch 8), 41 s"
    assert _progress_text(None) == "starting the profiler"


def test_profile_names_fit_a_job_name_and_depend_on_the_slo():
    from slm_operator.profiling.cache import profile_cache_key
    from slm_operator.profiling.types import ProfileRequest, Slo, Workload

    long = ProfileRequest(model="meta-llama/Llama-3.2-1B-Instruct-with-a-very-long-suffix",
                          gpu_product="NVIDIA-A100-SXM4-80GB-HBM2e-EXTRA", workload=Workload())
    key = profile_cache_key(request=long, engine_image="vllm/vllm-openai:v0.11.0")
    assert len(f"slm-profile-{key}") <= 63
    tighter = ProfileRequest(model=long.model, gpu_product=long.gpu_product, workload=Workload(),
                             slo=Slo(max_inter_token_latency_ms=20))
    assert profile_cache_key(request=tighter, engine_image="vllm/vllm-openai:v0.11.0") != key


# --- The profiler Job runner (against the in-memory API) ---------------------------------------------------

def _job_setup(monkeypatch, **cfg):
    fake = FakeApi()
    fake.install(monkeypatch)
    config = OperatorConfig(profiler_runner="job", profiler_namespace="slm-system", **cfg)
    spec = parse_spec({"model": "facebook/opt-1.3b", "gpu": {"product": H100}})
    pools = build_inventory(nodes=[node("gpu-h100-0", sharing="mps", replicas=4),
                                   node("gpu-h100-dra-0", sharing="dra")],
                            resource_slices=[dra_slice("gpu-h100-dra-0")]).for_product(H100)

    def obtain():
        return obtain_profile(spec=spec, gpu_product=H100, cfg=config, gpu_pools=lambda: pools)
    return fake, obtain


def _job(fake):
    (job,) = [o for (kind, _, _), o in fake.objects.items() if kind == "Job"]
    return job


def test_a_profiler_job_on_shared_nodes_claims_a_whole_dra_device_owned_by_the_job(monkeypatch):
    fake, obtain = _job_setup(monkeypatch)
    with pytest.raises(ProfilePending, match="running on one whole DRA device"):
        obtain()
    job = _job(fake)
    name = job["metadata"]["name"]
    assert "ownerReferences" not in job["metadata"]  # a cache entry of every service of its key
    template = fake.objects[("ResourceClaimTemplate", "slm-system", name)]
    assert template["metadata"]["ownerReferences"][0] == {
        "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"], "controller": True}
    with pytest.raises(ProfilePending):
        obtain()  # polling again creates nothing new
    assert [w for w in fake.writes if w[0] == "create"] == [("create", "Job", name),
                                                           ("create", "ResourceClaimTemplate", name)]


def _unschedulable_pod(fake, job, created):
    name = job["metadata"]["name"]
    fake.objects[("Pod", "slm-system", f"{name}-x")] = {
        "metadata": {"name": f"{name}-x", "namespace": "slm-system", "creationTimestamp": created,
                     "labels": {"batch.kubernetes.io/job-name": name}},
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/4 nodes are available: 1 Insufficient nvidia.com/gpu"}]}}


def test_an_unschedulable_profiler_falls_back_to_the_estimate_labelled_until_its_note_is_deleted(monkeypatch):
    fake, obtain = _job_setup(monkeypatch, profiler_unschedulable_seconds=60)
    with pytest.raises(ProfilePending):
        obtain()
    job = _job(fake)
    job["status"] = {"active": 1}
    name = job["metadata"]["name"]
    _unschedulable_pod(fake, job, created="2099-01-01T00:00:00Z")  # a pod just made: still waiting
    with pytest.raises(ProfilePending, match="Insufficient nvidia.com/gpu.*the estimate stands in after 60 s"):
        obtain()
    _unschedulable_pod(fake, job, created="2000-01-01T00:00:00Z")  # long ago: the timeout has passed
    profile = obtain()
    assert profile.source == "estimated" and profile.fallback_reason == "ProfilerUnschedulable"
    assert "Insufficient nvidia.com/gpu" in profile.explanation
    assert f"kubectl delete configmap -n slm-system {name}" in profile.explanation
    assert ("Job", "slm-system", name) not in fake.objects  # no Pending pod left behind
    del fake.objects[("Pod", "slm-system", f"{name}-x")]  # the garbage collector's part
    condition = profiled(profile=profile, current={}).condition
    assert condition["reason"] == "ProfilerUnschedulable" and condition["status"] == "True"
    # Sticky: the next reconcile estimates again without a new Job ...
    assert obtain().fallback_reason == "ProfilerUnschedulable"
    assert ("Job", "slm-system", name) not in fake.objects
    # ... until the note is deleted: then it measures again.
    fake.delete(api_version="v1", kind="ConfigMap", name=name, namespace="slm-system")
    with pytest.raises(ProfilePending):
        obtain()
    assert ("Job", "slm-system", name) in fake.objects


def test_a_failed_job_fails_with_its_log_tail_and_deleting_it_profiles_again(monkeypatch):
    fake, obtain = _job_setup(monkeypatch)
    with pytest.raises(ProfilePending):
        obtain()
    job = _job(fake)
    name = job["metadata"]["name"]
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    fake.objects[("Pod", "slm-system", f"{name}-x")] = {
        "metadata": {"name": f"{name}-x", "labels": {"batch.kubernetes.io/job-name": name}},
        "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
            "exitCode": 1, "message": "torch.OutOfMemoryError: CUDA out of memory"}}}]}}
    with pytest.raises(ProfilingFailed,
                       match=f"BackoffLimitExceeded.*CUDA out of memory.*delete job -n slm-system {name}"):
        obtain()
    with pytest.raises(ProfilingFailed):
        obtain()  # stays failed while the Job is there
    fake.delete(api_version="batch/v1", kind="Job", name=name, namespace="slm-system")
    with pytest.raises(ProfilePending, match="running"):
        obtain()
    assert _job(fake).get("status") is None  # a new Job


def test_a_completed_job_whose_result_was_deleted_profiles_again(monkeypatch):
    fake, obtain = _job_setup(monkeypatch)
    with pytest.raises(ProfilePending):
        obtain()
    _job(fake)["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    with pytest.raises(ProfilePending, match="result ConfigMap was deleted: profiling again"):
        obtain()
    assert not [o for (kind, _, _), o in fake.objects.items() if kind == "Job"]
    with pytest.raises(ProfilePending, match="running"):
        obtain()

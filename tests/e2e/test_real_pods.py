"""Real pods, end to end: the chart's operator in its pod, a profiler Job running vLLM's CPU build,
vLLM replicas started one after another, OpenAI requests through the SLMService's Service.

What a platform engineer does, in order: ``helm install``, ``kubectl apply`` an SLMService with
``profiling.mode: auto``, read ``kubectl get slms``, send completions to its Service, scale out,
survive an operator restart, delete. The tests share that one story (module-scoped state) and run
in file order; each asserts one step. The GPU is the only thing simulated: the kind nodes pose as
an exclusive GPU (profiler Jobs) and MPS-shared ones (serving), see hack/kind-gpu-nodes.yaml.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.render_manifests import MIN_KUBE_VERSION
from slm_operator.constants import PROFILE_KEY
from slm_operator.profiling.metrics import parse_metrics
from tests.e2e.conftest import E2E
from tests.kubetest import StopWaiting, wait_for

# NB: the first test's timeout also covers the session fixture (a cold image build and cluster).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "slm-operator"
SYSTEM = "slm-system"
RELEASE = "slm-operator"
NAME = "tiny"
MODEL = "/models/tiny-llama"  # baked into the e2e engine image by hack/images/Dockerfile.e2e-model
GROUP_LABEL = "slm.pareto.dev/group"
SHARED_NAME = "tiny-mps"
GPU_PRODUCT = "KIND-CPU-8GB"  # what the kind nodes pose as (hack/kind-gpu-nodes.yaml)
SERVICE_LABEL = "slm.pareto.dev/service"
#: A profile on two shared CPU cores: short windows, at most two replicas. Flags of `slm-profiler run`.
#: NB: --enforce-eager here and in the service's engine args: torch.compile of each CPU server
#: would cost a minute of both cores per start; serving and profiling stay the same engine mode.
PROFILER_ARGS = ["--warmup-s=2", "--duration-s=6", "--refine-steps=0", "--max-replicas=2", "--ready-timeout-s=600",
                 "--vllm-arg=--enforce-eager"]


class Story:
    """What the steps learn and the later ones check (one SLMService's life)."""

    namespace: str = ""
    client_pod: str = "e2e-client"
    first_pods: dict[str, tuple[str, int]] = {}
    profile: dict[str, Any] = {}


story = Story()


def _json(e2e: E2E, *args: str) -> Any:
    return json.loads(e2e.cluster.kubectl(*args, "-o", "json", timeout=60).stdout)


def _slm(e2e: E2E) -> dict[str, Any]:
    return _json(e2e, "-n", story.namespace, "get", "slmservice", NAME)


def _model_pods(e2e: E2E) -> list[dict[str, Any]]:
    items = _json(e2e, "-n", story.namespace, "get", "pods", "-l", f"{SERVICE_LABEL}={NAME}")["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _wait_phase(e2e: E2E, phase: str, *, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = _slm(e2e)
        status = obj.get("status") or {}
        if status.get("phase") == "Failed":
            raise StopWaiting(f"SLMService Failed: {json.dumps(status.get('conditions'), indent=1)}")
        return obj if status.get("phase") == phase else None

    return wait_for(check, timeout=timeout, interval=3, message=f"SLMService {NAME} phase {phase}")


def _in_cluster(e2e: E2E, code: str, *, timeout: float = 120) -> str:
    """Run Python in the client pod (inside the cluster: the request never leaves it)."""
    return e2e.cluster.kubectl("-n", story.namespace, "exec", story.client_pod, "--", "python3", "-c", code,
                               timeout=timeout).stdout


def _slm_manifest(name: str, *, gpu: dict[str, Any], profiling: dict[str, Any]) -> dict[str, Any]:
    """An SLMService of the tiny model on one GPU; the engine runs eager (see PROFILER_ARGS)."""
    return {
        "apiVersion": "slm.pareto.dev/v1alpha1",
        "kind": "SLMService",
        "metadata": {"name": name, "namespace": story.namespace},
        "spec": {
            "model": MODEL,
            "servedModelName": name,
            "engine": {"args": ["--enforce-eager"]},
            "gpu": gpu,
            "workload": {"inputTokens": 32, "outputTokens": 32, "maxModelLen": 256},
            "profiling": profiling,
            "scale": {"gpus": 1},
        },
    }


def _completion_code(url: str, *, prompt: str, max_tokens: int) -> str:
    body = json.dumps({"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    return (
        "import json, urllib.request\n"
        f"req = urllib.request.Request({url!r}, data={body!r}.encode(), "
        f"headers={{'Content-Type': 'application/json'}})\n"
        "print(urllib.request.urlopen(req, timeout=120).read().decode())\n"
    )


def test_operator_runs_from_its_image_as_the_charts_service_account(e2e: E2E, tmp_path):
    repo, tag = e2e.images.operator.rsplit(":", 1)
    engine_repo, engine_tag = e2e.images.engine.rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag},
        # NB: two CPU cores per kind node: a production request (1 CPU per replica) would leave most
        # replicas unschedulable, and a memory request would also be the replica's limit, while
        # vLLM's CPU build keeps its KV cache (the plan's budget) in RAM.
        "operator": {"defaultEngineImage": e2e.images.engine,
                     "engineDefaults": {"cpu": "100m", "memory": "", "ephemeralStorage": "1Gi"}},
        "profiler": {"image": {"repository": engine_repo, "tag": engine_tag}, "extraArgs": PROFILER_ARGS,
                     "resources": {"cpu": "100m", "memory": "1Gi"}},
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    # NB: a leftover release of an earlier session is replaced, not reused: this session's image.
    e2e.cluster.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False, timeout=120)
    # ... and so are an earlier session's namespaces (their replicas would hold the GPUs), profiles
    # and profiler Jobs: this session measures.
    stale_ns = [n["metadata"]["name"] for n in _json(e2e, "get", "namespaces")["items"]
                if n["metadata"]["name"].startswith("e2e-")]
    if stale_ns:
        e2e.cluster.kubectl("delete", "namespace", *stale_ns, "--wait=true", timeout=300)
    if e2e.cluster.kubectl("get", "namespace", SYSTEM, check=False).returncode == 0:
        stale = [f"configmap/{c['metadata']['name']}" for c in _json(e2e, "-n", SYSTEM, "get", "configmaps")["items"]
                 if c["metadata"]["name"].startswith("slm-profile-")]
        stale += [f"job/{j['metadata']['name']}" for j in _json(e2e, "-n", SYSTEM, "get", "jobs")["items"]]
        if stale:
            e2e.cluster.kubectl("-n", SYSTEM, "delete", "--wait=true", *stale, timeout=120)
    e2e.cluster.helm("install", RELEASE, str(CHART), "-n", SYSTEM, "--create-namespace", "-f",
                     str(tmp_path / "values.yaml"), "--wait", "--timeout", "5m", timeout=360)
    pod = wait_for(lambda: next((p for p in _json(e2e, "-n", SYSTEM, "get", "pods", "-l",
                                                  "app.kubernetes.io/name=slm-operator")["items"] if _ready(p)), None),
                   timeout=180, interval=2, message="a Ready operator pod")
    container = pod["spec"]["containers"][0]
    assert container["image"] == e2e.images.operator
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    uid = e2e.cluster.kubectl("-n", SYSTEM, "exec", pod["metadata"]["name"], "--", "id", "-u").stdout.strip()
    assert uid == "65532", "the operator runs as the chart's non-root user"
    logs = e2e.cluster.kubectl("-n", SYSTEM, "logs", pod["metadata"]["name"]).stdout
    assert "Traceback" not in logs, logs[-3000:]
    print(f"[e2e] operator {pod['metadata']['name']} runs {container['image']} as uid {uid}")

    story.namespace = f"e2e-{secrets.token_hex(3)}"
    e2e.cluster.kubectl("create", "namespace", story.namespace)
    e2e.cluster.kubectl("label", "namespace", story.namespace, "pod-security.kubernetes.io/enforce=baseline")
    # The in-cluster client: the operator image has Python and nothing else to do here.
    e2e.cluster.kubectl("-n", story.namespace, "run", story.client_pod, f"--image={e2e.images.operator}",
                        "--image-pull-policy=Never", "--restart=Never", "--command", "--", "sleep", "7200")


def test_auto_profile_runs_real_vllm_in_a_profiler_job(e2e: E2E):
    manifest = _slm_manifest(NAME, gpu={"product": GPU_PRODUCT},
                             profiling={"mode": "auto", "batchSizes": [1, 2, 4]})
    e2e.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    job = wait_for(lambda: next(iter(_json(e2e, "-n", SYSTEM, "get", "jobs", "-l",
                                             "slm.pareto.dev/role=profiler")["items"]), None),
                   timeout=120, interval=2, message="the profiler Job")
    job_name = job["metadata"]["name"]

    def finished() -> str | None:
        status = _json(e2e, "-n", SYSTEM, "get", "job", job_name).get("status", {})
        kinds = {c["type"] for c in status.get("conditions", []) if c["status"] == "True"}
        if "Failed" in kinds:
            logs = e2e.cluster.kubectl("-n", SYSTEM, "logs", f"job/{job_name}", "--tail=60", check=False).stdout
            raise StopWaiting(f"profiler Job failed:\n{logs}")
        return "Complete" if "Complete" in kinds else None

    started = time.monotonic()
    wait_for(finished, timeout=1200, interval=5, message=f"profiler Job {job_name} to complete")
    logs = e2e.cluster.kubectl("-n", SYSTEM, "logs", f"job/{job_name}").stdout
    print(f"[e2e] profiler Job {job_name} completed in {time.monotonic() - started:.0f} s; last lines:\n"
          + "\n".join(logs.strip().splitlines()[-6:]))
    pod = _json(e2e, "-n", SYSTEM, "get", "pods", "-l", f"job-name={job_name}")["items"][0]
    assert pod["spec"]["nodeName"].endswith("-control-plane"), "a profile runs on the whole (unshared) GPU"
    cache = _json(e2e, "-n", SYSTEM, "get", "configmap", job_name)
    profile = json.loads(cache["data"][PROFILE_KEY])
    summary_keys = ("source", "engine", "batchSize", "replicasToSaturate", "tokensPerSecondPerGPU")
    print(f"[e2e] measured profile: {json.dumps({k: profile.get(k) for k in summary_keys})}")
    assert profile["source"] == "measured" and profile["engine"] == "vllm"
    assert profile["batchSize"] in (1, 2, 4)
    story.profile = profile


def _node_kind(node_name: str) -> str:
    """Which pose a kind node has (hack/kind-gpu-nodes.yaml): the control plane's GPUs are whole."""
    return "exclusive" if node_name.endswith("-control-plane") else "mps"


def _pods_by_uid(pods: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    return {
        p["metadata"]["name"]: (p["metadata"]["uid"], p["status"]["containerStatuses"][0]["restartCount"])
        for p in pods
    }


def test_the_plan_follows_the_measurement_and_the_service_turns_ready(e2e: E2E):
    obj = _wait_phase(e2e, "Ready", timeout=1200)
    status = obj["status"]
    assert status["profile"]["source"] == "measured"
    assert status["profile"]["batchSize"] == story.profile["batchSize"], "B* is the measured one"
    placement = status["placement"]
    # k comes from the measurement too; on a CPU two servers rarely beat one, and the plan says so.
    assert placement["replicasPerGPU"] == min(story.profile["replicasToSaturate"], 4)
    pods = _model_pods(e2e)
    assert len(pods) == placement["replicasPerGPU"] and all(_ready(p) for p in pods)
    for pod in pods:
        assert f"--max-num-seqs={story.profile['batchSize']}" in pod["spec"]["containers"][0]["args"]
        assert _node_kind(pod["spec"]["nodeName"]) == placement["mechanism"]
    table = e2e.cluster.kubectl("-n", story.namespace, "get", "slms").stdout
    print(f"[e2e] kubectl get slms:\n{table}")
    row = next(line for line in table.splitlines() if line.startswith(NAME)).split()
    assert "Ready" in row and str(story.profile["batchSize"]) in row
    story.first_pods = _pods_by_uid(pods)


def test_a_completion_goes_through_the_services_cluster_ip(e2e: E2E):
    wait_for(lambda: _ready(_json(e2e, "-n", story.namespace, "get", "pod", story.client_pod)), timeout=120,
             message="the client pod")
    ip = _json(e2e, "-n", story.namespace, "get", "service", NAME)["spec"]["clusterIP"]
    reply = json.loads(
        _in_cluster(e2e, _completion_code(f"http://{ip}/v1/completions", prompt="The operator", max_tokens=12))
    )
    text = reply["choices"][0]["text"]
    print(f"[e2e] completion through Service {NAME} ({ip}): {text!r} ({reply['usage']})")
    assert reply["model"] == NAME and reply["usage"]["completion_tokens"] > 0 and text.strip()


def test_scaling_out_while_the_operator_restarts_adds_a_group_and_keeps_ready_replicas(e2e: E2E):
    e2e.cluster.kubectl("-n", story.namespace, "patch", "slmservice", NAME, "--type=merge", "-p",
                        json.dumps({"spec": {"scale": {"gpus": 2}}}))
    # The operator pod is deleted while the new group rolls out: its successor must finish the
    # job without duplicating anything.
    wait_for(lambda: len(_json(e2e, "-n", story.namespace, "get", "statefulsets")["items"]) == 2, timeout=120,
             interval=2, message="a second GPU group's StatefulSet")
    deleted = {p["metadata"]["uid"] for p in _json(e2e, "-n", SYSTEM, "get", "pods", "-l",
                                                    "app.kubernetes.io/name=slm-operator")["items"]}
    e2e.cluster.kubectl("-n", SYSTEM, "delete", "pod", "-l", "app.kubernetes.io/name=slm-operator", "--wait=false")

    def converged() -> bool:
        placement = (_slm(e2e).get("status") or {}).get("placement") or {}
        pods = _model_pods(e2e)
        return (placement.get("gpus") == 2 and len(pods) == 2 * placement["replicasPerGPU"]
                and all(_ready(p) for p in pods) and _slm(e2e)["status"]["phase"] == "Ready")

    wait_for(converged, timeout=1200, interval=5, message="two Ready groups")
    pods = _model_pods(e2e)
    now = _pods_by_uid(pods)
    for name, before in story.first_pods.items():
        assert now.get(name) == before, f"{name} was restarted or replaced by the scale-out"
    assert {p["metadata"]["labels"][GROUP_LABEL] for p in pods} == {"0", "1"}
    sets = _json(e2e, "-n", story.namespace, "get", "statefulsets")["items"]
    assert sorted(s["metadata"]["name"] for s in sets) == [f"{NAME}-g0", f"{NAME}-g1"], "no duplicate groups"
    assert len(_json(e2e, "-n", story.namespace, "get", "services")["items"]) == 1
    jobs = _json(e2e, "-n", SYSTEM, "get", "jobs", "-l", "slm.pareto.dev/role=profiler")["items"]
    assert len(jobs) == 1, "the cached profile is reused: no second profiler Job"
    operator = next(p for p in _json(e2e, "-n", SYSTEM, "get", "pods",
                                     "-l", "app.kubernetes.io/name=slm-operator")["items"]
                    if _ready(p))
    assert operator["metadata"]["uid"] not in deleted, "the operator that converged is the new pod"
    print(f"[e2e] scaled out to {len(pods)} replicas in 2 groups; the operator pod was replaced by "
          f"{operator['metadata']['name']}")


def test_a_burst_is_spread_over_more_than_one_replica(e2e: E2E):
    pods = _model_pods(e2e)
    assert len(pods) >= 2
    ip = _json(e2e, "-n", story.namespace, "get", "service", NAME)["spec"]["clusterIP"]
    burst = (
        "import concurrent.futures, json, urllib.request\n"
        f"body = json.dumps({{'model': {NAME!r}, 'prompt': 'hello', 'max_tokens': 4}}).encode()\n"
        "def one(_):\n"
        f"    req = urllib.request.Request('http://{ip}/v1/completions', data=body, "
        f"headers={{'Content-Type': 'application/json'}})\n"
        "    return urllib.request.urlopen(req, timeout=120).status\n"
        "with concurrent.futures.ThreadPoolExecutor(16) as pool:\n"
        "    print(sorted(set(pool.map(one, range(48)))))\n"
    )
    def successes() -> dict[str, float]:
        counts = {}
        for pod in pods:
            metrics = _in_cluster(e2e, "import urllib.request; print(urllib.request.urlopen("
                                       f"'http://{pod['status']['podIP']}:8000/metrics').read().decode())")
            found = re.findall(r'^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$', metrics, re.M)
            counts[pod["metadata"]["name"]] = sum(float(m) for m in found)
        return counts

    # NB: the counters are cumulative (the earlier completion counts too): compare before and after.
    before = successes()
    assert _in_cluster(e2e, burst, timeout=300).strip() == "[200]"
    after = successes()
    served = {name: after[name] - before[name] for name in after}
    print(f"[e2e] burst requests served per replica (vllm:request_success_total): {served}")
    assert sum(served.values()) >= 48
    assert sum(1 for n in served.values() if n > 0) >= 2, served


def test_the_pod_monitors_selector_finds_every_replica_and_its_vllm_metrics(e2e: E2E):
    """What Prometheus would scrape with the chart's PodMonitor: the pods its selector picks, on the port
    it names, serve the vLLM metrics the packing board draws."""
    rendered = e2e.cluster.helm("template", RELEASE, str(CHART), "--namespace", SYSTEM, "--kube-version",
                                MIN_KUBE_VERSION, "--set", "monitoring.podMonitor.enabled=true").stdout
    (monitor,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    selector = ",".join(f"{k}={v}" for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    selected = _json(e2e, "-n", story.namespace, "get", "pods", "-l", selector)["items"]
    assert {p["metadata"]["name"] for p in selected} == {p["metadata"]["name"] for p in _model_pods(e2e)}
    packing = json.loads((CHART / "dashboards" / "packing.json").read_text())
    drawn = {re.sub(r"_(bucket|sum|count)$", "", name) for panel in packing["panels"] for t in panel["targets"]
             for name in re.findall(r"vllm:[a-z_:]+", t["expr"])}
    for pod in (p for p in selected if _ready(p)):
        (container,) = [c for c in pod["spec"]["containers"]
                        if endpoint["port"] in {port.get("name") for port in c.get("ports", ())}]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == endpoint["port"])
        text = _in_cluster(e2e, "import urllib.request; print(urllib.request.urlopen("
                                f"'http://{pod['status']['podIP']}:{port}{endpoint['path']}').read().decode())")
        scraped = parse_metrics(text)
        assert scraped.running is not None and scraped.kv_usage is not None, scraped.names
        assert (scraped.generation_tokens or 0) > 0 and (scraped.prompt_tokens or 0) > 0, "the burst above"
        exported = {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"^(vllm:[a-z_:]+)", text, re.M)}
        assert drawn <= exported, f"the packing board draws {sorted(drawn - exported)}, which vLLM does not export"
        print(f"[e2e] {pod['metadata']['name']}: {len(exported)} vllm: metrics on port {endpoint['port']} ({port}), "
              f"running={scraped.running}, kv={scraped.kv_usage}, generated={scraped.generation_tokens}")


def test_a_shared_gpu_group_starts_its_replicas_one_after_another(e2e: E2E):
    # k replicas on one MPS-shared GPU. k is the profile's: the measured one above is what a CPU
    # gives (usually 1), so this service states its numbers (profiling.mode static).
    manifest = _slm_manifest(SHARED_NAME, gpu={"product": GPU_PRODUCT, "sharing": "mps"}, profiling={
        "mode": "static",
        "static": {"batchSize": 4, "replicasPerGPU": 2, "memoryPerReplicaGiB": 1.5, "tokensPerSecondPerGPU": 1000},
    })
    e2e.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def ready_pods() -> list[dict[str, Any]] | None:
        items = _json(e2e, "-n", story.namespace, "get", "pods", "-l", f"{SERVICE_LABEL}={SHARED_NAME}")["items"]
        return items if len(items) == 2 and all(_ready(p) for p in items) else None

    pods = sorted(wait_for(ready_pods, timeout=900, interval=5, message=f"both replicas of {SHARED_NAME}"),
                  key=lambda p: p["metadata"]["name"])
    assert {p["spec"]["nodeName"] for p in pods} == {pods[0]["spec"]["nodeName"]}, "one group, one node"
    assert _node_kind(pods[0]["spec"]["nodeName"]) == "mps"
    # OrderedReady: replica 1 is created only once replica 0 is Ready (vLLM #55827).
    first, second = pods
    ready_at = next(c["lastTransitionTime"] for c in first["status"]["conditions"] if c["type"] == "Ready")
    assert second["metadata"]["creationTimestamp"] >= ready_at, (ready_at, second["metadata"]["creationTimestamp"])
    assert all("--max-num-seqs=4" in p["spec"]["containers"][0]["args"] for p in pods)
    print(f"[e2e] {SHARED_NAME}: {first['metadata']['name']} Ready at {ready_at}, "
          f"{second['metadata']['name']} created at {second['metadata']['creationTimestamp']}")


def test_deleting_the_slmservices_removes_every_child(e2e: E2E):
    for name in (NAME, SHARED_NAME):
        e2e.cluster.kubectl("-n", story.namespace, "delete", "slmservice", name, "--wait=true", timeout=300)

    def left() -> list[str]:
        found = []
        for kind in ("statefulsets", "services", "pods", "resourceclaims"):
            found += [f"{kind}/{o['metadata']['name']}" for o in _json(e2e, "-n", story.namespace, "get", kind, "-l",
                                                                       SERVICE_LABEL)["items"]]
        return found

    wait_for(lambda: not left(), timeout=300, interval=3, message="every child of the SLMServices to go")
    e2e.cluster.kubectl("delete", "namespace", story.namespace, "--wait=false")

"""The SLMService CRD on a real API server: what it refuses (with which message), defaults, status, explain.

Every invalid spec below has exactly one mistake, and the test asserts the field path and the
message a user sees from `kubectl apply`. Objects are sent with server-side dry-run unless a test
needs them stored.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kubetest import wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crd" / "slmservices.yaml"
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd(cluster) -> str:
    # NB: --force-conflicts: the chart's `helm install` in other tests may have created it first
    # (same content, another field manager).
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "crd/slmservices.slm.pareto.dev", "--timeout=60s")
    # Established can come a moment before the new schema is served by every handler; wait for it.
    wait_for(lambda: "maxInterTokenLatencyMs" in cluster.kubectl("explain", "slmservice.spec.slo", check=False).stdout,
             timeout=30, message="the SLMService schema to be served")
    return "slmservices.slm.pareto.dev"


def manifest(spec: dict[str, Any], *, name: str = "t", namespace: str) -> str:
    # NB: JSON (valid YAML) so that no YAML 1.1 surprise (y, no, 1e3) changes what is sent.
    return json.dumps({"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService",
                       "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def dry_run(cluster, namespace: str, spec: dict[str, Any]):
    return cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                           input=manifest(spec, namespace=namespace), check=False)


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


STATIC = {"batchSize": 64, "replicasPerGPU": 4, "memoryPerReplicaGiB": 6, "tokensPerSecondPerGPU": 40000}

# (id, spec, field path in the error, the exact message the user sees)
INVALID = [
    ("model-missing", {"workload": {"inputTokens": 10}}, "spec.model", "Required value"),
    ("model-empty", {"model": ""}, "spec.model", "spec.model in body should be at least 1 chars long"),
    ("model-whitespace", {"model": "facebook/opt 125m"}, "spec.model",
     "spec.model must not contain whitespace: use a hub id (org/name), a path, or pvc://claim/path"),
    ("revision-whitespace", {"model": "m", "revision": "main branch"}, "spec.revision",
     "spec.revision must not contain whitespace: use a branch, tag or commit hash"),
    ("served-name", {"model": "m", "servedModelName": "-opt"}, "spec.servedModelName",
     "spec.servedModelName must start and end with a letter or digit and contain only letters, digits, "
     "'-', '_', '.' and '/' (e.g. opt-125m or facebook/opt-125m)"),
    ("args-max-num-seqs", {"model": "m", "engine": {"args": ["--max-num-seqs=64"]}}, "spec.engine.args",
     "engine.args must not set --max-num-seqs: the operator runs every replica at the profiled Pareto batch "
     "size; to fix it yourself use profiling.static.batchSize (profiling.mode static) or limit profiling.batchSizes"),
    ("args-max-num-seqs-underscore", {"model": "m", "engine": {"args": ["--max_num_seqs", "64"]}}, "spec.engine.args",
     "engine.args must not set --max-num-seqs"),
    ("args-gpu-memory-utilization", {"model": "m", "engine": {"args": ["--gpu-memory-utilization", "0.5"]}},
     "spec.engine.args",
     "engine.args must not set --gpu-memory-utilization: the operator gives each replica its share of the GPU "
     "from the plan; use profiling.static.memoryPerReplicaGiB (profiling.mode static) to set it"),
    ("args-kv-cache-memory-bytes", {"model": "m", "engine": {"args": ["--kv-cache-memory-bytes=4G"]}},
     "spec.engine.args",
     "engine.args must not set --kv-cache-memory-bytes: the operator sizes the KV cache of each replica from "
     "the plan; use profiling.static.memoryPerReplicaGiB (profiling.mode static) to set it"),
    ("args-port", {"model": "m", "engine": {"args": ["--dtype=half", "--port", "9000"]}}, "spec.engine.args",
     "engine.args must not set --port: the operator owns the serving port; remove it and reach the model "
     "through the Service in status.endpoint"),
    ("args-model", {"model": "m", "engine": {"args": ["--model=facebook/opt-125m"]}}, "spec.engine.args",
     "engine.args must not set --model: use spec.model (and spec.revision to pin a commit)"),
    ("args-max-model-len", {"model": "m", "engine": {"args": ["--max-model-len=8192"]}}, "spec.engine.args",
     "engine.args must not set --max-model-len: use spec.workload.maxModelLen"),
    # Hostile spellings of owned flags: argparse takes unambiguous abbreviations, `--flag value`
    # pairs and underscores; each would silently override the plan.
    ("args-max-num-seqs-abbreviated", {"model": "m", "engine": {"args": ["--max-num-seq=4096"]}}, "spec.engine.args",
     "engine.args must not set --max-num-seqs"),
    ("args-max-num-seqs-abbreviated-pair", {"model": "m", "engine": {"args": ["--max_num_s", "4096"]}},
     "spec.engine.args", "engine.args must not set --max-num-seqs"),
    ("args-gpu-memory-abbreviated", {"model": "m", "engine": {"args": ["--gpu-memory-util=0.99"]}},
     "spec.engine.args", "engine.args must not set --gpu-memory-utilization"),
    ("args-port-abbreviated", {"model": "m", "engine": {"args": ["--por=1"]}}, "spec.engine.args",
     "engine.args must not set --port"),
    ("args-model-abbreviated", {"model": "m", "engine": {"args": ["--mode", "x"]}}, "spec.engine.args",
     "engine.args must not set --model"),
    ("model-looks-like-a-flag", {"model": "--help"}, "spec.model",
     "spec.model must not start with '-' (vLLM would read it as a flag): use a hub id (org/name), a path, "
     "or pvc://claim/path"),
    ("hf-token-twice", {"model": "m", "engine": {"hfTokenSecretRef": {"name": "hf"},
                                                   "env": [{"name": "HF_TOKEN", "value": "x"}]}},
     "spec.engine.env", "engine.env must not set HF_TOKEN when engine.hfTokenSecretRef is set: the operator sets "
     "HF_TOKEN from that Secret; remove one of the two"),
    ("api-key-twice", {"model": "m", "engine": {"apiKeySecretRef": {"name": "key"},
                                                  "env": [{"name": "VLLM_API_KEY", "value": "x"}]}},
     "spec.engine.env", "engine.env must not set VLLM_API_KEY when engine.apiKeySecretRef is set: the operator "
     "sets VLLM_API_KEY from that Secret; remove one of the two"),
    ("model-config-too-big", {"model": "m", "profiling": {"modelConfig": {f"k{i}": i for i in range(257)}}},
     "spec.profiling.modelConfig", "Too many: 257: must have at most 256 items"),
    ("network-policy-too-many-peers", {"model": "m", "networkPolicy": {"ingressFrom": [{"podSelector": {}}] * 17}},
     "spec.networkPolicy.ingressFrom", "must have at most 16 items"),
    ("env-duplicate", {"model": "m", "engine": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
     "spec.engine.env[1]", 'Duplicate value: {"name":"A"}'),
    ("env-name-with-equals", {"model": "m", "engine": {"env": [{"name": "A=1"}]}}, "spec.engine.env[0].name",
     "engine.env[].name must not contain '=': put the value in engine.env[].value"),
    ("hf-token-without-name", {"model": "m", "engine": {"hfTokenSecretRef": {"key": "token"}}},
     "spec.engine.hfTokenSecretRef.name", "Required value"),
    ("cpu-not-a-quantity", {"model": "m", "engine": {"resources": {"cpu": "two"}}}, "spec.engine.resources.cpu",
     "engine.resources.cpu must be a positive Kubernetes quantity such as 2, 1.5 or 500m"),
    ("memory-negative", {"model": "m", "engine": {"resources": {"memory": "-8Gi"}}}, "spec.engine.resources.memory",
     "engine.resources.memory must be a positive Kubernetes quantity such as 8Gi or 16000Mi"),
    ("gpu-product-with-space", {"model": "m", "gpu": {"product": "NVIDIA H100"}}, "spec.gpu.product",
     "gpu.product must be a node label value as in nvidia.com/gpu.product (e.g. NVIDIA-H100-80GB-HBM3): "
     "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"),
    ("resource-name-without-domain", {"model": "m", "gpu": {"resourceName": "gpu"}}, "spec.gpu.resourceName",
     "gpu.resourceName must be an extended resource name domain/name, e.g. nvidia.com/gpu"),
    ("sharing-unknown", {"model": "m", "gpu": {"sharing": "mig"}}, "spec.gpu.sharing",
     'Unsupported value: "mig": supported values: "auto", "dra-shares", "mps", "time-slicing", "dra", "exclusive"'),
    ("device-class-not-dns", {"model": "m", "gpu": {"deviceClassName": "GPU_Class"}}, "spec.gpu.deviceClassName",
     "gpu.deviceClassName must be a DeviceClass name (a DNS subdomain such as gpu.nvidia.com)"),
    ("workload-too-long", {"model": "m", "workload": {"inputTokens": 4000, "outputTokens": 256, "maxModelLen": 4096}},
     "spec.workload.maxModelLen",
     "workload.inputTokens + workload.outputTokens must not exceed workload.maxModelLen: raise maxModelLen or "
     "shorten the workload"),
    ("workload-zero-input", {"model": "m", "workload": {"inputTokens": 0}}, "spec.workload.inputTokens",
     "should be greater than or equal to 1"),
    ("itl-zero", {"model": "m", "slo": {"maxInterTokenLatencyMs": 0}}, "spec.slo.maxInterTokenLatencyMs",
     "should be greater than 0"),
    ("ttft-too-high", {"model": "m", "slo": {"maxTimeToFirstTokenMs": 700000}}, "spec.slo.maxTimeToFirstTokenMs",
     "should be less than or equal to 600000"),
    ("mode-unknown", {"model": "m", "profiling": {"mode": "measure"}}, "spec.profiling.mode",
     'Unsupported value: "measure": supported values: "auto", "estimate", "static", "skip"'),
    ("epsilon-one", {"model": "m", "profiling": {"epsilon": 1}}, "spec.profiling.epsilon",
     "profiling.epsilon must be strictly between 0 and 1, e.g. 0.1 for B* within 10% of the plateau throughput"),
    ("epsilon-zero", {"model": "m", "profiling": {"epsilon": 0.0}}, "spec.profiling.epsilon",
     "profiling.epsilon must be strictly between 0 and 1"),
    ("batch-sizes-duplicate", {"model": "m", "profiling": {"batchSizes": [8, 16, 8]}}, "spec.profiling.batchSizes[2]",
     "Duplicate value: 8"),
    ("batch-size-zero", {"model": "m", "profiling": {"batchSizes": [0, 8]}}, "spec.profiling.batchSizes[0]",
     "should be greater than or equal to 1"),
    ("static-missing", {"model": "m", "profiling": {"mode": "static"}}, "spec.profiling.static",
     "profiling.static is required when profiling.mode is static: give batchSize, replicasPerGPU, "
     "memoryPerReplicaGiB and tokensPerSecondPerGPU"),
    ("static-incomplete", {"model": "m", "profiling": {"mode": "static", "static": {"batchSize": 8}}},
     "spec.profiling.static.tokensPerSecondPerGPU", "Required value"),
    ("static-too-many-replicas",
     {"model": "m", "profiling": {"mode": "static", "static": {**STATIC, "replicasPerGPU": 65}}},
     "spec.profiling.static.replicasPerGPU", "should be less than or equal to 64"),
    ("exclusive-with-replicas",
     {"model": "m", "gpu": {"sharing": "exclusive"}, "profiling": {"mode": "static", "static": STATIC}},
     "spec.profiling.static.replicasPerGPU",
     "gpu.sharing exclusive gives every replica a whole GPU, so profiling.static.replicasPerGPU must be 1: set it "
     "to 1, or choose gpu.sharing auto, mps, time-slicing or dra to pack several replicas per GPU"),
    ("scale-empty", {"model": "m", "scale": {}}, "spec.scale",
     "set exactly one of scale.gpus (a fixed number of GPUs) or scale.targetTokensPerSecond (as many GPUs as "
     "that throughput needs)"),
    ("scale-both", {"model": "m", "scale": {"gpus": 2, "targetTokensPerSecond": 1000}}, "spec.scale",
     "scale.gpus and scale.targetTokensPerSecond are both set: a service sized by targetTokensPerSecond cannot "
     "also take a GPU count"),
    ("routing-picker-name", {"model": "m", "routing": {"inferencePool": {"endpointPicker": {"name": "EPP"}}}},
     "spec.routing.inferencePool.endpointPicker.name",
     "routing.inferencePool.endpointPicker.name must be a Service name: lowercase letters, digits and '-', "
     "starting with a letter (e.g. opt-epp)"),
    ("routing-picker-port", {"model": "m", "routing": {"inferencePool": {"endpointPicker": {"port": 0}}}},
     "spec.routing.inferencePool.endpointPicker.port", "should be greater than or equal to 1"),
    ("routing-failure-mode", {"model": "m", "routing": {"inferencePool": {"endpointPicker": {"failureMode": "Open"}}}},
     "spec.routing.inferencePool.endpointPicker.failureMode", 'Unsupported value: "Open"'),
    ("scale-min-above-max", {"model": "m", "scale": {"targetTokensPerSecond": 1000, "minGPUs": 4, "maxGPUs": 2}},
     "spec.scale.minGPUs", "scale.minGPUs must not exceed scale.maxGPUs: lower minGPUs or raise maxGPUs"),
    ("scale-bounds-with-fixed-gpus", {"model": "m", "scale": {"gpus": 2, "maxGPUs": 4}}, "spec.scale",
     "scale.minGPUs and scale.maxGPUs bound scale.targetTokensPerSecond: set them only together with "
     "targetTokensPerSecond (scale.gpus is already a fixed count)"),
    ("skip-with-throughput-target",
     {"model": "m", "profiling": {"mode": "skip"}, "scale": {"targetTokensPerSecond": 1000}},
     "spec.scale.targetTokensPerSecond",
     "scale.targetTokensPerSecond needs a profile to size the GPUs, and profiling.mode skip has none: use "
     "profiling.mode auto, estimate or static, or a fixed scale.gpus"),
    ("scale-gpus-negative", {"model": "m", "scale": {"gpus": -1}}, "spec.scale.gpus",
     "should be greater than or equal to 0"),
]


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 18


@pytest.mark.parametrize(("spec", "field", "message"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_spec_is_refused_with_a_clear_message(cluster, crd, namespace, spec, field, message) -> None:
    result = dry_run(cluster, namespace, spec)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    error = one_line(result.stderr)
    assert f"{field}: " in error, error
    assert message in error, error


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_is_accepted_and_defaulted_like_the_operator_does(cluster, crd, namespace, sample) -> None:
    from slm_operator.spec import parse_spec

    written = yaml.safe_load(sample.read_text())
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", str(sample))
    stored = json.loads(result.stdout)["spec"]
    # The API server only adds (defaults); nothing the user wrote is pruned or changed.
    assert merged_into(written["spec"], stored)
    assert stored["profiling"]["mode"] == written["spec"].get("profiling", {}).get("mode", "auto")
    # The operator's parser applies the same defaults, so it reads both forms the same way.
    assert parse_spec(stored) == parse_spec(written["spec"])


def merged_into(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and merged_into(v, big[k]) for k, v in small.items())
    return small == big


def test_minimal_spec_gets_every_default(cluster, crd, namespace) -> None:
    result = dry_run(cluster, namespace, {"model": "facebook/opt-125m", "engine": {"hfTokenSecretRef": {"name": "hf"}}})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"] == {
        "model": "facebook/opt-125m",
        "engine": {"hfTokenSecretRef": {"name": "hf", "key": "HF_TOKEN"}},
        "gpu": {"resourceName": "nvidia.com/gpu", "sharing": "auto", "deviceClassName": "gpu.nvidia.com"},
        "workload": {"inputTokens": 512, "outputTokens": 256},
        "profiling": {"mode": "auto", "epsilon": 0.1},
        "scale": {"gpus": 1},  # stored, so the scale subresource reads 1
    }


@pytest.mark.parametrize("spec", [
    {"model": "pvc://weights/opt-125m", "scale": {"gpus": 0}},
    {"model": "m", "workload": {"inputTokens": 3840, "outputTokens": 256, "maxModelLen": 4096}},
    {"model": "m", "engine": {"args": ["--model-impl=vllm", "--served-model-name", "x", "--enable-prefix-caching"]}},
    {"model": "m", "engine": {"resources": {"cpu": 2, "memory": "8Gi"}}},
    {"model": "m", "engine": {"resources": {"cpu": "500m"}}},
    {"model": "m", "gpu": {"sharing": "exclusive"},
     "profiling": {"mode": "static", "static": {**STATIC, "replicasPerGPU": 1}}},
    {"model": "m", "scale": {"targetTokensPerSecond": 5000, "minGPUs": 0, "maxGPUs": 8}},
    {"model": "m",
     "profiling": {"epsilon": 0.05, "batchSizes": [1, 4096], "modelConfig": {"hidden_size": 768, "x": [1]}}},
    {"model": "m", "engine": {"args": ["--max-num-batched-tokens=8192", "--max-num-batched-tokens", "4096",
                                       "--kv-cache-dtype=fp8", "--model-loader-extra-config={}", "--", "-x"]}},
    {"model": "m", "engine": {"hfTokenSecretRef": {"name": "hf"}, "apiKeySecretRef": {"name": "api"},
                              "env": [{"name": "HF_HOME", "value": "/cache"}]},
     "networkPolicy": {"ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                        "podSelector": {"matchLabels": {"app": "gateway"}}}]}},
    {"model": "m", "routing": {"inferencePool": {}}},
    {"model": "m", "routing": {"inferencePool": {"endpointPicker": {"name": "team-epp", "port": 65535,
                                                                    "failureMode": "FailOpen"}}}},
], ids=["scale-to-zero", "workload-exactly-max", "args-look-alikes", "int-cpu", "milli-cpu", "exclusive-one-replica",
        "target-with-bounds", "profiling-edges", "args-near-owned-flags", "secrets-and-network-policy",
        "routing-default-picker", "routing-own-picker"])
def test_boundary_specs_are_accepted(cluster, crd, namespace, spec) -> None:
    result = dry_run(cluster, namespace, spec)
    assert result.returncode == 0, one_line(result.stderr)
    assert merged_into(spec, json.loads(result.stdout)["spec"])


def status_example() -> dict[str, Any]:
    """A status shaped like the operator's (slm_operator.status) for a service that is serving."""
    return {
        "phase": "Ready",
        "observedGeneration": 1,
        "message": "4/4 replicas ready",
        "endpoint": "http://opt.ns.svc:8000/v1",
        "conditions": [{"type": "Available", "status": "True", "reason": "AllReplicasReady", "message": "4/4",
                        "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}],
        "profile": {"source": "measured", "engine": "vllm", "gpuProduct": "NVIDIA-H100-80GB-HBM3", "batchSize": 64,
                    "plateauTokensPerSecond": 9000.5, "tokensPerSecondPerGPU": 36002.0, "memoryPerReplicaGiB": 6.25,
                    "replicasToSaturate": 4, "interTokenLatencyMs": 21.5, "profileRef": "slm-system/profile-abc",
                    "measuredAt": "2025-01-01T00:00:00Z", "explanation": "B*=64: within 10% of the plateau.",
                    "progress": "done"},
        "placement": {"mechanism": "mps", "resourceName": "nvidia.com/gpu", "gpus": 1, "requestedGPUs": 1,
                      "replicasPerGPU": 4, "totalReplicas": 4, "readyReplicas": 4, "ready": "4/4",
                      "packingGuarantee": "node-slot-pool", "allocationPolicy": "packed", "slotsPerGPU": 4,
                      "plannedTokensPerSecond": 36002.0, "nodes": ["gpu-node-0"],
                      "groups": [{"name": "opt-g0", "index": 0, "node": "gpu-node-0", "replicas": 4, "readyReplicas": 4,
                                  "claim": "opt-g0-gpu"}]},
    }


def test_status_is_kept_whole_and_shown_in_columns(cluster, crd, namespace) -> None:
    cluster.kubectl("create", "-f", "-",
                    input=manifest({"model": "facebook/opt-125m", "gpu": {"product": "NVIDIA-H100-80GB-HBM3"}},
                                   name="opt", namespace=namespace))
    status = status_example()
    cluster.kubectl("patch", "slmservice", "opt", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))
    stored = json.loads(cluster.kubectl("get", "slmservice", "opt", "-n", namespace, "-o", "json").stdout)
    assert stored["status"] == status, "the API server pruned or changed status fields the operator writes"

    table = cluster.kubectl("get", "slms", "-n", namespace, "-o", "wide").stdout.splitlines()
    header = table[0].split()
    assert header == ["NAME", "MODEL", "GPUS", "REPLICAS/GPU", "BATCH", "TOK/S", "READY", "PHASE", "AGE",
                      "SHARING", "PACKING", "SOURCE", "GPU", "ENDPOINT", "MESSAGE"]
    # NB: kubectl aligns each column under its header; the message has spaces, so cut by position.
    starts = [m.start() for m in re.finditer(r"\S+", table[0])]
    cells = {name: table[1][start:end].strip()
             for name, start, end in zip(header, starts, [*starts[1:], None], strict=True)}
    assert cells["MESSAGE"] == status["message"]
    assert (cells["MODEL"], cells["GPUS"], cells["REPLICAS/GPU"], cells["BATCH"], cells["READY"], cells["PHASE"]) == (
        "facebook/opt-125m", "1", "4", "64", "4/4", "Ready")
    assert float(cells["TOK/S"]) == 36002.0
    assert (cells["SHARING"], cells["PACKING"], cells["SOURCE"], cells["GPU"], cells["ENDPOINT"]) == (
        "mps", "node-slot-pool", "measured", "NVIDIA-H100-80GB-HBM3", "http://opt.ns.svc:8000/v1")


def test_status_phase_is_an_enum(cluster, crd, namespace) -> None:
    cluster.kubectl("create", "-f", "-", input=manifest({"model": "m"}, name="phase", namespace=namespace))
    result = cluster.kubectl("patch", "slmservice", "phase", "-n", namespace, "--subresource=status", "--type=merge",
                             "-p", json.dumps({"status": {"phase": "Running"}}), check=False)
    assert result.returncode != 0
    assert 'status.phase: Unsupported value: "Running"' in one_line(result.stderr)


def test_spec_cannot_be_written_through_status(cluster, crd, namespace) -> None:
    cluster.kubectl("create", "-f", "-", input=manifest({"model": "m"}, name="sub", namespace=namespace))
    cluster.kubectl("patch", "slmservice", "sub", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"spec": {"model": "other"}, "status": {"phase": "Pending"}}))
    stored = json.loads(cluster.kubectl("get", "slmservice", "sub", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["model"] == "m" and stored["status"]["phase"] == "Pending"


def test_short_name_and_category(cluster, crd, namespace) -> None:
    cluster.kubectl("create", "-f", "-", input=manifest({"model": "m"}, name="named", namespace=namespace))
    for resource in ("slms", "slmservice", "slm"):
        assert cluster.kubectl("get", resource, "-n", namespace, "-o", "name").stdout.split() == [
            "slmservice.slm.pareto.dev/named"], resource


def field_description(path: str) -> str:
    node = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path.split("."):
        node = node["properties"][part]
    return node["description"]


@pytest.mark.parametrize("path",
                         ["spec.slo", "spec.slo.maxInterTokenLatencyMs", "spec.profiling.epsilon", "spec.scale"])
def test_kubectl_explain_shows_the_descriptions(cluster, crd, path) -> None:
    explained = one_line(cluster.kubectl("explain", f"slmservice.{path}").stdout)
    assert one_line(field_description(path)) in explained


def test_kubectl_explain_slo_lists_both_objectives(cluster, crd) -> None:
    explained = one_line(cluster.kubectl("explain", "slmservice.spec.slo").stdout)
    for field in ("maxInterTokenLatencyMs", "maxTimeToFirstTokenMs"):
        assert f"{field} <number> {one_line(field_description(f'spec.slo.{field}'))}" in explained


@pytest.mark.parametrize("name", ["a" * 46, "9lives", "dotted.name"])
def test_names_that_cannot_name_children_are_refused(cluster, crd, namespace, name):
    obj = {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": name},
           "spec": {"model": "facebook/opt-125m"}}
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj),
                             check=False)
    assert result.returncode != 0
    assert "metadata.name must be at most 45 characters" in result.stderr


# --- Hostile input: whatever the API server accepts, the reconcile handles ----------------------------

_FLAGS = ["--max-num-seqs", "--max_num_s", "--port", "--mod", "--model-impl", "--enforce-eager", "--dtype", "--",
          "--max-num-batched-tokens", "-x", "--kv-cache-memory-byte", "--gpu-memory-util"]
_TEXT = st.text(alphabet=st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=24)
_NUMBER = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False), _TEXT, st.none())


def _hostile_specs() -> st.SearchStrategy[dict[str, Any]]:
    args = st.lists(st.one_of(st.sampled_from(_FLAGS), st.builds(lambda f, v: f"{f}={v}", st.sampled_from(_FLAGS),
                                                                 _TEXT), _TEXT), max_size=6)
    env = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["HF_TOKEN", "VLLM_API_KEY", "A", "HOME"]),
                                          "value": _TEXT}), max_size=3, unique_by=lambda e: e["name"])
    model_config = st.dictionaries(st.sampled_from(["hidden_size", "num_hidden_layers", "num_attention_heads",
                                                    "num_key_value_heads", "vocab_size", "intermediate_size",
                                                    "torch_dtype", "model_type", "max_position_embeddings"]),
                                   _NUMBER, max_size=9)
    return st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(["facebook/opt-125m", "facebook/opt-1.3b", "-x", "acme/unknown"]), _TEXT)},
        optional={
            "servedModelName": _TEXT,
            "engine": st.fixed_dictionaries({}, optional={
                "args": args, "env": env, "hfTokenSecretRef": st.just({"name": "hf"}),
                "apiKeySecretRef": st.just({"name": "api"}),
                "resources": st.fixed_dictionaries({}, optional={"cpu": _NUMBER, "memory": _NUMBER})}),
            "gpu": st.fixed_dictionaries({}, optional={
                "product": st.sampled_from(["NVIDIA-H100-80GB-HBM3", "NVIDIA-L4", "", "ACME-X"]),
                "sharing": st.sampled_from(["auto", "dra-shares", "mps", "time-slicing", "dra", "exclusive", "mig"])}),
            "workload": st.fixed_dictionaries({}, optional={"inputTokens": _NUMBER, "outputTokens": _NUMBER,
                                                            "maxModelLen": _NUMBER}),
            "slo": st.fixed_dictionaries({}, optional={"maxInterTokenLatencyMs": _NUMBER}),
            "profiling": st.fixed_dictionaries({}, optional={
                "mode": st.sampled_from(["auto", "estimate", "static", "skip"]), "epsilon": _NUMBER,
                "batchSizes": st.lists(_NUMBER, max_size=4), "modelConfig": model_config,
                "static": st.fixed_dictionaries({"batchSize": _NUMBER, "replicasPerGPU": _NUMBER,
                                                 "memoryPerReplicaGiB": _NUMBER, "tokensPerSecondPerGPU": _NUMBER})}),
            "scale": st.fixed_dictionaries({}, optional={"gpus": _NUMBER, "targetTokensPerSecond": _NUMBER,
                                                         "maxGPUs": _NUMBER}),
            "routing": st.fixed_dictionaries({}, optional={"inferencePool": st.fixed_dictionaries({}, optional={
                "endpointPicker": st.fixed_dictionaries({}, optional={
                    "name": _TEXT, "port": _NUMBER,
                    "failureMode": st.one_of(st.sampled_from(["FailOpen", "FailClose"]), _TEXT)})})}),
        })


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(spec=_hostile_specs())
def test_specs_the_api_server_accepts_never_crash_the_reconcile(cluster, crd, namespace, spec) -> None:
    """The CRD is the first line: what it refuses never reaches the operator. Whatever it accepts
    (defaulted as stored) must end in a status — Failed with a reason, Pending, or deployed — never
    in an exception that kopf would retry forever."""
    from slm_operator.config import OperatorConfig
    from slm_operator.reconcile import OperatorState, reconcile_service
    from tests.unit.factories import node
    from tests.unit.fakes import FakeApi, gpu_index

    result = dry_run(cluster, namespace, spec)
    if result.returncode != 0:
        return
    stored = json.loads(result.stdout)
    api = FakeApi()
    api.secrets |= {"hf", "api"}
    body = {**stored, "metadata": {**stored["metadata"], "uid": "u", "generation": 1}}
    api.objects[("SLMService", namespace, "t")] = body
    with pytest.MonkeyPatch.context() as patch:
        api.install(patch)
        reconcile_service(state=OperatorState(config=OperatorConfig(profiler_runner="none")),
                          index=gpu_index(node("m", count=2, sharing="mps", replicas=4)), body=body,
                          spec=body["spec"], name="t", namespace=namespace, uid="u", meta=body["metadata"],
                          status={})
    status = body.get("status") or {}
    assert status.get("phase") in ("Failed", "Pending", "Deploying", "Degraded", "Ready"), (spec, status)
    if status["phase"] == "Failed":
        reasons = {c["reason"] for c in status["conditions"] if c["status"] == "False"}
        assert reasons & {"InvalidSpec", "UnknownModel", "UnknownGPUProduct", "InvalidModelConfig",
                           "NoFeasibleBatchSize"}, status

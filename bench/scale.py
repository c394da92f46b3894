#!/usr/bin/env python3
"""Scale benchmark: the operator on the real local control plane with many KWOK-simulated GPU nodes.

    .venv/bin/python bench/scale.py --nodes 200 --services 1000          # the issue's target scenario
    .venv/bin/python bench/scale.py --nodes 50 --services 200            # a quicker check
    .venv/bin/python bench/scale.py --nodes 200 --services 1000 --restart     # after a --keep run
    .venv/bin/python bench/scale.py --nodes 20 --startup-curve 0,2000,4000   # start-up vs watched objects
    .venv/bin/python bench/scale.py --print-nodes --nodes 200 > nodes.yaml   # only the node config

What it does: generates a node config (a mix of device-plugin MPS and time-slicing nodes, DRA nodes
and exclusive nodes; H100-80GB and L4), starts a dedicated cluster with ``hack/cluster.py up`` in
``--run-dir``, ``helm install``s charts/slm-operator into slm-system, runs ``python -m slm_operator``
as the chart's ServiceAccount (TokenRequest token) with ``SLM_PROFILER_RUNNER=none``, creates
``--services`` SLMServices with static profiles at ``--rate`` per second, and measures:

* apply → first StatefulSet and apply → Ready/Degraded latencies (client-side monotonic clock;
  StatefulSets and SLMServices are watched from the start),
* the operator's RSS (sampled; peak and at the end) and CPU seconds,
* steady-state API writes: apiserver_request_total write verbs over a window with the operator
  running, minus the same window with it stopped (KWOK and the controllers write too),
* GPUs used against a memory lower bound and the one-replica-per-GPU baseline.

``--restart`` starts the operator again on the cluster a ``--keep`` run left (kopf resumes every
service) and adds what that costs to the result file; ``--startup-curve`` times the operator's
start-up against ever more plain pods (bench/results/scale-startup-curve.json).

It prints numbers and writes ``bench/results/scale-<nodes>n-<services>s.json``; it asserts nothing
about timings. bench/README.md defines every number. Needs the cached binaries
(``bash hack/build-binaries.sh``); the cluster is stopped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import http.client
import json
import math
import os
import pathlib
import platform
import random
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hack.localcluster import config as nodeconfig  # noqa: E402
from hack.localcluster.api import Api  # noqa: E402

GROUP, VERSION, PLURAL = "slm.pareto.dev", "v1alpha1", "slmservices"
OPERATOR_NAMESPACE, RELEASE, ACCOUNT = "slm-system", "slm-operator", "slm-operator"
MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=slm-operator"
LABEL_SERVICE = "slm.pareto.dev/service"
H100, L4 = "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"
MEMORY_MIB = {H100: 81559, L4: 23034}
#: NB: the planner's own constant (planning/plan.py USABLE_MEMORY_FRACTION); the lower bound uses
#: the same usable memory per GPU the operator plans with, so the two are comparable.
USABLE_MEMORY_FRACTION = 0.92
TERMINAL_PHASES = ("Ready", "Degraded", "Failed")
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY", "CREATE", "UPDATE")
#: The APF FlowSchema the operator's ServiceAccount falls into: kube-system SAs (the controllers),
#: system:masters (admin, kwok), the scheduler and nodes all have their own.
OPERATOR_FLOW_SCHEMA = "service-accounts"
#: (resource, subresource) pairs only the operator writes. NB: Events are left out: the scheduler
#: keeps posting FailedScheduling for pods that stay Pending, so they are not the operator's alone.
OPERATOR_WRITTEN = {("slmservices", ""), ("slmservices", "status"), ("statefulsets", ""), ("services", ""),
                    ("resourceclaims", ""), ("configmaps", ""), ("jobs", "")}

#: Node kinds: (share of the nodes, product, sharing, device-plugin replicas). "Mostly MPS x4 and
#: time-slicing x4, some DRA, a few exclusive", H100-80GB and L4.
NODE_MIX: tuple[tuple[str, float, str, str, int], ...] = (
    ("h100-mps", 0.40, H100, "mps", 4),
    ("h100-ts", 0.25, H100, "time-slicing", 4),
    ("h100-dra", 0.10, H100, "dra", 1),
    ("h100-excl", 0.10, H100, "none", 1),
    ("l4-mps", 0.10, L4, "mps", 2),
    ("l4-excl", 0.05, L4, "none", 1),
)


@dataclasses.dataclass(frozen=True)
class SizeClass:
    """One kind of model with the static profile its services carry (per GPU product)."""

    name: str
    model: str
    share: float
    #: GPU product -> (batchSize, replicasPerGPU, memoryPerReplicaGiB, tokensPerSecondPerGPU)
    profiles: dict[str, tuple[int, int, float, float]]
    #: Share of this class's services that ask for an L4 instead of an H100.
    l4_share: float = 0.0
    sharing: str = "auto"


#: NB: memoryPerReplicaGiB is what one replica needs at B* (weights + KV cache for B* sequences +
#: runtime overhead); replicasPerGPU is the profile's k*, where throughput stops growing.
SIZE_CLASSES = (
    SizeClass("tiny-125m", "facebook/opt-125m", 0.30,
              {H100: (256, 4, 6.0, 40000.0), L4: (128, 2, 6.0, 9000.0)}, l4_share=0.25),
    SizeClass("small-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 0.25,
              {H100: (128, 4, 12.0, 24000.0), L4: (64, 2, 8.0, 5000.0)}, l4_share=0.2),
    SizeClass("medium-1.3b", "facebook/opt-1.3b", 0.22, {H100: (64, 2, 20.0, 12000.0)}),
    SizeClass("large-3b", "Qwen/Qwen2.5-3B-Instruct", 0.15, {H100: (48, 2, 30.0, 7000.0)}),
    SizeClass("xl-7b", "Qwen/Qwen2.5-7B-Instruct", 0.08, {H100: (32, 1, 40.0, 3500.0)}, sharing="exclusive"),
)
#: scale.gpus 1-3.
SCALE_MIX = ((1, 0.65), (2, 0.25), (3, 0.10))


def say(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------ generators


def apportion(*, total: int, shares: list[float]) -> list[int]:
    """Split ``total`` by ``shares`` (largest remainder), so counts always sum to ``total``."""
    raw = [total * s / sum(shares) for s in shares]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def node_config(*, nodes: int, gpus_per_node: int) -> dict[str, Any]:
    """The hack/cluster.py node config of the benchmark (format: hack/gpu-nodes.yaml)."""
    entries = []
    counts = apportion(total=nodes, shares=[kind[1] for kind in NODE_MIX])
    for (prefix, _, product, sharing, replicas), count in zip(NODE_MIX, counts, strict=True):
        for i in range(count):
            gpu: dict[str, Any] = {"product": product, "memoryMiB": MEMORY_MIB[product], "count": gpus_per_node,
                                   "sharing": sharing}
            if sharing in ("mps", "time-slicing"):
                gpu["replicas"] = replicas
            entries.append({"name": f"{prefix}-{i:03d}", "gpu": gpu})
    return {"defaults": {"cpu": "64", "memory": "512Gi", "pods": "110"}, "nodes": entries}


def service_manifests(*, services: int, namespaces: int, seed: int) -> list[dict[str, Any]]:
    """``services`` SLMServices with static profiles, spread over ``namespaces``; deterministic."""
    rng = random.Random(seed)
    manifests = []
    for i in range(services):
        size = rng.choices(SIZE_CLASSES, weights=[c.share for c in SIZE_CLASSES])[0]
        product = L4 if L4 in size.profiles and rng.random() < size.l4_share else H100
        batch, k, memory, tps = size.profiles[product]
        gpus = rng.choices([g for g, _ in SCALE_MIX], weights=[w for _, w in SCALE_MIX])[0]
        manifests.append({
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "SLMService",
            "metadata": {"name": f"svc-{i:05d}", "namespace": f"bench-{i % namespaces}",
                         "labels": {"bench.slm.pareto.dev/size": size.name}},
            "spec": {
                "model": size.model,
                "gpu": {"product": product, "sharing": size.sharing},
                "workload": {"inputTokens": 512, "outputTokens": 256},
                "profiling": {"mode": "static", "static": {"batchSize": batch, "replicasPerGPU": k,
                                                           "memoryPerReplicaGiB": memory,
                                                           "tokensPerSecondPerGPU": tps}},
                "scale": {"gpus": gpus},
            },
        })
    return manifests


# ------------------------------------------------------------------------------------ the cluster


class Cluster:
    """The dedicated cluster of the run dir: admin HTTPS connections, kubectl, helm."""

    def __init__(self, *, run_dir: pathlib.Path, bin_dir: pathlib.Path) -> None:
        self.run_dir, self.bin_dir = run_dir, bin_dir
        state = json.loads((run_dir / "state.json").read_text())
        self.server = state["server"]
        self.pids = {name: proc["pid"] for name, proc in state["processes"].items()}
        self.kubeconfig = run_dir / "kubeconfig"
        pki = run_dir / "pki"
        self.ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.api = Api(server=self.server, ca_cert=pki / "ca.crt", client_cert=pki / "admin.crt",
                       client_key=pki / "admin.key")
        self.host, port = self.server.removeprefix("https://").rsplit(":", 1)
        self.port = int(port)

    def connection(self, timeout: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return _run([str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args], input=input)

    def helm(self, *args: str) -> str:
        home = self.run_dir / "helm"
        env = os.environ | {f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}
        return _run([str(self.bin_dir / "helm"), "--kubeconfig", str(self.kubeconfig), *args], env=env)

    def list_all(self, path: str) -> list[dict[str, Any]]:
        """Every item of a collection, paged (so a list of thousands of pods is not one huge answer)."""
        items, token = [], ""
        while True:
            sep = "&" if "?" in path else "?"
            page = self.api.request("GET", f"{path}{sep}limit=500" + (f"&continue={token}" if token else ""),
                                    timeout=60)
            items += page["items"]
            token = page["metadata"].get("continue") or ""
            if not token:
                return items

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """The apiserver's counters we use, as {metric: [(labels, value)]}."""
        text = self.api.request("GET", "/metrics", timeout=60)
        wanted = ("apiserver_request_total", "apiserver_flowcontrol_dispatched_requests_total")
        out: dict[str, list[tuple[dict[str, str], float]]] = {w: [] for w in wanted}
        for line in text.splitlines():
            name = line.split("{", 1)[0]
            if name in out:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("{", 1)[1].rsplit("}", 1)[0]))
                out[name].append((labels, float(line.rsplit(" ", 1)[1])))
        return out


def _run(cmd: list[str], *, input: str | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, input=input, env=env, text=True, capture_output=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"scale: {' '.join(cmd[:4])} … failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def watch(*, cluster: Cluster, path: str, on_event: Callable[[str, dict[str, Any], float], None],
          stop: threading.Event, metadata_only: bool = False) -> None:
    """Stream a watch, calling ``on_event(type, object, monotonic time)``; resumes after timeouts."""
    accept = ("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
              if metadata_only else "application/json")
    resource_version = ""
    while not stop.is_set():
        query = "watch=true&allowWatchBookmarks=true&timeoutSeconds=120"
        sep = "&" if "?" in path else "?"
        url = f"{path}{sep}{query}" + (f"&resourceVersion={resource_version}" if resource_version else "")
        conn = cluster.connection(timeout=180)
        try:
            conn.request("GET", url, headers={"Accept": accept})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"watch {path}: HTTP {response.status} {response.read()[:200]!r}")
            for line in response:
                now = time.monotonic()
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    resource_version = ""  # NB: 410 Gone: start over; callers keep only first sightings
                    break
                resource_version = event["object"]["metadata"].get("resourceVersion", resource_version)
                if event["type"] != "BOOKMARK":
                    on_event(event["type"], event["object"], now)
                if stop.is_set():
                    break
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not stop.is_set():
                say(f"watch {path} interrupted ({type(exc).__name__}: {exc}); resuming")
                time.sleep(0.5)
        finally:
            conn.close()


# ------------------------------------------------------------------------------------ the operator


class Operator:
    """``python -m slm_operator`` as the chart's ServiceAccount, with its RSS and CPU sampled."""

    def __init__(self, *, cluster: Cluster, run_dir: pathlib.Path, retry_seconds: int) -> None:
        self.cluster, self.run_dir, self.retry_seconds = cluster, run_dir, retry_seconds
        self.proc: subprocess.Popen | None = None
        self.peak_rss_mib = 0.0
        self.rss_samples: list[tuple[float, float]] = []
        self._stop_sampling = threading.Event()

    def start(self) -> float:
        token = self.cluster.kubectl("create", "token", ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=4h").strip()
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        kubeconfig = self.run_dir / "operator-kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": ACCOUNT, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "local", "user": ACCOUNT}}],
        }))
        kubeconfig.chmod(0o600)
        port = _free_port()
        env = os.environ | {
            "KUBECONFIG": str(kubeconfig), "SLM_PROFILER_RUNNER": "none",
            "SLM_PROFILER_NAMESPACE": OPERATOR_NAMESPACE, "SLM_WORK_DIR": str(self.run_dir / "operator-work"),
            "SLM_RETRY_SECONDS": str(self.retry_seconds),
        }
        started = time.monotonic()
        log = open(self.run_dir / "operator.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slm_operator", "--liveness", f"http://127.0.0.1:{port}/healthz"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"scale: the operator exited with {self.proc.returncode}; see {self.run_dir}/operator.log")
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                        f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > 120:
                raise SystemExit("scale: the operator's liveness endpoint did not answer within 120 s")
            time.sleep(0.2)
        threading.Thread(target=self._sample, daemon=True).start()
        return time.monotonic() - started

    def _sample(self) -> None:
        while not self._stop_sampling.wait(0.5):
            rss = self.rss_mib()
            if rss is None:
                return
            self.peak_rss_mib = max(self.peak_rss_mib, rss)
            self.rss_samples.append((time.monotonic(), rss))

    def rss_mib(self) -> float | None:
        return proc_rss_mib(pid=self.proc.pid) if self.proc else None

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(pid=self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        self._stop_sampling.set()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def proc_rss_mib(*, pid: int) -> float | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def proc_cpu_seconds(*, pid: int) -> float:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ the run


class Tracker:
    """What the watches saw: per service, when its first StatefulSet came and its phase history."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.applied: dict[tuple[str, str], float] = {}
        self.first_child: dict[tuple[str, str], float] = {}
        self.first_terminal: dict[tuple[str, str], float] = {}
        self.phase: dict[tuple[str, str], str] = {}
        self.last_change = time.monotonic()
        self.events = collections.Counter()

    def on_statefulset(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), (meta.get("labels") or {}).get(LABEL_SERVICE, ""))
        with self.lock:
            self.events[f"statefulset {kind}"] += 1
            self.last_change = now
            if kind == "ADDED":
                self.first_child.setdefault(key, now)

    def on_service(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        phase = (obj.get("status") or {}).get("phase") or ""
        with self.lock:
            self.events[f"slmservice {kind}"] += 1
            if self.phase.get(key) != phase:
                self.last_change = now
            self.phase[key] = phase
            if phase in TERMINAL_PHASES:
                self.first_terminal.setdefault(key, now)

    def terminal(self) -> int:
        with self.lock:
            return sum(1 for p in self.phase.values() if p in TERMINAL_PHASES)


def create_services(*, cluster: Cluster, manifests: list[dict[str, Any]], rate: float, batch: int,
                    tracker: Tracker) -> float:
    """POST the SLMServices in batches, paced to ``rate`` per second; returns the seconds it took."""
    conn = cluster.connection()
    started = time.monotonic()
    for start in range(0, len(manifests), batch):
        due = started + start / rate
        time.sleep(max(0.0, due - time.monotonic()))
        for manifest in manifests[start:start + batch]:
            ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
            body = json.dumps(manifest)
            t = time.monotonic()
            conn.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", body=body,
                         headers={"Content-Type": "application/json", "Accept": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 201:
                raise SystemExit(f"scale: creating {ns}/{name}: HTTP {response.status}: {payload[:300]!r}")
            with tracker.lock:
                tracker.applied[(ns, name)] = t
        if (start // batch) % 10 == 0:
            say(f"  created {min(start + batch, len(manifests))}/{len(manifests)}; "
                f"{len(tracker.first_child)} have a StatefulSet, {tracker.terminal()} Ready/Degraded/Failed")
    conn.close()
    return time.monotonic() - started


def percentile(*, values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_summary(*, values: list[float]) -> dict[str, Any]:
    return {"count": len(values), **{f"p{q}": _r(percentile(values=values, q=q)) for q in (50, 90, 99)},
            "max": _r(max(values) if values else None)}


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def write_counts(*, metrics: dict[str, list[tuple[dict[str, str], float]]]) -> collections.Counter:
    """Write requests per (verb, resource, subresource) from apiserver_request_total."""
    counts: collections.Counter = collections.Counter()
    for labels, value in metrics["apiserver_request_total"]:
        if labels.get("verb") in WRITE_VERBS:
            counts[(labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))] += value
    return counts


def flow_schema_requests(*, metrics: dict[str, list[tuple[dict[str, str], float]]], schema: str) -> float:
    return sum(v for labels, v in metrics["apiserver_flowcontrol_dispatched_requests_total"]
               if labels.get("flow_schema") == schema)


def window(*, cluster: Cluster, seconds: float, operator: Operator | None) -> dict[str, Any]:
    """Write requests (and the operator's requests and CPU) over ``seconds`` of doing nothing."""
    before, cpu0, t0 = cluster.metrics(), operator.cpu_seconds() if operator else 0.0, time.monotonic()
    time.sleep(seconds)
    after, cpu1, elapsed = cluster.metrics(), operator.cpu_seconds() if operator else 0.0, time.monotonic() - t0
    delta = write_counts(metrics=after)
    delta.subtract(write_counts(metrics=before))
    per_minute = 60.0 / elapsed
    by_resource = collections.Counter()
    for (verb, resource, sub), value in delta.items():
        if value:
            by_resource[f"{verb} {resource}{'/' + sub if sub else ''}"] += value * per_minute
    ours = sum(v for (_, resource, sub), v in delta.items() if (resource, sub) in OPERATOR_WRITTEN)
    operator_requests = (flow_schema_requests(metrics=after, schema=OPERATOR_FLOW_SCHEMA)
                         - flow_schema_requests(metrics=before, schema=OPERATOR_FLOW_SCHEMA))
    return {
        "seconds": round(elapsed, 1),
        "writesPerMinute": round(sum(delta.values()) * per_minute, 1),
        "writesPerMinuteOnOperatorResources": round(ours * per_minute, 1),
        "writesPerMinuteByResource": {k: round(v, 1) for k, v in by_resource.most_common()},
        "operatorFlowSchemaRequestsPerMinute": round(operator_requests * per_minute, 1),
        "operatorCpuPercent": round(100 * (cpu1 - cpu0) / elapsed, 2) if operator else None,
    }


def packing(*, services: list[dict[str, Any]], pods: list[dict[str, Any]], claims: list[dict[str, Any]],
            nodes: dict[str, Any]) -> dict[str, Any]:
    """GPUs used, the one-replica-per-GPU baseline and the memory lower bound (bench/README.md)."""
    used = baseline = requested = 0
    need_gib: dict[str, float] = collections.defaultdict(float)
    k_star_gpus: dict[str, float] = collections.defaultdict(float)
    mechanisms: collections.Counter = collections.Counter()
    budget_of: dict[tuple[str, str], float] = {}
    for svc in services:
        spec, status = svc["spec"], svc.get("status") or {}
        placement = status.get("placement") or {}
        static = spec["profiling"]["static"]
        product = spec["gpu"]["product"]
        requested += spec["scale"]["gpus"]
        used += placement.get("gpus", 0)
        replicas = placement.get("totalReplicas", 0)
        baseline += replicas
        need_gib[product] += replicas * static["memoryPerReplicaGiB"]
        k_star_gpus[product] += replicas / static["replicasPerGPU"]
        if placement:
            mechanisms[f"{placement.get('mechanism')} k={placement.get('replicasPerGPU')}"] += placement.get("gpus", 0)
        budget = re.search(r"([0-9.]+) GiB each", status.get("message") or "")
        if budget:
            budget_of[(svc["metadata"]["namespace"], svc["metadata"]["name"])] = float(budget.group(1))
    usable = {p: MEMORY_MIB[p] / 1024 * USABLE_MEMORY_FRACTION for p in MEMORY_MIB}
    lower = {p: math.ceil(need_gib[p] / usable[p] - 1e-9) for p in need_gib}
    k_bound = {p: math.ceil(k_star_gpus[p] - 1e-9) for p in k_star_gpus}

    # What the pods really occupy: device-plugin slots (ceil(slots / slots per GPU) physical GPUs at
    # least) and DRA devices; and, per node, the memory budgets promised to the replicas on it.
    slots: dict[str, int] = collections.Counter()
    promised: dict[str, float] = collections.defaultdict(float)
    pending = 0
    for pod in pods:
        node = pod["spec"].get("nodeName")
        if not node:
            pending += 1
            continue
        limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
        slots[node] += int(limits.get("nvidia.com/gpu", 0))
        key = (pod["metadata"]["namespace"], pod["metadata"]["labels"].get(LABEL_SERVICE, ""))
        promised[node] += budget_of.get(key, 0.0)
    devices = {(r["pool"], r["device"]) for c in claims
               for r in (((c.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or ()}
    occupied: dict[str, int] = collections.Counter()
    overcommitted = []
    for name, node in nodes.items():
        gpu = node["gpu"]
        if gpu["sharing"] == "dra":
            count = sum(1 for pool, _ in devices if pool == name)
        else:
            count = math.ceil(slots.get(name, 0) / gpu.get("replicas", 1))
        occupied[gpu["product"]] += count
        capacity = gpu["count"] * usable[gpu["product"]]
        if promised.get(name, 0.0) > capacity * 1.001:
            overcommitted.append({"node": name, "sharing": gpu["sharing"], "promisedGiB": round(promised[name], 1),
                                  "usableGiB": round(capacity, 1)})
    lower_total = sum(lower.values())
    return {
        "gpusRequested": requested,
        "gpusUsed": used,
        "baselineGpus": baseline,
        "memoryLowerBoundGpus": lower_total,
        "memoryLowerBoundGpusByProduct": lower,
        "packingRatio": _r(used / lower_total if lower_total else None),
        "kStarBoundGpus": sum(k_bound.values()),
        "kStarBoundGpusByProduct": k_bound,
        "physicalGpusOccupied": sum(occupied.values()),
        "physicalGpusOccupiedByProduct": dict(occupied),
        "physicalPackingRatio": _r(sum(occupied.values()) / lower_total if lower_total else None),
        "gpusSavedVsBaseline": baseline - used,
        "placedGpusByMechanism": dict(mechanisms.most_common()),
        "podsPending": pending,
        "podsBound": len(pods) - pending,
        "nodesWithMemoryOvercommit": len(overcommitted),
        "memoryOvercommitExamples": sorted(overcommitted, key=lambda o: -o["promisedGiB"] / o["usableGiB"])[:5],
    }


def machine() -> dict[str, Any]:
    meminfo = dict(line.split(":", 1) for line in pathlib.Path("/proc/meminfo").read_text().splitlines())
    model = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "memoryGiB": round(int(meminfo["MemTotal"].split()[0]) / 1024**2, 1),
            "cpu": model, "python": platform.python_version(), "loadavg": list(os.getloadavg())}


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, text=True, capture_output=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "dirtyFiles": len(git("status", "--porcelain").splitlines())}


def component_usage(*, cluster: Cluster) -> dict[str, Any]:
    return {name: {"rssMiB": _r(proc_rss_mib(pid=pid), 1), "cpuSeconds": _r(proc_cpu_seconds(pid=pid), 1)}
            for name, pid in cluster.pids.items()}


def wait_settled(*, tracker: Tracker, total: int | None, operator: Operator, started: float, timeout: float,
                 quiet: float) -> str:
    """Until all ``total`` services are Ready/Degraded/Failed, or nothing moved for ``quiet`` s; says which.

    With ``total`` None only the second counts (after a restart every service already has a phase).
    """
    deadline, last_report = started + timeout, time.monotonic()
    while time.monotonic() < deadline:
        done = tracker.terminal()
        if done == total:
            return "all Ready/Degraded/Failed"
        if time.monotonic() - tracker.last_change > quiet:
            return f"no phase change or StatefulSet event for {quiet:.0f} s"
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            say(f"  {len(tracker.first_child)}/{total or len(tracker.phase)} have a StatefulSet, {done} Ready/Degraded/Failed; "
                f"operator RSS {operator.rss_mib():.0f} MiB")
        time.sleep(1)
    return f"TIMED OUT after {timeout:.0f} s (still changing)"


def drain(*, operator: Operator, limit: float = 300) -> float:
    """Wait until the operator used < 5 % of a core over 5 s (kopf's queues empty); returns seconds waited."""
    started, cpu_prev = time.monotonic(), operator.cpu_seconds()
    while time.monotonic() - started < limit:
        time.sleep(5)
        cpu_now = operator.cpu_seconds()
        if cpu_now - cpu_prev < 0.25:
            break
        cpu_prev = cpu_now
    return round(time.monotonic() - started, 1)


def load_summary(*, cluster: Cluster, operator: Operator, before: dict[str, Any], cpu0: float,
                 usage0: dict[str, Any], tracker: Tracker) -> dict[str, Any]:
    """What the operator and the cluster spent between ``before`` and now."""
    after = cluster.metrics()
    writes = write_counts(metrics=after)
    writes.subtract(write_counts(metrics=before))
    return {
        "operatorCpuSeconds": round(operator.cpu_seconds() - cpu0, 1),
        "writes": round(sum(writes.values())),
        "writesByResource": {f"{verb} {resource}{'/' + sub if sub else ''}": round(v)
                             for (verb, resource, sub), v in writes.most_common(20) if v},
        "operatorFlowSchemaRequests": round(flow_schema_requests(metrics=after, schema=OPERATOR_FLOW_SCHEMA)
                                            - flow_schema_requests(metrics=before, schema=OPERATOR_FLOW_SCHEMA)),
        "componentCpuSeconds": {name: _r(usage["cpuSeconds"] - usage0[name]["cpuSeconds"], 1)
                                for name, usage in component_usage(cluster=cluster).items()},
        "watchEvents": dict(tracker.events),
    }


def snapshot(*, cluster: Cluster, nodes_doc: dict[str, Any]) -> dict[str, Any]:
    """Phases, the reasons of conditions that are not True, and packing, from one list of each kind."""
    services = cluster.list_all(f"/apis/{GROUP}/{VERSION}/{PLURAL}")
    pods = cluster.list_all(f"/api/v1/pods?labelSelector={MANAGED_BY_SELECTOR}")
    claims = cluster.list_all("/apis/resource.k8s.io/v1/resourceclaims")
    phases = collections.Counter((s.get("status") or {}).get("phase") or "(none)" for s in services)
    reasons = collections.Counter(
        f"{c['type']}={c['reason']}" for s in services for c in (s.get("status") or {}).get("conditions") or ()
        if c.get("status") != "True" and c["type"] in ("Planned", "Available"))
    return {"phases": dict(phases.most_common()), "notTrueConditions": dict(reasons.most_common(10)),
            "packing": packing(services=services, pods=pods, claims=claims,
                               nodes={n["name"]: n for n in nodes_doc["nodes"]})}


def steady_state(*, cluster: Cluster, operator: Operator, seconds: float) -> dict[str, Any]:
    """Windows with the operator running, then stopped; RSS is read before it stops."""
    say(f"steady state: {seconds:.0f} s window with the operator running")
    with_operator = window(cluster=cluster, seconds=seconds, operator=operator)
    rss, peak, components = operator.rss_mib(), operator.peak_rss_mib, component_usage(cluster=cluster)
    operator.stop()
    say(f"steady state: {seconds:.0f} s window with the operator stopped (baseline)")
    time.sleep(5)
    without_operator = window(cluster=cluster, seconds=seconds, operator=None)
    return {
        "operatorRssMiB": _r(rss, 1), "operatorPeakRssMiB": _r(peak, 1), "components": components,
        "steadyState": {"withOperator": with_operator, "withoutOperator": without_operator},
        "steadyStateWritesPerMinute": round(with_operator["writesPerMinute"] - without_operator["writesPerMinute"], 1),
        "steadyStateOperatorResourceWritesPerMinute": with_operator["writesPerMinuteOnOperatorResources"],
        "steadyStateOperatorRequestsPerMinute": with_operator["operatorFlowSchemaRequestsPerMinute"],
    }


def start_watches(*, cluster: Cluster, tracker: Tracker, stop: threading.Event) -> None:
    for path, handler, metadata_only in (
        (f"/apis/apps/v1/statefulsets?labelSelector={MANAGED_BY_SELECTOR}", tracker.on_statefulset, True),
        (f"/apis/{GROUP}/{VERSION}/{PLURAL}", tracker.on_service, False),
    ):
        threading.Thread(target=watch, daemon=True, kwargs=dict(
            cluster=cluster, path=path, on_event=handler, stop=stop, metadata_only=metadata_only)).start()
    time.sleep(1)


HEADLINE = ("nodes", "services", "packingRatio", "gpusUsed", "memoryLowerBoundGpus", "baselineGpus",
            "applyToChildrenP50Seconds", "applyToChildrenP99Seconds", "operatorRssMiB", "operatorPeakRssMiB",
            "steadyStateWritesPerMinute", "steadyStateOperatorResourceWritesPerMinute",
            "steadyStateOperatorRequestsPerMinute", "phases")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200, help="simulated GPU nodes (default: %(default)s)")
    parser.add_argument("--services", type=int, default=1000, help="SLMServices to create (default: %(default)s)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: %(default)s)")
    parser.add_argument("--namespaces", type=int, default=10, help="namespaces to spread services over (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=10.0, help="SLMServices created per second (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=25, help="SLMServices per batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the service mix (default: %(default)s)")
    parser.add_argument("--window", type=float, default=60.0, help="steady-state window seconds (default: %(default)s)")
    parser.add_argument("--quiet", type=float, default=60.0,
                        help="settled when every service is Ready/Degraded/Failed, or nothing changed for this many seconds (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting to settle after (default: %(default)s s)")
    parser.add_argument("--retry-seconds", type=int, default=30, help="SLM_RETRY_SECONDS of the operator (default: the operator's own 30)")
    parser.add_argument("--run-dir", default=str(REPO / ".run" / "bench-scale"))
    parser.add_argument("--bin", default=None, help="binaries folder (default: `hack/build-binaries.sh --check`)")
    parser.add_argument("--out", default=None, help="result file (default: bench/results/scale-<nodes>n-<services>s.json)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running (stop it with hack/cluster.py down)")
    parser.add_argument("--restart", action="store_true",
                        help="on the cluster a --keep run left: start the operator again (resume of every service), "
                             "wait until it settles, measure the steady state, and add it to the result file")
    parser.add_argument("--startup-curve", default=None, metavar="N,N,...",
                        help="instead: operator start-up time against N plain pods (e.g. 0,1000,2000,4000) on a "
                             "--nodes cluster; writes bench/results/scale-startup-curve.json")
    parser.add_argument("--print-nodes", action="store_true", help="print the node config and exit")
    args = parser.parse_args(argv)

    nodes_doc = node_config(nodes=args.nodes, gpus_per_node=args.gpus_per_node)
    if args.print_nodes:
        print(yaml.safe_dump(nodes_doc, sort_keys=False), end="")
        return 0
    nodeconfig.parse_config(data=nodes_doc, source="generated node config")  # NB: fail before starting anything
    bin_dir = pathlib.Path(args.bin or _run(["bash", str(REPO / "hack" / "build-binaries.sh"), "--check"]).splitlines()[-1])
    run_dir = pathlib.Path(args.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(args.out or REPO / "bench" / "results" / f"scale-{args.nodes}n-{args.services}s.json")
    cluster_py = [sys.executable, str(REPO / "hack" / "cluster.py")]
    stop = threading.Event()
    operator: Operator | None = None
    if args.startup_curve:
        out = pathlib.Path(args.out or REPO / "bench" / "results" / "scale-startup-curve.json")
        nodes_doc["defaults"]["pods"] = "1000"
    try:
        if args.startup_curve:
            result = startup_curve(args=args, run_dir=run_dir, bin_dir=bin_dir, nodes_doc=nodes_doc,
                                   cluster_py=cluster_py, counts=[int(n) for n in args.startup_curve.split(",")])
        elif args.restart:
            result = json.loads(out.read_text())
            # NB: kept apart from the first run's numbers: right after a restart the operator is not
            # in a steady state at all (start-up at scale is the subject here).
            result["restart"] = restart(args=args, run_dir=run_dir, bin_dir=bin_dir, nodes_doc=nodes_doc, stop=stop)
        else:
            result, operator = fresh(args=args, run_dir=run_dir, bin_dir=bin_dir, nodes_doc=nodes_doc, stop=stop,
                                     cluster_py=cluster_py)
    finally:
        stop.set()
        if operator is not None:
            operator.stop()
        if not args.keep:
            subprocess.run(cluster_py + ["down", "--run-dir", str(run_dir)], check=False)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.startup_curve:
        shown: Any = result["points"]
    else:
        source = result["restart"] if args.restart else result
        shown = {k: source[k] for k in HEADLINE if k in source}
    print(json.dumps(shown, indent=2))
    say(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


def fresh(*, args: argparse.Namespace, run_dir: pathlib.Path, bin_dir: pathlib.Path, nodes_doc: dict[str, Any],
          stop: threading.Event, cluster_py: list[str]) -> tuple[dict[str, Any], Operator | None]:
    """A new cluster, the chart, the operator, the services; then latencies, packing, steady state."""
    config_path = run_dir / "scale-nodes.yaml"
    config_path.write_text(yaml.safe_dump(nodes_doc, sort_keys=False))
    manifests = service_manifests(services=args.services, namespaces=args.namespaces, seed=args.seed)
    result: dict[str, Any] = {
        "benchmark": "bench/scale.py", "startedAt": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nodes": args.nodes, "services": args.services, "gpusPerNode": args.gpus_per_node,
        "clusterGpus": args.nodes * args.gpus_per_node,
        "settings": {k: getattr(args, k) for k in ("namespaces", "rate", "batch", "seed", "window", "quiet", "timeout",
                                                   "retry_seconds")},
        "machine": machine(), "git": git_commit(),
    }
    wall0 = time.monotonic()
    say(f"cluster up: {args.nodes} nodes x {args.gpus_per_node} GPUs ({run_dir})")
    t = time.monotonic()
    subprocess.run(cluster_py + ["up", "--bin", str(bin_dir), "--config", str(config_path), "--run-dir", str(run_dir),
                                 "--timeout", "600"], check=True)
    walls = {"clusterUpSeconds": round(time.monotonic() - t, 1)}
    cluster = Cluster(run_dir=run_dir, bin_dir=bin_dir)

    t = time.monotonic()
    cluster.helm("install", RELEASE, str(REPO / "charts" / "slm-operator"), "-n", OPERATOR_NAMESPACE,
                 "--create-namespace", "--wait", "--timeout", "300s")
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    walls["helmInstallSeconds"] = round(time.monotonic() - t, 1)
    for i in range(min(args.namespaces, args.services)):
        cluster.kubectl("create", "namespace", f"bench-{i}")

    operator = Operator(cluster=cluster, run_dir=run_dir, retry_seconds=args.retry_seconds)
    walls["operatorStartSeconds"] = round(operator.start(), 1)
    say(f"operator running (pid {operator.proc.pid}, RSS {operator.rss_mib():.0f} MiB)")
    idle = window(cluster=cluster, seconds=15, operator=operator)
    say(f"idle operator with {args.nodes} nodes: {idle['operatorCpuPercent']} % CPU")

    tracker = Tracker()
    start_watches(cluster=cluster, tracker=tracker, stop=stop)
    metrics0, cpu0, usage0 = cluster.metrics(), operator.cpu_seconds(), component_usage(cluster=cluster)
    say(f"creating {args.services} SLMServices at {args.rate}/s in batches of {args.batch}")
    t_apply = time.monotonic()
    walls["createSeconds"] = round(create_services(cluster=cluster, manifests=manifests, rate=args.rate,
                                                   batch=args.batch, tracker=tracker), 1)
    how = wait_settled(tracker=tracker, total=len(manifests), operator=operator, started=t_apply,
                       timeout=args.timeout, quiet=args.quiet)
    walls["applyToSettledSeconds"] = round(time.monotonic() - t_apply, 1)
    walls["applyToAllChildrenSeconds"] = _r(max(tracker.first_child.values()) - t_apply if tracker.first_child else None, 1)
    walls["applyToAllTerminalSeconds"] = _r(
        max(tracker.first_terminal.values()) - t_apply if len(tracker.first_terminal) == len(manifests) else None, 1)
    result["settled"] = how
    say(f"settled: {how}, {walls['applyToSettledSeconds']} s after the first create")
    # NB: let kopf drain what it still has queued (diff-base annotations, Events) before the window.
    walls["drainSeconds"] = drain(operator=operator)
    result["load"] = load_summary(cluster=cluster, operator=operator, before=metrics0, cpu0=cpu0, usage0=usage0,
                                  tracker=tracker)
    result |= snapshot(cluster=cluster, nodes_doc=nodes_doc)
    to_child = [tracker.first_child[k] - t for k, t in tracker.applied.items() if k in tracker.first_child]
    to_terminal = [tracker.first_terminal[k] - t for k, t in tracker.applied.items() if k in tracker.first_terminal]
    result["applyToChildren"] = latency_summary(values=to_child)
    result["applyToReadyOrDegraded"] = latency_summary(values=to_terminal)
    result |= steady_state(cluster=cluster, operator=operator, seconds=args.window)
    result["steadyState"]["idleBeforeLoad"] = idle
    result["applyToChildrenP50Seconds"] = result["applyToChildren"]["p50"]
    result["applyToChildrenP99Seconds"] = result["applyToChildren"]["p99"]
    for key in ("packingRatio", "baselineGpus", "gpusUsed", "memoryLowerBoundGpus"):
        result[key] = result["packing"][key]
    walls["totalSeconds"] = round(time.monotonic() - wall0, 1)
    result["wallTimes"] = walls
    result["machine"]["loadavgAtEnd"] = list(os.getloadavg())
    return result, operator


def restart(*, args: argparse.Namespace, run_dir: pathlib.Path, bin_dir: pathlib.Path, nodes_doc: dict[str, Any],
            stop: threading.Event) -> dict[str, Any]:
    """The operator started again over the services a --keep run left: resume cost, then steady state."""
    if subprocess.run([sys.executable, str(REPO / "hack" / "cluster.py"), "status", "--run-dir", str(run_dir)],
                      capture_output=True).returncode != 0:
        raise SystemExit(f"scale: --restart needs the cluster a --keep run left in {run_dir}; it is not running")
    cluster = Cluster(run_dir=run_dir, bin_dir=bin_dir)
    tracker = Tracker()
    start_watches(cluster=cluster, tracker=tracker, stop=stop)
    metrics0, usage0 = cluster.metrics(), component_usage(cluster=cluster)
    operator = Operator(cluster=cluster, run_dir=run_dir, retry_seconds=args.retry_seconds)
    started = time.monotonic()
    operator.start()
    say(f"operator restarted (pid {operator.proc.pid}); waiting for it to settle")
    try:
        how = wait_settled(tracker=tracker, total=None, operator=operator, started=started,
                           timeout=args.timeout, quiet=args.quiet)
        drained = drain(operator=operator)
        result: dict[str, Any] = {
            "startedAt": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settled": how, "restartToSettledSeconds": round(time.monotonic() - started, 1), "drainSeconds": drained,
            "machine": machine(),
            "resume": load_summary(cluster=cluster, operator=operator, before=metrics0, cpu0=0.0, usage0=usage0,
                                   tracker=tracker),
        }
        result |= snapshot(cluster=cluster, nodes_doc=nodes_doc)
        result |= steady_state(cluster=cluster, operator=operator, seconds=args.window)
    finally:
        operator.stop()
    return result


def startup_curve(*, args: argparse.Namespace, run_dir: pathlib.Path, bin_dir: pathlib.Path,
                  nodes_doc: dict[str, Any], cluster_py: list[str], counts: list[int]) -> dict[str, Any]:
    """Operator start → first StatefulSet of a new SLMService, with ever more plain pods in the cluster.

    kopf watches every pod (the GPU inventory index), so each pod is an object the operator must
    take in at start-up before any handler runs; this isolates how that cost grows.
    """
    config_path = run_dir / "scale-nodes.yaml"
    config_path.write_text(yaml.safe_dump(nodes_doc, sort_keys=False))
    subprocess.run(cluster_py + ["up", "--bin", str(bin_dir), "--config", str(config_path), "--run-dir", str(run_dir),
                                 "--timeout", "600"], check=True)
    cluster = Cluster(run_dir=run_dir, bin_dir=bin_dir)
    cluster.helm("install", RELEASE, str(REPO / "charts" / "slm-operator"), "-n", OPERATOR_NAMESPACE,
                 "--create-namespace", "--wait", "--timeout", "300s")
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    for ns in ("bench-pods", "bench-0"):
        cluster.kubectl("create", "namespace", ns)
    node_names = [n["name"] for n in nodes_doc["nodes"]]
    probe = service_manifests(services=1, namespaces=1, seed=args.seed)[0]
    probe["spec"] |= {"model": "facebook/opt-125m", "gpu": {"product": H100, "sharing": "mps"}, "scale": {"gpus": 1}}
    probe["spec"]["profiling"]["static"] = {"batchSize": 256, "replicasPerGPU": 4, "memoryPerReplicaGiB": 6,
                                            "tokensPerSecondPerGPU": 40000}
    conn, made, points = cluster.connection(), 0, []
    for count in counts:
        say(f"start-up curve: {count} plain pods")
        while made < count:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"filler-{made:05d}"},
                   "spec": {"nodeName": node_names[made % len(node_names)],
                            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}
            conn.request("POST", "/api/v1/namespaces/bench-pods/pods", body=json.dumps(pod),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                raise SystemExit(f"scale: creating a filler pod: HTTP {response.status}")
            made += 1
        while cluster.api.get("/api/v1/namespaces/bench-pods/pods?fieldSelector=status.phase%3DPending&limit=1")["items"]:
            time.sleep(1)
        objects = sum(len(cluster.list_all(path)) for path in (
            "/api/v1/pods", "/api/v1/nodes", "/apis/apps/v1/statefulsets", f"/apis/{GROUP}/{VERSION}/{PLURAL}",
            "/apis/resource.k8s.io/v1/resourceslices", "/apis/resource.k8s.io/v1/resourceclaims"))
        operator = Operator(cluster=cluster, run_dir=run_dir, retry_seconds=args.retry_seconds)
        started = time.monotonic()
        operator.start()
        name = f"probe-{count}"
        body = probe | {"metadata": {"name": name, "namespace": "bench-0"}}
        cluster.api.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/bench-0/{PLURAL}", body=body)
        seconds = None
        while time.monotonic() - started < args.timeout:
            try:
                cluster.api.get(f"/apis/apps/v1/namespaces/bench-0/statefulsets/{name}-g0")
                seconds = round(time.monotonic() - started, 1)
                break
            except Exception:
                time.sleep(0.5)
        points.append({"plainPods": count, "watchedObjects": objects, "secondsToFirstStatefulSet": seconds,
                       "operatorCpuSeconds": round(operator.cpu_seconds(), 1),
                       "operatorPeakRssMiB": _r(operator.peak_rss_mib, 1), "loadavg": list(os.getloadavg())})
        say(f"  {points[-1]}")
        operator.stop()
    conn.close()
    return {"benchmark": "bench/scale.py --startup-curve", "nodes": args.nodes, "points": points,
            "machine": machine(), "git": git_commit()}


if __name__ == "__main__":
    sys.exit(main())

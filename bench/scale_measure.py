"""The scale benchmark's measurements: what the watches saw, the API server's counters, packing.

Every number of the result JSON is computed here; bench/README.md defines each. The cluster is
read as admin through the harness's standard-library client (:class:`hack.localcluster.api.Api`),
the operator through :class:`hack.localcluster.operator.OperatorProcess`.
"""

from __future__ import annotations

import collections
import datetime
import http.client
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.scale_workload import MEMORY_MIB
from hack.localcluster import processes
from hack.localcluster.api import Api
from hack.localcluster.controlplane import RunDir
from hack.localcluster.operator import OperatorProcess
from slm_operator.constants import (
    API_VERSION,
    GPU_RESOURCE,
    GROUP,
    LABEL_SERVICE,
    MANAGED_BY_SELECTOR,
    PLURAL,
    USABLE_MEMORY_FRACTION,
)
from slm_operator.status import CAPACITY_REASONS

REPO = pathlib.Path(__file__).resolve().parent.parent
SERVICES_PATH = f"/apis/{GROUP}/{API_VERSION}/{PLURAL}"
TERMINAL_PHASES = ("Ready", "Degraded", "Failed")
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY", "CREATE", "UPDATE")
#: The APF FlowSchema the operator's ServiceAccount falls into: kube-system SAs (the controllers),
#: system:masters (admin, kwok), the scheduler and nodes all have their own.
OPERATOR_FLOW_SCHEMA = "service-accounts"
#: (resource, subresource) pairs only the operator writes. NB: Events are left out: the scheduler
#: keeps posting FailedScheduling for pods that stay Pending, so they are not the operator's alone.
OPERATOR_WRITTEN = {(PLURAL, ""), (PLURAL, "status"), ("statefulsets", ""), ("services", ""),
                    ("resourceclaims", ""), ("configmaps", ""), ("jobs", "")}
#: The fields of a result printed at the end of a run.
HEADLINE = ("nodes", "services", "packingRatio", "gpusUsed", "memoryLowerBoundGpus", "baselineGpus",
            "applyToChildrenP50Seconds", "applyToChildrenP99Seconds", "operatorRssMiB", "operatorPeakRssMiB",
            "steadyStateWritesPerMinute", "steadyStateOperatorResourceWritesPerMinute",
            "steadyStateOperatorRequestsPerMinute", "phases", "servicesStuck", "restartFirstReconcileSeconds")

Metrics = dict[str, list[tuple[dict[str, str], float]]]


def say(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ------------------------------------------------------------------------------------ watches


class Tracker:
    """What the watches saw: per service, when its first StatefulSet came and its phase history."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.applied: dict[tuple[str, str], float] = {}
        self.first_child: dict[tuple[str, str], float] = {}
        self.first_terminal: dict[tuple[str, str], float] = {}
        self.phase: dict[tuple[str, str], str] = {}
        self.last_change = time.monotonic()
        self.events: collections.Counter[str] = collections.Counter()

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


def watch(*, api: Api, path: str, on_event: Callable[[str, dict[str, Any], float], None],
          stop: threading.Event, metadata_only: bool = False) -> None:
    """Stream a watch, calling ``on_event(type, object, monotonic time)``; resumes after timeouts."""
    accept = ("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
              if metadata_only else "application/json")
    resource_version = ""
    while not stop.is_set():
        query = "watch=true&allowWatchBookmarks=true&timeoutSeconds=120"
        sep = "&" if "?" in path else "?"
        url = f"{path}{sep}{query}" + (f"&resourceVersion={resource_version}" if resource_version else "")
        conn = api.connection(timeout=180)
        try:
            conn.request("GET", url, headers={"Accept": accept})
            response = conn.getresponse()
            if response.status in (429, 500, 503, 504):
                # NB: a just-created resource's watch cache answers 429 "storage is (re)initializing"
                # for a moment: wait as asked and watch again, instead of losing the watch for good.
                say(f"watch {path}: HTTP {response.status}; retrying")
                response.read()
                time.sleep(1)
                continue
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


def start_watches(*, api: Api, tracker: Tracker, stop: threading.Event) -> None:
    """Watch the operator's StatefulSets (metadata only) and every SLMService, in daemon threads."""
    for path, handler, metadata_only in (
        (f"/apis/apps/v1/statefulsets?labelSelector={MANAGED_BY_SELECTOR}", tracker.on_statefulset, True),
        (SERVICES_PATH, tracker.on_service, False),
    ):
        threading.Thread(target=watch, daemon=True, kwargs=dict(
            api=api, path=path, on_event=handler, stop=stop, metadata_only=metadata_only)).start()
    time.sleep(1)


def wait_settled(*, tracker: Tracker, total: int | None, operator: OperatorProcess, started: float, timeout: float,
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
            say(f"  {len(tracker.first_child)}/{total or len(tracker.phase)} have a StatefulSet, "
                f"{done} Ready/Degraded/Failed; operator RSS {operator.rss_mib() or 0:.0f} MiB")
        time.sleep(1)
    return f"TIMED OUT after {timeout:.0f} s (still changing)"


def drain(*, operator: OperatorProcess, limit: float = 300) -> float:
    """Wait until the operator used < 5 % of a core over 5 s (kopf's queues empty); returns seconds waited."""
    started, cpu_prev = time.monotonic(), operator.cpu_seconds()
    while time.monotonic() - started < limit:
        time.sleep(5)
        cpu_now = operator.cpu_seconds()
        if cpu_now - cpu_prev < 0.25:
            break
        cpu_prev = cpu_now
    return round(time.monotonic() - started, 1)


# ---------------------------------------------------------------------------- API server counters


def apiserver_metrics(*, api: Api) -> Metrics:
    """The apiserver's counters we use, as {metric: [(labels, value)]}."""
    text = api.request("GET", "/metrics", timeout=60)
    wanted = ("apiserver_request_total", "apiserver_flowcontrol_dispatched_requests_total")
    out: Metrics = {w: [] for w in wanted}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in out:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("{", 1)[1].rsplit("}", 1)[0]))
            out[name].append((labels, float(line.rsplit(" ", 1)[1])))
    return out


def write_counts(*, metrics: Metrics) -> collections.Counter[tuple[str, str, str]]:
    """Write requests per (verb, resource, subresource) from apiserver_request_total."""
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for labels, value in metrics["apiserver_request_total"]:
        if labels.get("verb") in WRITE_VERBS:
            counts[(labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))] += value
    return counts


def flow_schema_requests(*, metrics: Metrics, schema: str) -> float:
    return sum(v for labels, v in metrics["apiserver_flowcontrol_dispatched_requests_total"]
               if labels.get("flow_schema") == schema)


def window(*, api: Api, seconds: float, operator: OperatorProcess | None) -> dict[str, Any]:
    """Write requests (and the operator's requests and CPU) over ``seconds`` of doing nothing."""
    before, cpu0, t0 = apiserver_metrics(api=api), operator.cpu_seconds() if operator else 0.0, time.monotonic()
    time.sleep(seconds)
    after, cpu1 = apiserver_metrics(api=api), operator.cpu_seconds() if operator else 0.0
    elapsed = time.monotonic() - t0
    delta = write_counts(metrics=after)
    delta.subtract(write_counts(metrics=before))
    per_minute = 60.0 / elapsed
    by_resource: collections.Counter[str] = collections.Counter()
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


def component_usage(*, run_dir: str | pathlib.Path) -> dict[str, Any]:
    """RSS and CPU seconds of each control-plane process ``hack/cluster.py up`` recorded in ``run_dir``."""
    recorded = (RunDir(run_dir).read_state() or {"processes": {}})["processes"]
    return {name: {"rssMiB": rounded(processes.rss_mib(pid=proc["pid"]), 1),
                   "cpuSeconds": rounded(processes.cpu_seconds(pid=proc["pid"]), 1)}
            for name, proc in recorded.items()}


def load_summary(*, api: Api, run_dir: str | pathlib.Path, operator: OperatorProcess, before: Metrics, cpu0: float,
                 usage0: dict[str, Any], tracker: Tracker) -> dict[str, Any]:
    """What the operator and the cluster spent between ``before`` and now."""
    after = apiserver_metrics(api=api)
    writes = write_counts(metrics=after)
    writes.subtract(write_counts(metrics=before))
    return {
        "operatorCpuSeconds": round(operator.cpu_seconds() - cpu0, 1),
        "writes": round(sum(writes.values())),
        "writesByResource": {f"{verb} {resource}{'/' + sub if sub else ''}": round(v)
                             for (verb, resource, sub), v in writes.most_common(20) if v},
        "operatorFlowSchemaRequests": round(flow_schema_requests(metrics=after, schema=OPERATOR_FLOW_SCHEMA)
                                            - flow_schema_requests(metrics=before, schema=OPERATOR_FLOW_SCHEMA)),
        "componentCpuSeconds": {name: rounded(usage["cpuSeconds"] - usage0[name]["cpuSeconds"], 1)
                                for name, usage in component_usage(run_dir=run_dir).items()},
        "watchEvents": dict(tracker.events),
    }


def steady_state(*, api: Api, run_dir: str | pathlib.Path, operator: OperatorProcess,
                 seconds: float) -> dict[str, Any]:
    """Windows with the operator running, then stopped; RSS is read before it stops."""
    say(f"steady state: {seconds:.0f} s window with the operator running")
    with_operator = window(api=api, seconds=seconds, operator=operator)
    rss, peak, components = operator.rss_mib(), operator.peak_rss_mib, component_usage(run_dir=run_dir)
    operator.stop()
    say(f"steady state: {seconds:.0f} s window with the operator stopped (baseline)")
    time.sleep(5)
    without_operator = window(api=api, seconds=seconds, operator=None)
    return {
        "operatorRssMiB": rounded(rss, 1), "operatorPeakRssMiB": rounded(peak, 1), "components": components,
        "steadyState": {"withOperator": with_operator, "withoutOperator": without_operator},
        "steadyStateWritesPerMinute": round(with_operator["writesPerMinute"] - without_operator["writesPerMinute"], 1),
        "steadyStateOperatorResourceWritesPerMinute": with_operator["writesPerMinuteOnOperatorResources"],
        "steadyStateOperatorRequestsPerMinute": with_operator["operatorFlowSchemaRequestsPerMinute"],
    }


# ------------------------------------------------------------------------------- latency, packing


def percentile(*, values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_summary(*, values: list[float]) -> dict[str, Any]:
    return {"count": len(values), **{f"p{q}": rounded(percentile(values=values, q=q)) for q in (50, 90, 99)},
            "max": rounded(max(values) if values else None)}


def packing(*, services: list[dict[str, Any]], pods: list[dict[str, Any]], claims: list[dict[str, Any]],
            nodes: dict[str, Any]) -> dict[str, Any]:
    """GPUs used, the one-replica-per-GPU baseline and the memory lower bound (bench/README.md)."""
    used = baseline = requested = 0
    need_gib: dict[str, float] = collections.defaultdict(float)
    k_star_gpus: dict[str, float] = collections.defaultdict(float)
    mechanisms: collections.Counter[str] = collections.Counter()
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
    slots: collections.Counter[str] = collections.Counter()
    promised: dict[str, float] = collections.defaultdict(float)
    pending = 0
    for pod in pods:
        node = pod["spec"].get("nodeName")
        if not node:
            pending += 1
            continue
        limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
        slots[node] += int(limits.get(GPU_RESOURCE, 0))
        key = (pod["metadata"]["namespace"], pod["metadata"]["labels"].get(LABEL_SERVICE, ""))
        promised[node] += budget_of.get(key, 0.0)
    devices = {(r["pool"], r["device"]) for c in claims
               for r in (((c.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or ()}
    occupied: collections.Counter[str] = collections.Counter()
    overcommitted = []
    for name, node in nodes.items():
        gpu = node["gpu"]
        if gpu["sharing"] in ("dra", "dra-shares"):  # NB: distinct devices, shared or whole
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
        "packingRatio": rounded(used / lower_total if lower_total else None),
        "kStarBoundGpus": sum(k_bound.values()),
        "kStarBoundGpusByProduct": k_bound,
        "physicalGpusOccupied": sum(occupied.values()),
        "physicalGpusOccupiedByProduct": dict(occupied),
        "physicalPackingRatio": rounded(sum(occupied.values()) / lower_total if lower_total else None),
        "gpusSavedVsBaseline": baseline - used,
        "placedGpusByMechanism": dict(mechanisms.most_common()),
        "podsPending": pending,
        "podsBound": len(pods) - pending,
        "nodesWithMemoryOvercommit": len(overcommitted),
        "memoryOvercommitExamples": sorted(overcommitted, key=lambda o: -o["promisedGiB"] / o["usableGiB"])[:5],
    }


def snapshot(*, api: Api, nodes_doc: dict[str, Any]) -> dict[str, Any]:
    """Phases, the reasons of conditions that are not True, and packing, from one list of each kind."""
    services = api.list_all(SERVICES_PATH)
    pods = api.list_all(f"/api/v1/pods?labelSelector={MANAGED_BY_SELECTOR}")
    claims = api.list_all("/apis/resource.k8s.io/v1/resourceclaims")
    phases = collections.Counter((s.get("status") or {}).get("phase") or "(none)" for s in services)
    reasons = collections.Counter(
        f"{c['type']}={c['reason']}" for s in services for c in (s.get("status") or {}).get("conditions") or ()
        if c.get("status") != "True" and c["type"] in ("Planned", "Available"))
    stuck = stuck_services(services)
    return {"phases": dict(phases.most_common()), "notTrueConditions": dict(reasons.most_common(10)),
            "servicesStuck": len(stuck), "stuckServices": stuck[:10],
            "packing": packing(services=services, pods=pods, claims=claims,
                               nodes={n["name"]: n for n in nodes_doc["nodes"]})}


def stuck_services(services: list[dict[str, Any]]) -> list[str]:
    """Settled services neither serving (Ready, Degraded) nor Pending for GPU capacity with a
    message: ``namespace/name phase reason`` of each (a Deploying one has a pod no node takes)."""
    stuck = []
    for service in services:
        status = service.get("status") or {}
        phase = status.get("phase") or "(none)"
        planned = next((c for c in status.get("conditions") or () if c.get("type") == "Planned"), {})
        if phase in ("Ready", "Degraded") or (phase == "Pending" and planned.get("reason") in CAPACITY_REASONS
                                               and status.get("message")):
            continue
        meta = service["metadata"]
        stuck.append(f"{meta['namespace']}/{meta['name']} {phase} {planned.get('reason') or ''}".strip())
    return sorted(stuck)


def first_reconcile_seconds(*, log_path: pathlib.Path, offset: int, started_at: float) -> float | None:
    """Seconds from ``started_at`` (wall clock) to the first line at or after byte ``offset`` of the
    operator's log where a reconcile handler ran (succeeded or failed); ``None`` without one."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        for raw in log:
            line = raw.decode(errors="replace")
            if "Handler 'reconcile" in line or "slm_operator.reconcile: planned " in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return round(stamp.timestamp() - started_at, 1)
    return None


# ---------------------------------------------------------------------------------- the machine


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

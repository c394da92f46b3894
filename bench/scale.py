#!/usr/bin/env python3
"""Scale benchmark: the operator on the real local control plane with many KWOK-simulated GPU nodes.

    .venv/bin/python bench/scale.py --nodes 200 --services 1000          # the issue's target scenario
    .venv/bin/python bench/scale.py --nodes 50 --services 200            # a quicker check
    .venv/bin/python bench/scale.py --nodes 200 --services 1000 --restart     # after a --keep run
    .venv/bin/python bench/scale.py --nodes 20 --startup-curve 0,2000,4000   # start-up vs watched objects
    .venv/bin/python bench/scale.py --nodes 20 --startup-curve 0,1000,2000 --startup-objects statefulsets
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
start-up against ever more plain pods (bench/results/scale-startup-curve.json), or with
``--startup-objects statefulsets`` empty StatefulSets labelled as ours
(bench/results/scale-startup-curve-statefulsets.json).

It prints numbers and writes ``bench/results/scale-<nodes>n-<services>s.json``; it asserts nothing
about timings. bench/README.md defines every number. Needs the cached binaries
(``bash hack/build-binaries.sh``); the cluster is stopped at the end unless ``--keep``.

The parts: the workload is bench/scale_workload.py, the measurements bench/scale_measure.py; the
cluster and the operator are the harness's (hack/localcluster/cluster.py, hack/localcluster/operator.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import threading
import time
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import scale_measure as measure  # noqa: E402
from bench.scale_measure import say  # noqa: E402
from bench.scale_workload import NODE_SHARINGS, node_config, probe_manifest, service_manifests  # noqa: E402
from hack.localcluster import config as nodeconfig  # noqa: E402
from hack.localcluster.api import Api  # noqa: E402
from hack.localcluster.cluster import (  # noqa: E402
    Cluster,
    CommandFailed,
    cluster_script,
    find_binaries,
    start_cluster,
    stop_cluster,
)
from hack.localcluster.operator import (  # noqa: E402
    OperatorError,
    OperatorProcess,
    install_chart,
    serviceaccount_kubeconfig,
)
from slm_operator.constants import LABEL_MANAGED_BY, MANAGED_BY, PLURAL, group_name  # noqa: E402


class Bench:
    """One run's cluster and the operators it started (stopped at the end whatever happens)."""

    def __init__(self, *, args: argparse.Namespace, run_dir: pathlib.Path, bin_dir: pathlib.Path,
                 nodes_doc: dict[str, Any]) -> None:
        self.args, self.run_dir, self.bin_dir, self.nodes_doc = args, run_dir, bin_dir, nodes_doc
        self.stop = threading.Event()
        self.operators: list[OperatorProcess] = []

    def start_cluster(self) -> Cluster:
        """A new cluster of the generated nodes in the run dir, the chart installed."""
        config_path = self.run_dir / "scale-nodes.yaml"
        config_path.write_text(yaml.safe_dump(self.nodes_doc, sort_keys=False))
        return start_cluster(bin_dir=self.bin_dir, run_dir=self.run_dir, config=config_path, fresh=False,
                             timeout=None, step_timeout=600, capture=False)

    def operator(self, cluster: Cluster) -> OperatorProcess:
        """The operator as the chart's ServiceAccount, not profiling (every service has a static profile)."""
        kubeconfig = serviceaccount_kubeconfig(cluster, path=self.run_dir / "operator-kubeconfig")
        operator = OperatorProcess(
            kubeconfig=kubeconfig, work_dir=self.run_dir / "operator-work", log_path=self.run_dir / "operator.log",
            extra_env={"SLM_PROFILER_RUNNER": "none", "SLM_RETRY_SECONDS": str(self.args.retry_seconds)},
            liveness_timeout=120, sample_rss=True)
        self.operators.append(operator)
        return operator

    def header(self, *, benchmark: str) -> dict[str, Any]:
        """The result file's first keys: what ran, on what, with which settings."""
        args = self.args
        return {
            "benchmark": benchmark,
            "startedAt": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nodes": args.nodes, "services": args.services, "gpusPerNode": args.gpus_per_node,
            "clusterGpus": args.nodes * args.gpus_per_node,
            "settings": {k: getattr(args, k) for k in ("namespaces", "rate", "batch", "seed", "window", "quiet",
                                                       "timeout", "retry_seconds")},
            "machine": measure.machine(), "git": measure.git_commit(),
        }

    def bring_up(self, *, namespace_prefix: str) -> tuple[Cluster, Any, OperatorProcess, dict[str, Any]]:
        """A new cluster, the chart, the services' namespaces and the operator running; with the
        wall times of each step (``clusterUpSeconds``, ``helmInstallSeconds``, ``operatorStartSeconds``)."""
        args = self.args
        t = time.monotonic()
        cluster = self.start_cluster()
        walls: dict[str, Any] = {"clusterUpSeconds": round(time.monotonic() - t, 1)}
        t = time.monotonic()
        install_chart(cluster, timeout=300)
        walls["helmInstallSeconds"] = round(time.monotonic() - t, 1)
        for i in range(min(args.namespaces, args.services)):
            cluster.kubectl("create", "namespace", f"{namespace_prefix}-{i}")
        operator = self.operator(cluster)
        walls["operatorStartSeconds"] = round(operator.start(), 1)
        say(f"operator running (pid {operator.pid}, RSS {operator.rss_mib() or 0:.0f} MiB)")
        return cluster, cluster.admin_api(), operator, walls

    def close(self) -> None:
        self.stop.set()
        for operator in self.operators:
            operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200, help="simulated GPU nodes (default: %(default)s)")
    parser.add_argument("--services", type=int, default=1000, help="SLMServices to create (default: %(default)s)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: %(default)s)")
    parser.add_argument("--namespaces", type=int, default=10,
                        help="namespaces to spread services over (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="SLMServices created per second (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=25, help="SLMServices per batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the service mix (default: %(default)s)")
    parser.add_argument("--window", type=float, default=60.0,
                        help="steady-state window seconds (default: %(default)s)")
    parser.add_argument("--quiet", type=float, default=60.0,
                        help="settled when every service is Ready/Degraded/Failed, or nothing changed for this "
                             "many seconds (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="give up waiting to settle after (default: %(default)s s)")
    parser.add_argument("--retry-seconds", type=int, default=30,
                        help="SLM_RETRY_SECONDS of the operator (default: the operator's own 30)")
    parser.add_argument("--run-dir", default=str(REPO / ".run" / "bench-scale"))
    parser.add_argument("--bin", default=None,
                        help="binaries folder (default: $SLM_K8S_BIN, else `hack/build-binaries.sh --check`)")
    parser.add_argument("--out", default=None,
                        help="result file (default: bench/results/scale-<nodes>n-<services>s.json)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the cluster running (stop it with hack/cluster.py down)")
    parser.add_argument("--restart", action="store_true",
                        help="on the cluster a --keep run left: start the operator again (resume of every service), "
                             "wait until it settles, measure the steady state, and add it to the result file")
    parser.add_argument("--startup-curve", default=None, metavar="N,N,...",
                        help="instead: operator start-up time against N plain pods (e.g. 0,1000,2000,4000) on a "
                             "--nodes cluster; writes bench/results/scale-startup-curve.json")
    parser.add_argument("--startup-objects", choices=("pods", "statefulsets"), default="pods",
                        help="--startup-curve: what the N objects are: plain pods (no GPU), or empty StatefulSets "
                             "labelled as the operator's (kopf still watches and indexes those); statefulsets "
                             "write bench/results/scale-startup-curve-statefulsets.json (default: %(default)s)")
    parser.add_argument("--sharing", choices=NODE_SHARINGS, default="mix",
                        help="node kinds: the mixed fleet of bench/README.md, or every node (H100) of one sharing; "
                             "dra-shares nodes publish consumable GPUs like NVIDIA's DRA driver (default: %(default)s)")
    parser.add_argument("--shares", type=int, default=None,
                        help="--sharing dra-shares: shares per GPU (default: the node format's 120)")
    parser.add_argument("--memory-only", action="store_true",
                        help="--sharing dra-shares: GPUs publish memory only (a driver run with "
                             "--consumable-shares=memory)")
    parser.add_argument("--print-nodes", action="store_true", help="print the node config and exit")
    args = parser.parse_args(argv)

    nodes_doc = node_config(nodes=args.nodes, gpus_per_node=args.gpus_per_node, sharing=args.sharing,
                            shares=args.shares, capacities=("memory",) if args.memory_only else None)
    if args.print_nodes:
        print(yaml.safe_dump(nodes_doc, sort_keys=False), end="")
        return 0
    nodeconfig.parse_config(data=nodes_doc, source="generated node config")  # NB: fail before starting anything
    found, why = (args.bin, "") if args.bin else find_binaries()
    if found is None:
        raise SystemExit(f"scale: {why}")
    run_dir = pathlib.Path(args.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(args.out or REPO / "bench" / "results" / f"scale-{args.nodes}n-{args.services}s.json")
    if args.startup_curve:
        suffix = "" if args.startup_objects == "pods" else f"-{args.startup_objects}"
        out = pathlib.Path(args.out or REPO / "bench" / "results" / f"scale-startup-curve{suffix}.json")
        nodes_doc["defaults"]["pods"] = "1000"
    bench = Bench(args=args, run_dir=run_dir, bin_dir=pathlib.Path(found), nodes_doc=nodes_doc)
    try:
        if args.startup_curve:
            result = startup_curve(bench, counts=[int(n) for n in args.startup_curve.split(",")])
        elif args.restart:
            result = json.loads(out.read_text())
            # NB: kept apart from the first run's numbers: right after a restart the operator is not
            # in a steady state at all (start-up at scale is the subject here).
            result["restart"] = restart(bench)
            # NB: the headline keys, over the whole run: the first run's peak RSS and the
            # restart's, the services stuck once the restarted operator settled.
            result["firstRunOperatorPeakRssMiB"] = result.get("firstRunOperatorPeakRssMiB",
                                                              result.get("operatorPeakRssMiB"))
            result["operatorPeakRssMiB"] = max(v for v in (result["firstRunOperatorPeakRssMiB"],
                                                           result["restart"]["operatorPeakRssMiB"]) if v is not None)
            result["restartFirstReconcileSeconds"] = result["restart"]["restartFirstReconcileSeconds"]
            result["servicesStuck"] = result["restart"]["servicesStuck"]
        else:
            result = fresh(bench)
    except (CommandFailed, OperatorError) as e:
        raise SystemExit(f"scale: {e}") from None
    finally:
        bench.close()
        if not args.keep:
            stop_cluster(run_dir=run_dir, capture=False)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.startup_curve:
        shown: Any = result["points"]
    else:
        source = result["restart"] if args.restart else result
        shown = {k: source[k] for k in measure.HEADLINE if k in source}
    print(json.dumps(shown, indent=2))
    say(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


def fresh(bench: Bench) -> dict[str, Any]:
    """A new cluster, the chart, the operator, the services; then latencies, packing, steady state."""
    args, run_dir = bench.args, bench.run_dir
    manifests = service_manifests(services=args.services, namespaces=args.namespaces, seed=args.seed)
    result = bench.header(benchmark="bench/scale.py")
    wall0 = time.monotonic()
    say(f"cluster up: {args.nodes} nodes x {args.gpus_per_node} GPUs ({run_dir})")
    cluster, api, operator, walls = bench.bring_up(namespace_prefix="bench")
    idle = measure.window(api=api, seconds=15, operator=operator)
    say(f"idle operator with {args.nodes} nodes: {idle['operatorCpuPercent']} % CPU")

    tracker = measure.Tracker()
    measure.start_watches(api=api, tracker=tracker, stop=bench.stop)
    metrics0, cpu0 = measure.apiserver_metrics(api=api), operator.cpu_seconds()
    usage0 = measure.component_usage(run_dir=run_dir)
    say(f"creating {args.services} SLMServices at {args.rate}/s in batches of {args.batch}")
    t_apply = time.monotonic()
    walls["createSeconds"] = round(create_services(api=api, manifests=manifests, rate=args.rate,
                                                   batch=args.batch, tracker=tracker), 1)
    how = measure.wait_settled(tracker=tracker, total=len(manifests), operator=operator, started=t_apply,
                               timeout=args.timeout, quiet=args.quiet)
    walls["applyToSettledSeconds"] = round(time.monotonic() - t_apply, 1)
    walls["applyToAllChildrenSeconds"] = measure.rounded(
        max(tracker.first_child.values()) - t_apply if tracker.first_child else None, 1)
    walls["applyToAllTerminalSeconds"] = measure.rounded(
        max(tracker.first_terminal.values()) - t_apply if len(tracker.first_terminal) == len(manifests) else None, 1)
    result["settled"] = how
    say(f"settled: {how}, {walls['applyToSettledSeconds']} s after the first create")
    # NB: let kopf drain what it still has queued (diff-base annotations, Events) before the window.
    walls["drainSeconds"] = measure.drain(operator=operator)
    result["load"] = measure.load_summary(api=api, run_dir=run_dir, operator=operator, before=metrics0, cpu0=cpu0,
                                          usage0=usage0, tracker=tracker)
    result |= measure.snapshot(api=api, nodes_doc=bench.nodes_doc)
    to_child = [tracker.first_child[k] - t for k, t in tracker.applied.items() if k in tracker.first_child]
    to_terminal = [tracker.first_terminal[k] - t for k, t in tracker.applied.items() if k in tracker.first_terminal]
    result["applyToChildren"] = measure.latency_summary(values=to_child)
    # Where in the roll-out the slow ones were: the same, per tenth of the services in creation order.
    in_order = [tracker.first_child[k] - t for k, t in sorted(tracker.applied.items(), key=lambda kv: kv[1])
                if k in tracker.first_child]
    tenth = max(1, -(-len(in_order) // 10))
    result["applyToChildrenByTenth"] = [measure.latency_summary(values=in_order[i:i + tenth])
                                        for i in range(0, len(in_order), tenth)]
    result["applyToReadyOrDegraded"] = measure.latency_summary(values=to_terminal)
    result |= measure.steady_state(api=api, run_dir=run_dir, operator=operator, seconds=args.window)
    result["steadyState"]["idleBeforeLoad"] = idle
    result["applyToChildrenP50Seconds"] = result["applyToChildren"]["p50"]
    result["applyToChildrenP99Seconds"] = result["applyToChildren"]["p99"]
    for key in ("packingRatio", "baselineGpus", "gpusUsed", "memoryLowerBoundGpus"):
        result[key] = result["packing"][key]
    walls["totalSeconds"] = round(time.monotonic() - wall0, 1)
    result["wallTimes"] = walls
    result["machine"]["loadavgAtEnd"] = list(os.getloadavg())
    return result


def restart(bench: Bench) -> dict[str, Any]:
    """The operator started again over the services a --keep run left: resume cost, then steady state."""
    args, run_dir = bench.args, bench.run_dir
    if cluster_script("status", "--run-dir", str(run_dir), check=False).returncode != 0:
        raise SystemExit(f"scale: --restart needs the cluster a --keep run left in {run_dir}; it is not running")
    cluster = Cluster.of_run_dir(run_dir=run_dir, bin_dir=bench.bin_dir)
    api = cluster.admin_api()
    tracker = measure.Tracker()
    measure.start_watches(api=api, tracker=tracker, stop=bench.stop)
    metrics0, usage0 = measure.apiserver_metrics(api=api), measure.component_usage(run_dir=run_dir)
    operator = bench.operator(cluster)
    log_offset = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    started, started_at = time.monotonic(), time.time()
    operator.start()
    say(f"operator restarted (pid {operator.pid}); waiting for it to settle")
    how = measure.wait_settled(tracker=tracker, total=None, operator=operator, started=started,
                               timeout=args.timeout, quiet=args.quiet)
    drained = measure.drain(operator=operator)
    result: dict[str, Any] = {
        "startedAt": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settled": how, "restartToSettledSeconds": round(time.monotonic() - started, 1), "drainSeconds": drained,
        "restartFirstReconcileSeconds": measure.first_reconcile_seconds(
            log_path=operator.log_path, offset=log_offset, started_at=started_at),
        "machine": measure.machine(),
        "resume": measure.load_summary(api=api, run_dir=run_dir, operator=operator, before=metrics0, cpu0=0.0,
                                       usage0=usage0, tracker=tracker),
    }
    result |= measure.snapshot(api=api, nodes_doc=bench.nodes_doc)
    result |= measure.steady_state(api=api, run_dir=run_dir, operator=operator, seconds=args.window)
    return result


def startup_curve(bench: Bench, *, counts: list[int]) -> dict[str, Any]:
    """Operator start → first StatefulSet of a new SLMService, with ever more plain pods (or empty
    StatefulSets labelled as ours, ``--startup-objects``) in the cluster.

    Every object kopf watches costs it a pass at start-up before any handler runs, and every object
    it indexes wakes all the others waiting at its start-up barrier (pods did until the operator
    counted GPU slots with its own pod watch, our StatefulSets until its own group watch); this
    isolates how that cost grows.
    """
    args = bench.args
    cluster = bench.start_cluster()
    api = cluster.admin_api()
    install_chart(cluster, timeout=300)
    for ns in ("bench-pods", "bench-0"):
        cluster.kubectl("create", "namespace", ns)
    node_names = [n["name"] for n in bench.nodes_doc["nodes"]]
    kind = args.startup_objects
    conn, made, points = api.connection(), 0, []
    for count in counts:
        say(f"start-up curve: {count} filler {kind}")
        while made < count:
            path, body = filler(kind=kind, index=made, node=node_names[made % len(node_names)])
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                raise SystemExit(f"scale: creating a filler {kind}: HTTP {response.status}")
            made += 1
        while api.get("/api/v1/namespaces/bench-pods/pods?fieldSelector=status.phase%3DPending&limit=1")["items"]:
            time.sleep(1)
        objects = sum(len(api.list_all(path)) for path in (
            "/api/v1/pods", "/api/v1/nodes", "/apis/apps/v1/statefulsets", measure.SERVICES_PATH,
            "/apis/resource.k8s.io/v1/resourceslices", "/apis/resource.k8s.io/v1/resourceclaims"))
        operator = bench.operator(cluster)
        name = f"probe-{count}"
        started = time.monotonic()
        operator.start()
        body = probe_manifest(name=name, namespace="bench-0")
        api.request("POST", f"/apis/{body['apiVersion']}/namespaces/bench-0/{PLURAL}", body=body)
        seconds = None
        while time.monotonic() - started < args.timeout:
            try:
                api.get(f"/apis/apps/v1/namespaces/bench-0/statefulsets/{group_name(service=name, index=0)}")
                seconds = round(time.monotonic() - started, 1)
                break
            except Exception:
                time.sleep(0.5)
        # NB: the sampler looks every 0.5 s from liveness on; a start-up that quick may end unsampled.
        peak = max(operator.peak_rss_mib, operator.rss_mib() or 0.0)
        points.append({"plainPods" if kind == "pods" else "fillerStatefulSets": count, "watchedObjects": objects,
                       "secondsToFirstStatefulSet": seconds, "operatorCpuSeconds": round(operator.cpu_seconds(), 1),
                       "operatorPeakRssMiB": measure.rounded(peak, 1), "loadavg": list(os.getloadavg())})
        say(f"  {points[-1]}")
        operator.stop()
    conn.close()
    return {"benchmark": "bench/scale.py --startup-curve", "objects": kind, "nodes": args.nodes, "points": points,
            "machine": measure.machine(), "git": measure.git_commit()}


def filler(*, kind: str, index: int, node: str) -> tuple[str, dict[str, Any]]:
    """One filler object of the start-up curve: where to POST it, and its body."""
    name = f"filler-{index:05d}"
    if kind == "pods":
        return "/api/v1/namespaces/bench-pods/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}
    labels = {LABEL_MANAGED_BY: MANAGED_BY, "filler": name}
    return "/apis/apps/v1/namespaces/bench-pods/statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 0, "serviceName": name, "selector": {"matchLabels": {"filler": name}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}}}


def create_services(*, api: Api, manifests: list[dict[str, Any]], rate: float, batch: int,
                    tracker: measure.Tracker) -> float:
    """POST the SLMServices in batches, paced to ``rate`` per second; returns the seconds it took."""
    conn = api.connection()
    started = time.monotonic()
    for start in range(0, len(manifests), batch):
        due = started + start / rate
        time.sleep(max(0.0, due - time.monotonic()))
        for manifest in manifests[start:start + batch]:
            ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
            body = json.dumps(manifest)
            t = time.monotonic()
            conn.request("POST", f"/apis/{manifest['apiVersion']}/namespaces/{ns}/{PLURAL}", body=body,
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


if __name__ == "__main__":
    sys.exit(main())

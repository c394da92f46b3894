#!/usr/bin/env python3
"""Fleet benchmark: many small SLMServices sized by throughput targets, packed onto consumable GPUs.

    .venv/bin/python bench/fleet.py                                  # 300 services on 40 nodes x 8 GPUs
    .venv/bin/python bench/fleet.py --services 60 --nodes 8          # a quicker check
    .venv/bin/python bench/fleet.py --print-nodes                    # only the node config

What it does: generates nodes whose GPUs are published as consumable DRA devices (``sharing:
dra-shares``: ``allowMultipleAllocations`` and capacities, as NVIDIA's DRA driver publishes them in
its consumable mode), starts a dedicated local control plane in ``--run-dir``, ``helm install``s the
chart, runs the operator as the chart's ServiceAccount with ``SLM_PROFILER_RUNNER=none``, creates
``--services`` SLMServices of five model classes (static profiles, ``bench/scale_workload.py``) with
heavy-tailed ``scale.targetTokensPerSecond`` at ``--rate`` per second, waits until they settle and
measures:

* ``gpusOccupied``: distinct GPUs with at least one allocated claim; ``lowerBoundGpus``: per product
  ⌈max(Σ shares, Σ memory ÷ usable memory)⌉ over the bound replicas; ``packingRatio`` = the first
  over the second; beside it what today's whole-GPU groups and one GPU per replica would take for
  the same targets (computed with the planner's own sizing, not run);
* targets met (the status's predicted throughput, and the bound replicas × the profile's share of
  the GPU's plateau, both ≥ the target), services left Pending and why;
* apply → all replicas bound (p50/p99, client-side monotonic clock, watches from the start), the
  operator's RSS and steady-state writes.

It prints numbers and writes ``bench/results/fleet-<nodes>n-<services>s.json``; it asserts nothing.
bench/README.md defines every number. The cluster is stopped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
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

from bench import fleet_measure  # noqa: E402
from bench import scale_measure as measure  # noqa: E402
from bench.fleet_workload import node_config, service_manifests  # noqa: E402
from bench.scale import Bench, create_services  # noqa: E402
from bench.scale_measure import say  # noqa: E402
from hack.localcluster import config as nodeconfig  # noqa: E402
from hack.localcluster.cluster import CommandFailed, find_binaries, stop_cluster  # noqa: E402
from hack.localcluster.operator import OperatorError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fleet.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=40, help="simulated GPU nodes (default: %(default)s)")
    parser.add_argument("--services", type=int, default=300, help="SLMServices to create (default: %(default)s)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: %(default)s)")
    parser.add_argument("--namespaces", type=int, default=10,
                        help="namespaces to spread services over (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="SLMServices created per second, a steady rate (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="SLMServices per batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the service mix (default: %(default)s)")
    parser.add_argument("--window", type=float, default=60.0,
                        help="steady-state window seconds (default: %(default)s)")
    parser.add_argument("--quiet", type=float, default=60.0,
                        help="settled when every service is Ready/Degraded/Failed, or nothing changed for this "
                             "many seconds (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="give up waiting to settle after (default: %(default)s s)")
    parser.add_argument("--retry-seconds", type=int, default=30,
                        help="SLM_RETRY_SECONDS of the operator (default: the operator's own 30)")
    parser.add_argument("--run-dir", default=str(REPO / ".run" / "bench-fleet"))
    parser.add_argument("--bin", default=None,
                        help="binaries folder (default: $SLM_K8S_BIN, else `hack/build-binaries.sh --check`)")
    parser.add_argument("--out", default=None,
                        help="result file (default: bench/results/fleet-<nodes>n-<services>s.json)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the cluster running (stop it with hack/cluster.py down)")
    parser.add_argument("--print-nodes", action="store_true", help="print the node config and exit")
    args = parser.parse_args(argv)

    nodes_doc = node_config(nodes=args.nodes, gpus_per_node=args.gpus_per_node)
    if args.print_nodes:
        print(yaml.safe_dump(nodes_doc, sort_keys=False), end="")
        return 0
    nodeconfig.parse_config(data=nodes_doc, source="generated node config")  # NB: fail before starting anything
    found, why = (args.bin, "") if args.bin else find_binaries()
    if found is None:
        raise SystemExit(f"fleet: {why}")
    run_dir = pathlib.Path(args.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(args.out or REPO / "bench" / "results" / f"fleet-{args.nodes}n-{args.services}s.json")
    bench = Bench(args=args, run_dir=run_dir, bin_dir=pathlib.Path(found), nodes_doc=nodes_doc)
    try:
        result = run(bench)
    except (CommandFailed, OperatorError) as e:
        raise SystemExit(f"fleet: {e}") from None
    finally:
        bench.close()
        if not args.keep:
            stop_cluster(run_dir=run_dir, capture=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in fleet_measure.HEADLINE if k in result}, indent=2))
    say(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


def run(bench: Bench) -> dict[str, Any]:
    """A new cluster, the chart, the operator, the services at a steady rate; then every number."""
    args, run_dir = bench.args, bench.run_dir
    manifests = service_manifests(services=args.services, namespaces=args.namespaces, seed=args.seed)
    result = bench.header(benchmark="bench/fleet.py")
    wall0 = time.monotonic()
    say(f"cluster up: {args.nodes} nodes x {args.gpus_per_node} consumable GPUs ({run_dir})")
    cluster, api, operator, walls = bench.bring_up(namespace_prefix="fleet")

    tracker = fleet_measure.FleetTracker()
    measure.start_watches(api=api, tracker=tracker, stop=bench.stop)
    threading.Thread(target=measure.watch, daemon=True, kwargs=dict(
        api=api, path=fleet_measure.PODS_PATH, on_event=tracker.on_pod, stop=bench.stop)).start()
    metrics0, cpu0 = measure.apiserver_metrics(api=api), operator.cpu_seconds()
    usage0 = measure.component_usage(run_dir=run_dir)
    say(f"creating {args.services} SLMServices at {args.rate}/s")
    t_apply = time.monotonic()
    walls["createSeconds"] = round(create_services(api=api, manifests=manifests, rate=args.rate,
                                                   batch=args.batch, tracker=tracker), 1)
    how = measure.wait_settled(tracker=tracker, total=len(manifests), operator=operator, started=t_apply,
                               timeout=args.timeout, quiet=args.quiet)
    walls["applyToSettledSeconds"] = round(time.monotonic() - t_apply, 1)
    result["settled"] = how
    say(f"settled: {how}, {walls['applyToSettledSeconds']} s after the first create")
    walls["drainSeconds"] = measure.drain(operator=operator)
    result["load"] = measure.load_summary(api=api, run_dir=run_dir, operator=operator, before=metrics0, cpu0=cpu0,
                                          usage0=usage0, tracker=tracker)
    result |= fleet_measure.snapshot(api=api, nodes_doc=bench.nodes_doc, tracker=tracker)
    result |= measure.steady_state(api=api, run_dir=run_dir, operator=operator, seconds=args.window)
    walls["totalSeconds"] = round(time.monotonic() - wall0, 1)
    result["wallTimes"] = walls
    result["machine"]["loadavgAtEnd"] = list(os.getloadavg())
    return result


if __name__ == "__main__":
    sys.exit(main())

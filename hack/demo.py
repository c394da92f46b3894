#!/usr/bin/env python3
"""`make demo`: the whole product on a laptop-sized machine, no GPU, no Docker.

    hack/demo.py up --bin DIR     local control plane + simulated GPU nodes, helm install, the
                                  operator as a local process, two sample SLMServices profiled by
                                  the SIMULATED engine, then the plan per model and the Pareto plot
    hack/demo.py down             stop the operator and the cluster (logs and plots stay in .run/demo)

Everything runs for real except the GPUs: KWOK simulates the nodes and their pods, and the
profiler measures a simulated engine whose timings come from the roofline estimator. The demo
says so wherever a number comes from it. The operator keeps running after `up` returns (its pid
is in .run/demo/operator.pid) until `down`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
# NB: run as a script, so make `hack.localcluster` importable the way hack/cluster.py does.
sys.path.insert(0, str(REPO))

from hack.localcluster.cluster import Cluster, CommandFailed, run, start_cluster, stop_cluster, wait_for  # noqa: E402
from hack.localcluster.operator import (  # noqa: E402
    ACCOUNT,
    OperatorError,
    OperatorProcess,
    install_chart,
    recorded_operator,
    serviceaccount_kubeconfig,
    stop_recorded_operator,
)
from slm_operator.constants import API_VERSION, GROUP, KIND, PROFILE_CONFIGMAP_PREFIX  # noqa: E402

RUN = REPO / ".run" / "demo"
CLUSTER_RUN = RUN / "cluster"
PID_FILE = RUN / "operator.pid"
OPERATOR_LOG = RUN / "operator.log"
NAMESPACE = "demo"
H100 = "NVIDIA-H100-80GB-HBM3"
SETTLED_PHASES = ("Ready", "Degraded", "Failed")

SAMPLES = [
    {"name": "opt-125m", "model": "facebook/opt-125m", "inputTokens": 256, "outputTokens": 128,
     "target": 60000, "sharing": "auto"},
    {"name": "qwen-1-5b", "model": "Qwen/Qwen2.5-1.5B-Instruct", "inputTokens": 512, "outputTokens": 256,
     "target": 20000, "sharing": "auto"},
]


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def up(bin_dir: pathlib.Path) -> int:
    start = time.monotonic()
    RUN.mkdir(parents=True, exist_ok=True)
    say("starting the local control plane with simulated GPU nodes")
    # NB: not fresh: a second `up` keeps the running cluster (and the operator working on it).
    cluster = start_cluster(bin_dir=bin_dir, run_dir=CLUSTER_RUN, fresh=False, capture=False)
    if install_chart(cluster):
        say("helm installed charts/slm-operator")
    start_operator(cluster)

    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    for sample in SAMPLES:
        cluster.apply(manifest(sample), namespace=NAMESPACE)
        say(f"applied SLMService {sample['name']} ({sample['model']}, target {sample['target']} tok/s)")

    say("waiting for Ready (profiling runs on the SIMULATED engine: no GPU here)")

    def phases() -> dict[str, Any]:
        return {s["name"]: service(cluster, s["name"]).get("status", {}).get("phase") for s in SAMPLES}

    try:
        wait_for(lambda: all(p in SETTLED_PHASES for p in phases().values()), timeout=600, interval=2,
                 message="the samples to settle")
    except AssertionError:
        say(f"timed out; phases: {phases()}; operator log: {OPERATOR_LOG}")
        return 1

    print()
    print(cluster.kubectl("get", "slms", "-n", NAMESPACE, "-o", "wide").stdout)
    for sample in SAMPLES:
        status = service(cluster, sample["name"]).get("status", {})
        profile, placement = status.get("profile", {}), status.get("placement", {})
        print(f"{sample['name']}: B*={profile.get('batchSize')} k={placement.get('replicasPerGPU')} "
              f"GPUs={placement.get('gpus')} via {placement.get('mechanism')} → "
              f"{placement.get('plannedTokensPerSecond')} tok/s planned "
              f"[{profile.get('source')} on the {profile.get('engine') or '-'} engine]")
        print(f"    why: {profile.get('explanation', '')}")
        png = plot(sample["name"], profile)
        if png:
            print(f"    Pareto plot: {png}")
    print(f"\nKUBECONFIG={cluster.kubeconfig}   operator log: {OPERATOR_LOG}   "
          f"took {time.monotonic() - start:.0f} s")
    print("make demo-down cleans up.")
    return 0


def manifest(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}", "kind": KIND,
        "metadata": {"name": sample["name"], "annotations": {f"{GROUP}/demo": "simulated engine"}},
        "spec": {
            "model": sample["model"],
            "gpu": {"product": H100, "sharing": sample["sharing"]},
            "workload": {"inputTokens": sample["inputTokens"], "outputTokens": sample["outputTokens"]},
            "profiling": {"mode": "auto"},
            "scale": {"targetTokensPerSecond": sample["target"], "maxGPUs": 4},
        },
    }


def service(cluster: Cluster, name: str) -> dict[str, Any]:
    """The SLMService as JSON, or {} while it cannot be read."""
    try:
        return cluster.get_json("slmservice", name, "-n", NAMESPACE)
    except CommandFailed:
        return {}


def start_operator(cluster: Cluster) -> None:
    """The operator as the chart's ServiceAccount, left running after the demo returns (until `down`)."""
    if recorded_operator(pid_file=PID_FILE) is not None:
        say("operator already running")
        return
    kubeconfig = serviceaccount_kubeconfig(cluster, path=RUN / "operator-kubeconfig", duration="8h")
    operator = OperatorProcess(kubeconfig=kubeconfig, work_dir=RUN / "work", log_path=OPERATOR_LOG,
                               pid_file=PID_FILE, extra_env={"SLM_RETRY_SECONDS": "5"}, liveness_timeout=120)
    operator.start()
    say(f"operator running as ServiceAccount {ACCOUNT} (pid {operator.pid})")


def plot(name: str, profile: dict[str, Any]) -> str | None:
    """Plot the sweep the local runner measured for this profile (if the run left one)."""
    work = RUN / "work" / "profiles"
    sweeps = sorted(work.glob("*/profile.sweep.json")) if work.exists() else []
    ref = (profile.get("profileRef") or "").rsplit(PROFILE_CONFIGMAP_PREFIX, 1)[-1]
    sweep = next((s for s in sweeps if s.parent.name == ref), None)
    if sweep is None:
        return None
    png = RUN / f"{name}-pareto.png"
    result = run([sys.executable, "-m", "slm_operator.profiling.cli", "plot", str(sweep), "--output", str(png)],
                 check=False, timeout=300)
    return str(png) if result.returncode == 0 else None


def down() -> int:
    if stop_recorded_operator(pid_file=PID_FILE):
        say("operator stopped")
    if CLUSTER_RUN.exists():
        stop_cluster(run_dir=CLUSTER_RUN, check=True, capture=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up").add_argument("--bin", required=True, type=pathlib.Path)
    sub.add_parser("down")
    args = parser.parse_args(argv)
    try:
        return up(args.bin) if args.command == "up" else down()
    except (CommandFailed, OperatorError) as e:
        raise SystemExit(f"demo: {e}") from None


if __name__ == "__main__":
    sys.exit(main())

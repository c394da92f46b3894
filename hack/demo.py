#!/usr/bin/env python3
"""`make demo`: the whole product on a laptop-sized machine, no GPU, no Docker.

    hack/demo.py up --bin DIR     local control plane + simulated GPU nodes, helm install, the
                                  operator as a local process, two sample SLMServices profiled by
                                  the SIMULATED engine, then the plan per model and the Pareto plot
    hack/demo.py down             stop the operator and the cluster, remove the demo's state

Everything runs for real except the GPUs: KWOK simulates the nodes and their pods, and the
profiler measures a simulated engine whose timings come from the roofline estimator. The demo
says so wherever a number comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
# NB: run as a script, so make `hack.localcluster` importable the way hack/cluster.py does.
sys.path.insert(0, str(REPO))

from hack.localcluster.api import token_kubeconfig  # noqa: E402
from hack.localcluster.processes import pid_exists  # noqa: E402

RUN = REPO / ".run" / "demo"
CLUSTER_RUN = RUN / "cluster"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "slm-system"
H100 = "NVIDIA-H100-80GB-HBM3"

SAMPLES = [
    {"name": "opt-125m", "model": "facebook/opt-125m", "inputTokens": 256, "outputTokens": 128,
     "target": 60000, "sharing": "auto"},
    {"name": "qwen-1-5b", "model": "Qwen/Qwen2.5-1.5B-Instruct", "inputTokens": 512, "outputTokens": 256,
     "target": 20000, "sharing": "auto"},
]


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True, input: str | None = None,
        capture: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, input=input, text=True, capture_output=capture, timeout=300)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: {' '.join(cmd[:3])} … failed:\n{result.stdout}\n{result.stderr}")
    return result


def up(bin_dir: pathlib.Path) -> int:
    start = time.monotonic()
    RUN.mkdir(parents=True, exist_ok=True)
    say("starting the local control plane with simulated GPU nodes")
    run([sys.executable, str(REPO / "hack" / "cluster.py"), "up", "--bin", str(bin_dir),
         "--run-dir", str(CLUSTER_RUN)], capture=False)
    kubeconfig = CLUSTER_RUN / "kubeconfig"
    env = os.environ | {"KUBECONFIG": str(kubeconfig)}
    kubectl = [str(bin_dir / "kubectl")]
    helm = [str(bin_dir / "helm")]

    if run(helm + ["status", "slm-operator", "-n", OPERATOR_NAMESPACE], env=env, check=False).returncode != 0:
        say("helm install charts/slm-operator")
        run(helm + ["install", "slm-operator", str(REPO / "charts" / "slm-operator"), "-n", OPERATOR_NAMESPACE,
                    "--create-namespace", "--wait", "--timeout", "120s"], env=env)
    start_operator(kubectl=kubectl, env=env)

    run(kubectl + ["create", "namespace", NAMESPACE], env=env, check=False)
    for sample in SAMPLES:
        run(kubectl + ["apply", "-n", NAMESPACE, "-f", "-"], env=env, input=yaml.safe_dump(manifest(sample)))
        say(f"applied SLMService {sample['name']} ({sample['model']}, target {sample['target']} tok/s)")

    say("waiting for Ready (profiling runs on the SIMULATED engine: no GPU here)")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        phases = {s["name"]: get(kubectl, env, s["name"]).get("status", {}).get("phase") for s in SAMPLES}
        if all(p in ("Ready", "Degraded", "Failed") for p in phases.values()):
            break
        time.sleep(2)
    else:
        say(f"timed out; phases: {phases}; operator log: {RUN / 'operator.log'}")
        return 1

    print()
    print(run(kubectl + ["get", "slms", "-n", NAMESPACE, "-o", "wide"], env=env).stdout)
    for sample in SAMPLES:
        status = get(kubectl, env, sample["name"]).get("status", {})
        profile, placement = status.get("profile", {}), status.get("placement", {})
        print(f"{sample['name']}: B*={profile.get('paretoBatchSize')} k={placement.get('replicasPerGPU')} "
              f"GPUs={placement.get('gpus')} via {placement.get('mechanism')} → "
              f"{placement.get('plannedTokensPerSecond')} tok/s planned "
              f"[{profile.get('source')} on the {profile.get('engine') or '-'} engine]")
        print(f"    why: {profile.get('explanation', '')}")
        png = plot(sample["name"], profile)
        if png:
            print(f"    Pareto plot: {png}")
    print(f"\nKUBECONFIG={kubeconfig}   operator log: {RUN / 'operator.log'}   took {time.monotonic() - start:.0f} s")
    print("make demo-down cleans up.")
    return 0


def manifest(sample: dict) -> dict:
    return {
        "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService",
        "metadata": {"name": sample["name"], "annotations": {"slm.pareto.dev/demo": "simulated engine"}},
        "spec": {
            "model": sample["model"],
            "gpu": {"product": H100, "sharing": sample["sharing"]},
            "workload": {"inputTokens": sample["inputTokens"], "outputTokens": sample["outputTokens"]},
            "profiling": {"mode": "auto"},
            "scale": {"targetTokensPerSecond": sample["target"], "maxGPUs": 4},
        },
    }


def get(kubectl: list[str], env: dict[str, str], name: str) -> dict:
    result = run(kubectl + ["get", "slmservice", name, "-n", NAMESPACE, "-o", "json"], env=env, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def start_operator(*, kubectl: list[str], env: dict[str, str]) -> None:
    pid_file = RUN / "operator.pid"
    if pid_file.exists() and pid_exists(int(pid_file.read_text())):
        say("operator already running")
        return
    token = run(kubectl + ["create", "token", "slm-operator", "-n", OPERATOR_NAMESPACE, "--duration=8h"],
                env=env).stdout.strip()
    sa_config = token_kubeconfig(admin_kubeconfig=CLUSTER_RUN / "kubeconfig", account="slm-operator", token=token)
    (RUN / "operator-kubeconfig").write_text(yaml.safe_dump(sa_config))
    op_env = os.environ | {
        "KUBECONFIG": str(RUN / "operator-kubeconfig"), "SLM_PROFILER_RUNNER": "local",
        "SLM_PROFILER_ENGINE": "simulated", "SLM_PROFILER_NAMESPACE": OPERATOR_NAMESPACE,
        "SLM_WORK_DIR": str(RUN / "work"), "SLM_RETRY_SECONDS": "5",
    }
    log = open(RUN / "operator.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "slm_operator", "--liveness", "http://127.0.0.1:18081/healthz"],
                            cwd=REPO, env=op_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    for _ in range(120):
        try:
            with urllib.request.urlopen("http://127.0.0.1:18081/healthz", timeout=1):
                say(f"operator running as ServiceAccount slm-operator (pid {proc.pid})")
                return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"demo: the operator exited; see {RUN / 'operator.log'}")
            time.sleep(0.5)
    raise SystemExit(f"demo: the operator did not become live; see {RUN / 'operator.log'}")


def plot(name: str, profile: dict) -> str | None:
    """Plot the sweep the local runner measured for this profile (if the run left one)."""
    work = RUN / "work" / "profiles"
    sweeps = sorted(work.glob("*/profile.sweep.json")) if work.exists() else []
    ref = (profile.get("profileRef") or "").rsplit("slm-profile-", 1)[-1]
    sweep = next((s for s in sweeps if s.parent.name == ref), None)
    if sweep is None:
        return None
    png = RUN / f"{name}-pareto.png"
    result = run([sys.executable, "-m", "slm_operator.profiling.cli", "plot", str(sweep), "--output", str(png)],
                 check=False)
    return str(png) if result.returncode == 0 else None


def down() -> int:
    pid_file = RUN / "operator.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if pid_exists(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(40):
                if not pid_exists(pid):
                    break
                time.sleep(0.25)
            else:
                os.killpg(pid, signal.SIGKILL)
        pid_file.unlink()
        say("operator stopped")
    if CLUSTER_RUN.exists():
        run([sys.executable, str(REPO / "hack" / "cluster.py"), "down", "--run-dir", str(CLUSTER_RUN)], capture=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up").add_argument("--bin", required=True, type=pathlib.Path)
    sub.add_parser("down")
    args = parser.parse_args(argv)
    return up(args.bin) if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())

"""Run the operator as a local process against the test cluster, as the chart's ServiceAccount.

Pods don't really run on KWOK's simulated nodes, so the operator runs beside the cluster; it
authenticates with a token from the TokenRequest API for the ServiceAccount the Helm chart
creates, so a missing RBAC rule in the chart fails the tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

from hack.localcluster.api import token_kubeconfig
from tests.kubetest import StopWaiting, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE = "slm-operator"
OPERATOR_NAMESPACE = "slm-system"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serviceaccount_kubeconfig(cluster, *, account: str, namespace: str, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig that authenticates with a fresh TokenRequest token of ``account``."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=4h").stdout.strip()
    config = token_kubeconfig(admin_kubeconfig=pathlib.Path(cluster.kubeconfig), account=account, token=token)
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorProcess:
    """``python -m slm_operator`` with its liveness endpoint; restartable and killable."""

    def __init__(self, *, kubeconfig: pathlib.Path, work_dir: pathlib.Path, extra_env: dict[str, str] | None = None):
        self.kubeconfig, self.work_dir = kubeconfig, work_dir
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = work_dir / "operator.log"
        self.port = 0

    def start(self) -> None:
        self.port = free_port()
        env = os.environ | {
            "KUBECONFIG": str(self.kubeconfig),
            "SLM_PROFILER_RUNNER": "local",
            "SLM_PROFILER_ENGINE": "simulated",
            "SLM_PROFILER_NAMESPACE": OPERATOR_NAMESPACE,
            "SLM_WORK_DIR": str(self.work_dir),
            "SLM_RETRY_SECONDS": "3",
            "SLM_DEFAULT_ENGINE_IMAGE": "vllm/vllm-openai:v0.11.0",
        } | self.extra_env
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slm_operator", "--liveness", f"http://127.0.0.1:{self.port}/healthz"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._alive, timeout=60, message=f"operator liveness; log tail:\n{self.log_tail()}")

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc and self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, like an OOM-killed or evicted pod."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def slms(cluster, namespace: str, name: str) -> dict:
    return get_json(cluster, "slmservice", name, "-n", namespace)


def apply_yaml(cluster, namespace: str, obj: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def wait_phase(cluster, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 90,
               operator: OperatorProcess | None = None) -> dict:
    def reached():
        obj = slms(cluster, namespace, name)
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Failed" and "Failed" not in phases:  # terminal until the spec changes: stop waiting
            raise StopWaiting(f"{name} Failed: {obj['status'].get('message')}")
        return obj if phase in phases else None
    tail = (lambda: operator.log_tail()) if operator else (lambda: "")
    try:
        return wait_for(reached, timeout=timeout, interval=0.5, message=f"{name} to reach {phases}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstatus: {slms(cluster, namespace, name).get('status')}\n"
                             f"operator log:\n{tail()}") from None


def elapsed(start: float) -> float:
    return time.monotonic() - start

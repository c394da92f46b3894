"""The operator as a local process beside a cluster, as the chart's ServiceAccount.

KWOK runs no containers, so the integration tests, the demo and the benches run
``python -m slm_operator`` on this machine against the cluster, authenticated with a TokenRequest
token of the ServiceAccount the Helm chart creates (:func:`serviceaccount_kubeconfig`): a missing
RBAC rule in the chart then fails as it would in a pod. :func:`install_chart` installs the chart;
:class:`OperatorProcess` starts the operator, waits for its liveness endpoint, stops or kills it and
reads its memory and CPU; a process that an earlier command started and recorded in a pid file is
found and stopped with :func:`recorded_operator` and :func:`stop_recorded_operator`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import yaml

from slm_operator.constants import GROUP, PLURAL

from . import processes
from .api import token_kubeconfig
from .cluster import REPO, Cluster

CHART = REPO / "charts" / "slm-operator"
#: The Helm release and its namespace (the names ``manifests/install.yaml`` uses too).
RELEASE = "slm-operator"
OPERATOR_NAMESPACE = "slm-system"
#: The ServiceAccount the chart gives the operator.
ACCOUNT = "slm-operator"


class OperatorError(RuntimeError):
    """The operator exited, or its liveness endpoint never answered; the message has its log's tail."""


def install_chart(cluster: Cluster, *, timeout: float = 120) -> bool:
    """``helm install`` charts/slm-operator (CRDs, RBAC, ServiceAccounts) unless the release exists.

    Waits until the SLMService CRD is established either way; returns whether it installed now.
    """
    installed = cluster.helm("status", RELEASE, "-n", OPERATOR_NAMESPACE, check=False).returncode == 0
    if not installed:
        cluster.helm("install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace",
                     "--wait", "--timeout", f"{timeout:.0f}s", timeout=timeout + 60)
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s", timeout=90)
    return not installed


def serviceaccount_kubeconfig(
    cluster: Cluster, *, path: Path, account: str = ACCOUNT, namespace: str = OPERATOR_NAMESPACE,
    duration: str = "4h",
) -> Path:
    """Write a kubeconfig that authenticates with a fresh TokenRequest token of ``account``; its path."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, f"--duration={duration}").stdout.strip()
    config = token_kubeconfig(admin_kubeconfig=Path(cluster.kubeconfig), account=account, token=token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """``python -m slm_operator`` with its liveness and metrics endpoints on free ports; restartable and killable.

    Its environment is ours, then :attr:`DEFAULT_ENV`, the kubeconfig, the profiler namespace and
    the work dir, then ``extra_env``. Its output is appended to ``log_path`` (default
    ``<work_dir>/operator.log``). It runs in a session of its own, so it outlives the command that
    started it unless stopped; with ``pid_file`` its pid is recorded there for a later command.
    With ``sample_rss`` a thread keeps :attr:`peak_rss_mib` (sampled every 0.5 s).
    """

    #: Profiles come from the local runner on the simulated engine: no GPU, no Job.
    #: ``MALLOC_ARENA_MAX`` as the operator image sets it (Dockerfile).
    DEFAULT_ENV: ClassVar[dict[str, str]] = {"SLM_PROFILER_RUNNER": "local", "SLM_PROFILER_ENGINE": "simulated",
                                             "MALLOC_ARENA_MAX": "2"}

    def __init__(
        self,
        *,
        kubeconfig: Path,
        work_dir: Path,
        extra_env: dict[str, str] | None = None,
        log_path: Path | None = None,
        pid_file: Path | None = None,
        liveness_timeout: float = 60.0,
        sample_rss: bool = False,
    ) -> None:
        self.kubeconfig, self.work_dir = Path(kubeconfig), Path(work_dir)
        self.extra_env = dict(extra_env or {})
        self.log_path = Path(log_path) if log_path else self.work_dir / "operator.log"
        self.pid_file = pid_file
        self.liveness_timeout = liveness_timeout
        self.sample_rss = sample_rss
        self.proc: subprocess.Popen | None = None
        self.port = 0
        #: The port of its /metrics endpoint (SLM_METRICS_PORT), chosen with the liveness port.
        self.metrics_port = 0
        self.peak_rss_mib = 0.0
        self._stop_sampling = threading.Event()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def environment(self) -> dict[str, str]:
        return os.environ | self.DEFAULT_ENV | {
            "KUBECONFIG": str(self.kubeconfig),
            "SLM_PROFILER_NAMESPACE": OPERATOR_NAMESPACE,
            "SLM_WORK_DIR": str(self.work_dir),
            "SLM_METRICS_PORT": str(self.metrics_port),
        } | self.extra_env

    def start(self) -> float:
        """Start it and wait until its liveness endpoint answers; returns the seconds that took.

        Raises :class:`OperatorError` (with the log's tail) if it exits or does not answer within
        ``liveness_timeout``; then it is not left running.
        """
        if self.running:
            raise OperatorError(f"the operator is already running (pid {self.pid})")
        self.port, self.metrics_port = processes.pick_free_ports(count=2)
        url = f"http://{processes.HOST}:{self.port}/healthz"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "slm_operator", "--liveness", url],
                cwd=REPO, env=self.environment(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.pid_file:
            self.pid_file.write_text(json.dumps({"pid": self.proc.pid, "executable": sys.executable}) + "\n")
        while not _answers(url):
            if self.proc.poll() is not None:
                self._forget()
                raise OperatorError(f"the operator exited with {self.proc.returncode}; {self.log_path}:\n"
                                    f"{self.log_tail()}")
            if time.monotonic() - started > self.liveness_timeout:
                self.kill()
                raise OperatorError(f"the operator did not answer on {url} within {self.liveness_timeout:g} s; "
                                    f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)
        if self.sample_rss:
            self._stop_sampling = threading.Event()
            threading.Thread(target=self._sample, args=(self.proc.pid, self._stop_sampling), daemon=True).start()
        return time.monotonic() - started

    def stop(self, *, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL to its process group after ``grace`` seconds. Idempotent."""
        self._stop_sampling.set()
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL to its process group: no cleanup, like an OOM-killed or evicted pod."""
        self._stop_sampling.set()
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._forget()

    def scrape(self) -> str:
        """The text of its ``/metrics`` endpoint now (Prometheus exposition format)."""
        url = f"http://{processes.HOST}:{self.metrics_port}/metrics"
        with _opener().open(url, timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def rss_mib(self) -> float | None:
        """Its resident memory now (None when it is not running)."""
        return processes.rss_mib(pid=self.proc.pid) if self.running and self.proc else None

    def cpu_seconds(self) -> float:
        """CPU seconds it has used so far (0 when it is not running)."""
        return processes.cpu_seconds(pid=self.proc.pid) if self.running and self.proc else 0.0

    def _sample(self, pid: int, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            rss = processes.rss_mib(pid=pid)
            if rss is None:
                return
            self.peak_rss_mib = max(self.peak_rss_mib, rss)

    def _forget(self) -> None:
        if self.pid_file:
            self.pid_file.unlink(missing_ok=True)


def recorded_operator(*, pid_file: Path) -> int | None:
    """The pid of the operator recorded in ``pid_file`` (``OperatorProcess(pid_file=...)``), if it still runs."""
    try:
        record = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, int):  # NB: a bare pid, as the demo wrote before the harness did
        return record if processes.pid_exists(record) else None
    pid, executable = record["pid"], record["executable"]
    return pid if processes.is_ours(pid=pid, executable=executable) else None


def stop_recorded_operator(*, pid_file: Path, grace: float = 10.0) -> bool:
    """Stop the recorded operator's process group (SIGTERM, SIGKILL after ``grace`` s); forget the pid file.

    Returns whether it was running.
    """
    pid = recorded_operator(pid_file=pid_file)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while recorded_operator(pid_file=pid_file) is not None and time.monotonic() < deadline:
            time.sleep(0.25)
        if recorded_operator(pid_file=pid_file) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return pid is not None


def _opener() -> urllib.request.OpenerDirector:
    # NB: no proxy, whatever the environment says: urllib would send 127.0.0.1 through one.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _opener().open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False

"""Helpers for tests against a real Kubernetes API: polling, kubectl/helm, and local clusters.

The session fixture in ``tests/conftest.py`` builds on these; tests import :func:`wait_for` and
the :class:`Cluster` type from here. Nothing in a test should sleep: poll with :func:`wait_for`.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hack.localcluster.processes import pid_exists

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "hack" / "cluster.py"
BUILD_SCRIPT = REPO / "hack" / "build-binaries.sh"
#: Where test sessions put their clusters: one run dir per pytest process, so two sessions in one
#: checkout never stop each other's cluster.
TEST_RUN_ROOT = REPO / ".run"
#: What a cluster started by the fixture needs in its bin folder (kubectl/helm for the helpers).
NEEDED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm")

T = TypeVar("T")


class StopWaiting(Exception):
    """Raised by a predicate when the state is terminal: ``wait_for`` fails at once with its message."""


def wait_for(predicate: Callable[[], T], *, timeout: float = 30, interval: float = 0.2, message: str = "") -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions from ``predicate`` count as "not yet" (an object not created yet raises NotFound).
    On timeout raises AssertionError with ``message``, the last value and the last exception.
    """
    deadline = time.monotonic() + timeout
    last_value: Any = None
    last_error: BaseException | None = None
    while True:
        try:
            last_value = predicate()
            last_error = None
            if last_value:
                return last_value
        except StopWaiting as e:
            raise AssertionError(f"gave up waiting for {message or 'condition'}: {e}") from None
        except Exception as e:
            last_error = e
        if time.monotonic() >= deadline:
            detail = f"last value: {last_value!r}"
            if last_error is not None:
                detail += f"; last exception: {type(last_error).__name__}: {last_error}"
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message or 'condition'} ({detail})")
        time.sleep(interval)


class CommandFailed(subprocess.CalledProcessError):
    """A kubectl/helm/cluster.py command failed; unlike its base class, ``str()`` shows its output."""

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))} exited with {self.returncode}\n"
            f"--- stdout ---\n{(self.stdout or '').strip()[-3000:]}\n--- stderr ---\n{(self.stderr or '').strip()[-3000:]}"
        )


def run(
    argv: list[str], *, input: str | None = None, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in text mode, capturing output; raise :class:`CommandFailed` if ``check``."""
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
    return result


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A Kubernetes cluster the tests talk to as admin."""

    kubeconfig: str
    bin_dir: str
    run_dir: str
    server: str

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """``kubectl --kubeconfig <admin> *args``; text mode; raises CommandFailed if ``check``."""
        return run([self._tool("kubectl"), "--kubeconfig", self.kubeconfig, *args], input=input, check=check, timeout=timeout)

    def helm(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """``helm --kubeconfig <admin> *args`` with helm's config/cache/data kept in the run dir."""
        home = Path(self.run_dir) / "helm"
        env = dict(os.environ)
        env.update({f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CONFIG", "CACHE", "DATA")})
        return run(
            [self._tool("helm"), "--kubeconfig", self.kubeconfig, *args], input=input, check=check, timeout=timeout, env=env
        )

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` as admin (close it, or use it in ``with``)."""
        from kubernetes import config  # NB: imported here so unit tests need not import kubernetes

        return config.new_client_from_config(config_file=self.kubeconfig)

    def _tool(self, name: str) -> str:
        path = Path(self.bin_dir) / name
        return str(path) if path.is_file() else name


def server_of(*, kubeconfig: str) -> str:
    """The API server URL of the kubeconfig's current context."""
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    return next(c["cluster"]["server"] for c in doc["clusters"] if c["name"] == context["cluster"])


def ca_file_of(*, kubeconfig: str, directory: str) -> str:
    """Write the current cluster's CA bundle of a kubeconfig to a file in ``directory``; its path."""
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    if "certificate-authority" in cluster:
        return cluster["certificate-authority"]
    path = Path(directory) / "ca.crt"
    path.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return str(path)


def find_binaries() -> tuple[str | None, str]:
    """The bin folder with the control plane's binaries, or (None, why not).

    ``$SLM_K8S_BIN`` (set by the Makefile) wins; otherwise ``hack/build-binaries.sh --check`` says
    whether the pinned set is already built. NB: this never starts a cold build (20-40 min),
    which would outlast any test timeout; `make binaries` does that.
    """
    given = os.environ.get("SLM_K8S_BIN")
    if given:
        missing = [b for b in NEEDED_BINARIES if not os.access(Path(given) / b, os.X_OK)]
        if missing:
            return None, f"SLM_K8S_BIN={given} lacks {', '.join(missing)}; run `make binaries`"
        return given, ""
    try:
        result = run(["bash", str(BUILD_SCRIPT), "--check"], check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"cannot run {BUILD_SCRIPT.name} --check: {e}"
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip().splitlines()[-1], ""
    why = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"control-plane binaries are not built ({why}); run `make binaries` or set SLM_K8S_BIN"


def cluster_script(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``hack/cluster.py *args`` with this interpreter."""
    return run([sys.executable, str(CLUSTER_SCRIPT), *args], timeout=timeout, check=check)


def start_cluster(*, bin_dir: str, run_dir: str, config: str | None = None, timeout: float = 300) -> Cluster:
    """Start a local control plane in ``run_dir`` (stopping any leftover there first)."""
    cluster_script("down", "--run-dir", run_dir, timeout=60)
    args = ["up", "--bin", bin_dir, "--run-dir", run_dir]
    if config:
        args += ["--config", config]
    cluster_script(*args, timeout=timeout)
    kubeconfig = str(Path(run_dir) / "kubeconfig")
    return Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir, run_dir=run_dir, server=server_of(kubeconfig=kubeconfig))


def sweep_stale_test_clusters() -> None:
    """Stop and remove the clusters of earlier test sessions whose pytest process is gone."""
    for run_dir in TEST_RUN_ROOT.glob("test-cluster-*"):
        owner = run_dir.name.rsplit("-", 1)[1]
        if not owner.isdigit() or pid_exists(int(owner)):
            continue
        cluster_script("down", "--run-dir", str(run_dir), timeout=60, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


def existing_cluster(*, bin_dir: str | None) -> Cluster:
    """The cluster of ``$KUBECONFIG`` (for USE_EXISTING_CLUSTER=true), run files in a temp dir."""
    kubeconfig = os.environ.get("KUBECONFIG", "")
    if not kubeconfig or not Path(kubeconfig).is_file():
        raise RuntimeError("USE_EXISTING_CLUSTER=true needs KUBECONFIG set to a single existing kubeconfig file")
    return Cluster(
        kubeconfig=kubeconfig,
        bin_dir=bin_dir or "",
        run_dir=tempfile.mkdtemp(prefix="slm-existing-cluster-"),
        server=server_of(kubeconfig=kubeconfig),
    )


def processes_mentioning(*, text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text`` (pid, command line); Linux only."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append((int(entry.name), cmdline.strip()))
    return found

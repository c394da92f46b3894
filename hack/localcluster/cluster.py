"""A cluster as its admin sees it, for the tests, the demo and the benches: kubectl, helm, the API.

:class:`Cluster` wraps an admin kubeconfig and the bin folder with kubectl and helm; a cluster
that ``hack/cluster.py up`` started (its run dir holds the admin client certificates) also answers
:meth:`Cluster.admin_api`. :func:`start_cluster` and :func:`stop_cluster` run ``hack/cluster.py``
with this interpreter; :func:`find_binaries` finds the pinned Kubernetes binaries without ever
building them; :func:`wait_for` polls. Nothing here imports pytest: ``tests/kubetest.py`` re-exports
these names for the tests, and ``hack/demo.py`` and ``bench/`` import them from here.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .api import Api, admin_api

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "hack" / "cluster.py"
BUILD_SCRIPT = REPO / "hack" / "build-binaries.sh"
#: What a cluster started here needs in its bin folder (kubectl and helm for :class:`Cluster`).
NEEDED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm")

T = TypeVar("T")


# ------------------------------------------------------------------------------------- polling


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


# ------------------------------------------------------------------------------------ commands


class CommandFailed(subprocess.CalledProcessError):
    """A kubectl/helm/cluster.py command failed; unlike its base class, ``str()`` shows its output."""

    def __str__(self) -> str:
        head = f"{' '.join(map(str, self.cmd))} exited with {self.returncode}"
        if self.stdout is None and self.stderr is None:
            return f"{head} (its output is above)"
        return (
            f"{head}\n--- stdout ---\n{(self.stdout or '').strip()[-3000:]}\n"
            f"--- stderr ---\n{(self.stderr or '').strip()[-3000:]}"
        )


def run(
    argv: list[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float | None = 60,
    env: dict[str, str] | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess:
    """Run a command in text mode; raise :class:`CommandFailed` if ``check``.

    Its output is captured, unless ``capture`` is false: then it goes to our own stdout/stderr
    (for long commands a person watches, such as starting a cluster).
    """
    result = subprocess.run(argv, input=input, capture_output=capture, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
    return result


# ------------------------------------------------------------------------------------- cluster


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A Kubernetes cluster, talked to as admin."""

    kubeconfig: str
    bin_dir: str
    run_dir: str
    server: str

    @classmethod
    def of_run_dir(cls, *, run_dir: str | Path, bin_dir: str | Path) -> Cluster:
        """The cluster ``hack/cluster.py up`` (or ``kind-up``) made in ``run_dir``: its admin kubeconfig."""
        kubeconfig = str(Path(run_dir) / "kubeconfig")
        return cls(kubeconfig=kubeconfig, bin_dir=str(bin_dir), run_dir=str(run_dir),
                   server=server_of(kubeconfig=kubeconfig))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """``kubectl --kubeconfig <admin> *args``; text mode; raises CommandFailed if ``check``."""
        argv = [self._tool("kubectl"), "--kubeconfig", self.kubeconfig, *args]
        return run(argv, input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """``helm --kubeconfig <admin> *args`` with helm's config/cache/data kept in the run dir."""
        home = Path(self.run_dir) / "helm"
        env = dict(os.environ)
        env.update({f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CONFIG", "CACHE", "DATA")})
        argv = [self._tool("helm"), "--kubeconfig", self.kubeconfig, *args]
        return run(argv, input=input, check=check, timeout=timeout, env=env)

    def can_i(self, *, account: str, verb: str, resource: str, namespace: str | None,
              subresource: str | None = None) -> bool:
        """``kubectl auth can-i`` as ``account``. ``resource`` may name its subresource after a slash
        (``slmservices.slm.pareto.dev/status``); ``namespace`` None asks about every namespace at
        once (a cluster-wide grant)."""
        if subresource is None:
            resource, _, subresource = resource.partition("/")
        args = ["auth", "can-i", verb, resource, "--as", account]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if subresource:
            args.append(f"--subresource={subresource}")
        answer = self.kubectl(*args, check=False).stdout.strip()
        if answer not in ("yes", "no"):
            raise RuntimeError(f"kubectl {' '.join(args)} answered {answer!r}")
        return answer == "yes"

    def get_json(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """``kubectl get *args -o json``, parsed; raises CommandFailed (NotFound too)."""
        return json.loads(self.kubectl("get", *args, "-o", "json", timeout=timeout).stdout)

    def apply(self, obj: dict[str, Any], *, namespace: str | None = None) -> None:
        """``kubectl apply`` of one object (client-side, as a user would), in ``namespace`` if given."""
        where = ["-n", namespace] if namespace else []
        self.kubectl("apply", *where, "-f", "-", input=yaml.safe_dump(obj))

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` as admin (close it, or use it in ``with``)."""
        from kubernetes import config  # NB: imported here so unit tests, hack/ and bench/ need not import it

        return config.new_client_from_config(config_file=self.kubeconfig)

    def admin_api(self) -> Api:
        """The standard-library client as admin; only for a cluster ``hack/cluster.py up`` started."""
        return admin_api(server=self.server, pki_dir=Path(self.run_dir) / "pki")

    def _tool(self, name: str) -> str:
        path = Path(self.bin_dir) / name
        return str(path) if path.is_file() else name


def server_of(*, kubeconfig: str) -> str:
    """The API server URL of the kubeconfig's current context."""
    return _current_cluster(kubeconfig=kubeconfig)["server"]


def ca_file_of(*, kubeconfig: str, directory: str) -> str:
    """Write the current cluster's CA bundle of a kubeconfig to a file in ``directory``; its path."""
    cluster = _current_cluster(kubeconfig=kubeconfig)
    if "certificate-authority" in cluster:
        return cluster["certificate-authority"]
    path = Path(directory) / "ca.crt"
    path.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return str(path)


def _current_cluster(*, kubeconfig: str) -> dict[str, Any]:
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    return next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])


# ------------------------------------------------------------------------ the local control plane


def find_binaries(*, needed: tuple[str, ...] = NEEDED_BINARIES) -> tuple[str | None, str]:
    """The bin folder with the control plane's binaries, or (None, why not).

    ``$SLM_K8S_BIN`` (set by the Makefile) wins; otherwise ``hack/build-binaries.sh --check`` says
    whether the pinned set is already built. NB: this never starts a cold build (20-40 min),
    which would outlast any test timeout; `make binaries` does that.
    """
    given = os.environ.get("SLM_K8S_BIN")
    if given:
        missing = [b for b in needed if not os.access(Path(given) / b, os.X_OK)]
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


def cluster_script(
    *args: str, timeout: float | None = 300, check: bool = True, capture: bool = True
) -> subprocess.CompletedProcess:
    """Run ``hack/cluster.py *args`` with this interpreter (output shown instead if not ``capture``)."""
    return run([sys.executable, str(CLUSTER_SCRIPT), *args], timeout=timeout, check=check, capture=capture)


def start_cluster(
    *,
    bin_dir: str | Path,
    run_dir: str | Path,
    config: str | Path | None = None,
    fresh: bool = True,
    timeout: float | None = 300,
    step_timeout: float | None = None,
    capture: bool = True,
) -> Cluster:
    """Start a local control plane in ``run_dir`` and return it.

    ``fresh`` stops any leftover there first; otherwise a cluster already running there is kept
    (``up`` is idempotent). ``timeout`` bounds the whole command, ``step_timeout`` is its
    ``--timeout`` (each step's wait).
    """
    if fresh:
        stop_cluster(run_dir=run_dir, timeout=60)
    args = ["up", "--bin", str(bin_dir), "--run-dir", str(run_dir)]
    if config:
        args += ["--config", str(config)]
    if step_timeout:
        args += ["--timeout", f"{step_timeout:g}"]
    cluster_script(*args, timeout=timeout, capture=capture)
    return Cluster.of_run_dir(run_dir=run_dir, bin_dir=bin_dir)


def stop_cluster(
    *, run_dir: str | Path, timeout: float = 120, check: bool = False, capture: bool = True
) -> subprocess.CompletedProcess:
    """``hack/cluster.py down`` of ``run_dir`` (idempotent; a failure raises only if ``check``)."""
    return cluster_script("down", "--run-dir", str(run_dir), timeout=timeout, check=check, capture=capture)

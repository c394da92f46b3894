"""Bring the local control plane up, report on it and take it down.

One run directory holds everything of one cluster: ``state.json`` (pids, ports), ``pids/``,
``logs/``, ``pki/``, ``etcd/`` and ``kubeconfig`` (admin). ``up`` always starts from a fresh etcd
and fresh certificates, so a cluster is reproducible; ``down`` stops exactly the pids it
recorded (checked against their executable) and then checks no recorded port still listens.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from . import config as nodeconfig
from . import pki as pkimod
from . import processes
from .api import Api, ApiError, admin_api

#: Binaries ``up`` needs (kubectl/helm/kind are for users and tests, not for starting the cluster).
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # NB: the first address of SERVICE_CIDR, the `kubernetes` Service.
POD_CIDR = "10.244.0.0/16"
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")

#: Start order; ``down`` stops in reverse so nothing reconnects to a server that is already gone.
ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

Say = Callable[[str], None]


class ClusterError(RuntimeError):
    """Something the user can act on went wrong; the message says what and how to fix it."""


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP during ``up``: unwind through the cleanup like Ctrl-C does."""


# ----------------------------------------------------------------------------------------- paths


class RunDir:
    """The files of one cluster."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()

    state = property(lambda self: self.path / "state.json")
    pids = property(lambda self: self.path / "pids")
    logs = property(lambda self: self.path / "logs")
    pki = property(lambda self: self.path / "pki")
    etcd = property(lambda self: self.path / "etcd")
    kubeconfigs = property(lambda self: self.path / "kubeconfigs")
    kubeconfig = property(lambda self: self.path / "kubeconfig")

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise up/down on one run dir, so two concurrent `up`s cannot both start a cluster."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"processes": {}, "ports": {}}

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state)
        self.pids.mkdir(exist_ok=True)
        for name, proc in state["processes"].items():
            (self.pids / f"{name}.pid").write_text(f"{proc['pid']}\n")


# ------------------------------------------------------------------------------------- inspection


def live_processes(*, run: RunDir) -> tuple[dict[str, Any], dict[str, Any]]:
    """Recorded processes split into (alive, dead), by name. Empty when nothing was recorded."""
    state = run.read_state() or {"processes": {}}
    alive, dead = {}, {}
    for name, proc in state["processes"].items():
        (alive if processes.is_ours(pid=proc["pid"], executable=proc["executable"]) else dead)[name] = proc
    return alive, dead


def status(*, run_dir: str | Path, say: Say = print) -> int:
    """Print each process and the nodes; exit code 0 running, 1 degraded, 3 not running."""
    run = RunDir(run_dir)
    state = run.read_state()
    if state is None:
        say(f"not running (no cluster recorded in {run.path})")
        return 3
    alive, dead = live_processes(run=run)
    for name in ORDER:
        if name in state["processes"]:
            proc = state["processes"][name]
            word = "running" if name in alive else "DEAD"
            say(f"  {name:<24} {word:<8} pid {proc['pid']:<8} port {proc.get('port', '-')}  log {run.log(name)}")
    if not alive:
        say("not running (all recorded processes are gone; `down` cleans up, `up` starts anew)")
        return 3
    if dead:
        say(f"DEGRADED: {', '.join(dead)} not running; see the logs above, then `down` and `up`")
        return 1
    if not state.get("timings"):
        say("UNFINISHED: the `up` that started these processes did not finish; `down`, then `up`")
        return 1
    with contextlib.suppress(Exception):
        nodes = _api(run, state).get("/api/v1/nodes")["items"]
        ready = [n["metadata"]["name"] for n in nodes if _node_ready(n)]
        say(f"  nodes: {len(ready)}/{len(nodes)} Ready")
    say(f"running; export KUBECONFIG={run.kubeconfig}")
    return 0


# ------------------------------------------------------------------------------------------- up


def up(
    *,
    bin_dir: str | Path,
    config_path: str | Path,
    run_dir: str | Path,
    api_port: int = 0,
    timeout: float = 120.0,
    say: Say = print,
) -> int:
    """Start the control plane and the simulated nodes; return the exit code.

    Validates the node config and the binaries before anything starts; a second ``up`` while the
    cluster runs says so and returns 0; a failure part-way stops what had already started.
    """
    config = nodeconfig.load_config(path=config_path)
    bins = _binaries(bin_dir)
    run = RunDir(run_dir)
    with run.locked():
        previous_state = run.read_state()
        if previous_state is not None:
            alive, dead = live_processes(run=run)
            if alive and not dead and previous_state.get("timings"):
                say(f"already running in {run.path}; not starting another")
                say(f"export KUBECONFIG={run.kubeconfig}")
                return 0
            if alive:
                # NB: "timings" is written last, so its absence means an `up` that was killed part-way.
                why = f"{', '.join(dead)} stopped" if dead else "its `up` never finished"
                raise ClusterError(
                    f"a cluster in {run.path} is only partly running ({why}); "
                    f"run `hack/cluster.py down --run-dir {run.path}` first"
                )
        _wipe(run)
        ports = _ports(api_port)
        starter = _Starter(run=run, bins=bins, ports=ports, say=say, timeout=timeout)
        previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            starter.start_all(config=config)
        except BaseException as failure:
            say(f"start failed ({_describe(failure)}); stopping what had started")
            _stop_recorded(run=run, say=say)
            expected = (ClusterError, pkimod.PkiError, processes.PortInUse, _Interrupted, KeyboardInterrupt)
            if isinstance(failure, expected):
                raise ClusterError(str(failure) or "interrupted") from None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    say(f"export KUBECONFIG={run.kubeconfig}")
    return 0


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise _Interrupted(f"interrupted by signal {signum}")


def _describe(failure: BaseException) -> str:
    return type(failure).__name__ if not str(failure) else str(failure).splitlines()[0][:200]


def _binaries(bin_dir: str | Path) -> dict[str, str]:
    folder = Path(bin_dir).expanduser().absolute()
    missing = [name for name in REQUIRED_BINARIES if not os.access(folder / name, os.X_OK)]
    if missing:
        raise ClusterError(
            f"missing binaries in {folder}: {', '.join(missing)}. Build them with `make binaries` "
            f"(hack/build-binaries.sh prints their folder) and pass that folder as --bin"
        )
    return {name: str(folder / name) for name in REQUIRED_BINARIES}


def _ports(api_port: int) -> dict[str, int]:
    names = ("etcd", "etcd-peer", "kube-controller-manager", "kube-scheduler", "kwok")
    if api_port:
        processes.ensure_port_free(port=api_port, purpose="kube-apiserver")
        free = processes.pick_free_ports(count=len(names))
        return {"kube-apiserver": api_port, **dict(zip(names, free, strict=True))}
    free = processes.pick_free_ports(count=len(names) + 1)
    return {"kube-apiserver": free[0], **dict(zip(names, free[1:], strict=True))}


def _wipe(run: RunDir) -> None:
    """Remove what a previous cluster in this dir left (its processes are known to be gone)."""
    for folder in (run.etcd, run.pki, run.kubeconfigs, run.pids, run.logs):
        shutil.rmtree(folder, ignore_errors=True)
    for file in (run.state, run.kubeconfig):
        file.unlink(missing_ok=True)


class _Starter:
    """Starts the components one after another, recording each before waiting on it."""

    def __init__(self, *, run: RunDir, bins: dict[str, str], ports: dict[str, int], say: Say, timeout: float) -> None:
        self.run, self.bins, self.ports, self.say, self.timeout = run, bins, ports, say, timeout
        self.state: dict[str, Any] = {
            "server": f"https://{processes.HOST}:{ports['kube-apiserver']}",
            "ports": ports,
            "processes": {},
        }
        self.children: dict[str, subprocess.Popen] = {}
        self.t0 = time.monotonic()

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.t0:5.1f} s"

    def start_all(self, *, config: nodeconfig.ClusterConfig) -> None:
        for name, port in self.ports.items():
            processes.ensure_port_free(port=port, purpose=name)
        self.run.write_state(self.state)
        pki = pkimod.make_pki(directory=self.run.pki, service_ip=SERVICE_IP)
        kubeconfigs = self._write_kubeconfigs(pki)
        etcd_url = self._start_etcd()
        api = self._start_apiserver(pki, etcd_url)
        api_healthy = time.monotonic() - self.t0
        self._start_controllers(pki, kubeconfigs)
        self._publish_nodes(api, config)
        total = time.monotonic() - self.t0
        # NB: written last: its presence is what tells a later `up` that this one finished.
        self.state["timings"] = {"api_healthy_s": round(api_healthy, 2), "nodes_ready_s": round(total, 2)}
        self.run.write_state(self.state)
        self.say(
            f"cluster up: API healthy after {api_healthy:.1f} s, {len(config.nodes)} nodes Ready after {total:.1f} s"
            f" ({self.run.path})"
        )

    def _write_kubeconfigs(self, pki: pkimod.Pki) -> dict[str, Path]:
        self.run.kubeconfigs.mkdir(parents=True, exist_ok=True)
        paths = {
            stem: _write_kubeconfig(
                path=self.run.kubeconfigs / f"{stem}.kubeconfig", server=self.state["server"], pki=pki, stem=stem
            )
            for stem, _, _ in pkimod.CLIENTS
        }
        shutil.copyfile(paths["admin"], self.run.kubeconfig)
        self.run.kubeconfig.chmod(0o600)
        return paths

    def _start_etcd(self) -> str:
        etcd_url = f"http://{processes.HOST}:{self.ports['etcd']}"
        peer_url = f"http://{processes.HOST}:{self.ports['etcd-peer']}"
        self.spawn(
            "etcd",
            [
                "--name=slm",
                f"--data-dir={self.run.etcd}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=slm={peer_url}",
                # NB: a throw-away cluster: skipping fsync makes every API write much faster.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self.wait_healthy("etcd", lambda: _http_ok(f"{etcd_url}/health"))
        return etcd_url

    def _start_apiserver(self, pki: pkimod.Pki, etcd_url: str) -> Api:
        self.spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={processes.HOST}",
                f"--secure-port={self.ports['kube-apiserver']}",
                f"--advertise-address={processes.HOST}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
                f"--proxy-client-key-file={pki.front_proxy_client_key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",  # NB: added to the defaults, PodSecurity included
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--runtime-config=resource.k8s.io/v1=true",
                "--allow-privileged=true",
                # NB: no Endpoints for `kubernetes`: 127.0.0.1 is not a valid endpoint address, and
                # nothing in this cluster reaches the API through the Service.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.run.pki}",
                "--profiling=false",
            ],
        )
        api = _api(self.run, self.state)
        self.wait_healthy("kube-apiserver", lambda: api.get("/readyz") == "ok")
        return api

    def _start_controllers(self, pki: pkimod.Pki, kubeconfigs: dict[str, Path]) -> None:
        for name in ("kube-controller-manager", "kube-scheduler"):
            kubeconfig = kubeconfigs[name]
            args = [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={processes.HOST}",
                f"--secure-port={self.ports[name]}",
                "--leader-elect=false",
            ]
            if name == "kube-controller-manager":
                args += [
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    f"--cluster-signing-cert-file={pki.ca_cert}",
                    f"--cluster-signing-key-file={pki.ca_key}",
                    "--use-service-account-credentials=true",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    # NB: the default 5 s delays the not-ready taint's removal from new nodes.
                    "--node-monitor-period=1s",
                ]
            self.spawn(name, args)
        self.spawn(
            "kwok",
            [
                f"--kubeconfig={kubeconfigs['kwok']}",
                f"--config={STAGES_FILE}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={'='.join(nodeconfig.KWOK_NODE_ANNOTATION)}",
                f"--server-address={processes.HOST}:{self.ports['kwok']}",
                f"--cidr={POD_CIDR}",
                # NB: like a kubelet: a 40 s node Lease renewed every 10 s. Without it (the flag's
                # default is off) only status heartbeats keep nodes from going NotReady.
                "--node-lease-duration-seconds=40",
            ],
        )
        # NB: all three start together; they only need the API server, not each other.
        for name in ("kube-controller-manager", "kube-scheduler"):
            url = f"https://{processes.HOST}:{self.ports[name]}/healthz"
            self.wait_healthy(name, lambda url=url: _http_ok(url, insecure=True))
        self.wait_healthy("kwok", lambda: _http_ok(f"http://{processes.HOST}:{self.ports['kwok']}/healthz"))

    def _publish_nodes(self, api: Api, config: nodeconfig.ClusterConfig) -> None:
        for index, node in enumerate(config.nodes):
            api.create(nodeconfig.node_manifest(node=node, index=index))
        for obj in nodeconfig.dra_manifests(config=config):
            api.create(obj)
        names = {node.name for node in config.nodes}
        self.wait_for(
            "nodes Ready",
            lambda: _ready_nodes(api, names) == names,
            detail=lambda: f"Ready: {sorted(_ready_nodes(api, names))} of {sorted(names)}",
        )
        # NB: pods are refused in a namespace until its `default` ServiceAccount exists.
        self.wait_for(
            "ServiceAccount default/default",
            lambda: _exists(api, "/api/v1/namespaces/default/serviceaccounts/default"),
            detail=lambda: "kube-controller-manager has not made it",
        )

    def spawn(self, name: str, args: list[str]) -> None:
        executable = self.bins[name]
        child = processes.spawn(argv=[executable, *args], log_path=self.run.log(name))
        self.children[name] = child
        self.state["processes"][name] = {
            "pid": child.pid,
            "executable": executable,
            # NB: the whole command line, so that a component that exited can be started again
            # (``component_stopped``, as a kubelet or systemd restarts a control-plane process).
            "argv": [executable, *args],
            "port": self.ports[name],
            "ports": [p for key, p in self.ports.items() if key == name or key.startswith(f"{name}-")],
        }
        self.run.write_state(self.state)

    def wait_healthy(self, name: str, check: Callable[[], bool]) -> None:
        self.wait_for(f"{name} healthy", check, process=name, detail=lambda: f"port {self.ports[name]}")
        self.say(f"  {self.elapsed()}  {name} healthy")

    def wait_for(
        self, what: str, check: Callable[[], bool], *, process: str | None = None, detail: Callable[[], str]
    ) -> None:
        deadline = time.monotonic() + self.timeout
        last_error = ""
        while True:
            # NB: a child that exited will never become healthy: fail now, with its log.
            for name, child in self.children.items():
                if (process is None or name == process) and child.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with code {child.returncode} while waiting for {what}; "
                        f"last lines of {self.run.log(name)}:\n{processes.log_tail(path=self.run.log(name))}"
                    )
            try:
                if check():
                    return
            except Exception as e:
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                logs = "".join(
                    f"\nlast lines of {self.run.log(name)}:\n{processes.log_tail(path=self.run.log(name))}"
                    for name in ([process] if process else self.children)
                )
                raise ClusterError(
                    f"timed out after {self.timeout:.0f} s waiting for {what}"
                    f" ({detail()}; last probe error: {last_error or 'none'}){logs}"
                )
            time.sleep(0.1)


def _write_kubeconfig(*, path: Path, server: str, pki: pkimod.Pki, stem: str) -> Path:
    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "slm-local", "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)}}
        ],
        "users": [
            {
                "name": stem,
                "user": {
                    "client-certificate-data": b64(pki.client_cert(stem)),
                    "client-key-data": b64(pki.client_key(stem)),
                },
            }
        ],
        "contexts": [{"name": "slm-local", "context": {"cluster": "slm-local", "user": stem}}],
        "current-context": "slm-local",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def _api(run: RunDir, state: dict[str, Any]) -> Api:
    return admin_api(server=state["server"], pki_dir=run.pki)


def _http_ok(url: str, *, insecure: bool = False) -> bool:
    context = None
    if insecure:
        # NB: kube-controller-manager and kube-scheduler serve a self-signed in-memory cert.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    handlers = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    with urllib.request.build_opener(*handlers).open(url, timeout=2) as response:
        return response.status == 200


def _node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    # NB: the node lifecycle controller lifts this taint a moment after Ready; until then nothing schedules.
    tainted = any(t["key"] == "node.kubernetes.io/not-ready" for t in node.get("spec", {}).get("taints", []))
    return ready and not tainted


def _ready_nodes(api: Api, names: set[str]) -> set[str]:
    return {n["metadata"]["name"] for n in api.get("/api/v1/nodes")["items"] if _node_ready(n)} & names


def _exists(api: Api, path: str) -> bool:
    try:
        api.get(path)
    except ApiError as e:
        if e.status == 404:
            return False
        raise
    return True


# ------------------------------------------------------------------------------------------ down


@contextlib.contextmanager
def component_stopped(*, run_dir: str | Path, name: str) -> Iterator[None]:
    """Stop one recorded component (``etcd``, ``kube-apiserver``, ...) of the cluster in ``run_dir``
    while the block runs, then start it again with the same command line and record its new pid.
    For fault tests: an API server outage, an etcd restart. Waits for nothing after the restart.

    NB: kube-scheduler and KWOK exit when the API server goes away for long; a real control plane's
    supervisor (the kubelet of static pods, systemd) starts them again, and so does this, afterwards,
    for every recorded component that is no longer running (from the command line it recorded).
    Stopping the API server stops kube-controller-manager too: on a real control plane it runs with
    leader election and exits when it cannot renew its lease (10 s), so it comes back with fresh
    caches; this one runs ``--leader-elect=false`` and, left running, kept a stale StatefulSet cache
    after the outage (its StatefulSet controller requeued "read version … is not as new as written
    version" with a growing backoff, and no replica started for minutes).
    """
    run = RunDir(run_dir)
    with run.locked():
        state = run.read_state() or {"processes": {}}
        proc = state["processes"].get(name)
        if proc is None or not processes.is_ours(pid=proc["pid"], executable=proc["executable"]):
            raise ClusterError(f"{name} is not running in {run.path}")
        if "argv" not in proc:
            raise ClusterError(f"{run.path} records no command line of {name}: start the cluster again (`up`)")
        processes.stop(pid=proc["pid"], executable=proc["executable"])
        if name == "kube-apiserver":
            manager = state["processes"].get("kube-controller-manager")
            if manager and "argv" in manager and processes.is_ours(pid=manager["pid"],
                                                                   executable=manager["executable"]):
                processes.stop(pid=manager["pid"], executable=manager["executable"])
    try:
        yield
    finally:
        with run.locked():
            state = run.read_state() or {"processes": {}}
            for component in ORDER:  # NB: in start order; the ones after the API server once it answers
                recorded = state["processes"].get(component)
                if recorded is None or "argv" not in recorded or processes.is_ours(
                        pid=recorded["pid"], executable=recorded["executable"]):
                    continue
                child = processes.spawn(argv=recorded["argv"], log_path=run.log(component))
                state["processes"][component] = dict(recorded) | {"pid": child.pid}
                run.write_state(state)
                if component == "kube-apiserver":
                    api, deadline = _api(run, state), time.monotonic() + 90
                    while time.monotonic() < deadline and not _answers_ready(api):
                        time.sleep(0.5)


def _answers_ready(api: Api) -> bool:
    try:
        return api.get("/readyz") == "ok"
    except Exception:  # NB: not up yet: refused, reset, 5xx
        return False


def down(*, run_dir: str | Path, say: Say = print) -> int:
    """Stop every recorded process and check its ports are closed. Idempotent; returns 0."""
    run = RunDir(run_dir)
    with run.locked():
        state = run.read_state()
        if state is None:
            say(f"not running (no cluster recorded in {run.path})")
            return 0
        _stop_recorded(run=run, say=say)
    say("stopped")
    return 0


def _stop_recorded(*, run: RunDir, say: Say) -> None:
    state = run.read_state() or {"processes": {}}
    recorded = state["processes"]
    for name in reversed(ORDER):
        if name in recorded:
            outcome = processes.stop(pid=recorded[name]["pid"], executable=recorded[name]["executable"])
            if outcome != "not running":
                say(f"  {name} (pid {recorded[name]['pid']}) {outcome}")
    ports = sorted({port for proc in recorded.values() for port in proc.get("ports", [])})
    deadline = time.monotonic() + 5
    still = [p for p in ports if processes.is_listening(port=p)]
    while still and time.monotonic() < deadline:
        time.sleep(0.1)
        still = [p for p in still if processes.is_listening(port=p)]
    if still:
        raise ClusterError(
            f"after stopping every recorded process, something still listens on {', '.join(map(str, still))}; "
            f"find it with `ss -ltnp` (it is not a process this cluster recorded)"
        )
    run.state.unlink(missing_ok=True)
    shutil.rmtree(run.pids, ignore_errors=True)

"""A kind cluster (real kubelet and containerd in Docker) whose node poses as a GPU node.

The control plane of :mod:`.controlplane` simulates pods; kind runs them. ``kind-up`` makes a
kind cluster from the node image built here (``hack/kind-node/build.sh``: no registry is needed)
with one node per device-plugin GPU node of the node config (``hack/kind-gpu-nodes.yaml``: the
first is the control plane), loads the project's images into it, and gives each node the labels
and the ``nvidia.com/gpu`` capacity of its config node, patched on the node status the way a
device plugin's advertisement would appear (the kubelet keeps an extended resource it did not set
until it restarts). A second ``kind-up`` reuses the cluster.

The kind config (:func:`kind_config`) says what differs from kind's defaults and why: no kindnet
(its image cannot be pulled; :func:`_wire_pod_network` gives each node a ``ptp`` CNI config for
its pod CIDR and routes to the others'), CoreDNS is skipped (no image; the tests resolve no
names), and the kubelet may run on a cgroup v1 host (``failCgroupV1: false``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from slm_operator.constants import GPU_RESOURCE

from . import config as nodeconfig

Say = Callable[[str], None]
REPO = Path(__file__).resolve().parents[2]
NODE_IMAGE_SCRIPT = REPO / "hack" / "kind-node" / "build.sh"


class KindError(RuntimeError):
    """kind or Docker is missing or failed; the message says which and what to do."""


def docker_available() -> tuple[bool, str]:
    """Whether a Docker engine answers `docker info`, and why not when it does not."""
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return False, "no `docker` command on this machine"
    except subprocess.TimeoutExpired:
        return False, "`docker info` did not answer within 20 s"
    if result.returncode != 0:
        last = ((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1]
        return False, f"`docker info` failed: {last}"
    return True, ""


def kind_config(*, nodes: int = 1) -> dict:
    """The kind ``Cluster`` config: a control-plane node and ``nodes - 1`` workers, API on 127.0.0.1."""
    kubelet_patch = {
        "kind": "KubeletConfiguration",
        # NB: kubelet >= 1.35 refuses a cgroup v1 host unless told otherwise; hosts like this
        # one (and many CI runners) still mount v1. Harmless on v2.
        "failCgroupV1": False,
        # The node's containerd 1.6 cannot report its cgroup driver to the kubelet (RuntimeConfig
        # came in 2.0), so both are set to cgroupfs explicitly (containerd: SystemdCgroup = false).
        "cgroupDriver": "cgroupfs",
    }
    # Lists are replaced wholesale by kind's merge patches: kind's own "preflight" is repeated.
    init_patch = {"kind": "InitConfiguration", "skipPhases": ["preflight", "addon/coredns"]}
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"apiServerAddress": "127.0.0.1", "disableDefaultCNI": True},
        "nodes": [{"role": "control-plane"}] + [{"role": "worker"}] * (nodes - 1),
        "kubeadmConfigPatches": [yaml.safe_dump(kubelet_patch), yaml.safe_dump(init_patch)],
    }


def node_image(*, say: Say = print) -> str:
    """Build (or find) the local kind node image; returns its name."""
    say("kind node image: hack/kind-node/build.sh (first build ~3 min, then cached)")
    result = subprocess.run(["bash", str(NODE_IMAGE_SCRIPT)], capture_output=True, text=True)
    for line in result.stderr.strip().splitlines():
        say(f"  {line}")
    if result.returncode != 0 or not result.stdout.strip():
        raise KindError(f"building the kind node image failed (exit {result.returncode}); see the lines above")
    return result.stdout.strip().splitlines()[-1]


def kind_up(
    *,
    bin_dir: str | Path,
    run_dir: str | Path,
    name: str,
    config_path: str | Path,
    image: str | None = None,
    load: Sequence[str] = (),
    say: Say = print,
) -> int:
    """Create the kind cluster (if absent), give its nodes their GPU poses, load ``load`` images.

    Bad input fails before anything starts (no Docker engine, an image that is not built, a node
    config without GPU nodes); a failed ``kind create`` exports the node logs and deletes what it
    made. Returns the exit code.
    """
    ok, why = docker_available()
    if not ok:
        raise KindError(f"kind needs a Docker engine: {why} (hack/docker-engine.sh starts one)")
    kind_bin, kubectl = _binary(bin_dir, "kind"), _binary(bin_dir, "kubectl")
    templates = [n for n in nodeconfig.load_config(path=config_path).nodes if n.gpu and n.gpu.advertised]
    if not templates:
        raise KindError(f"{config_path} has no device-plugin GPU node (sharing none/mps/time-slicing) "
                        "to copy onto a kind node")
    for ref in load:
        if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0:
            raise KindError(f"image {ref} is not in the local Docker engine: build it first (hack/images.sh)")
    run_dir = Path(run_dir).absolute()
    kubeconfig = run_dir / "kubeconfig"
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = name in _run([kind_bin, "get", "clusters"]).split()
    if existing and not _answers(kind_bin=kind_bin, kubectl=kubectl, name=name, kubeconfig=kubeconfig):
        # NB: a kind cluster does not survive a restart of the Docker engine (or of this machine):
        # its containers come back without their API server. Start afresh instead of failing.
        say(f"kind cluster {name} exists but its API server does not answer: deleting it")
        _run([kind_bin, "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)], check=False)
        existing = False
    if not existing:
        image = image or node_image(say=say)
        config_file = run_dir / "kind-config.yaml"
        config_file.write_text(yaml.safe_dump(kind_config(nodes=len(templates)), sort_keys=False))
        say(f"creating kind cluster {name} from {image}")
        started = time.monotonic()
        try:
            _run([kind_bin, "create", "cluster", "--name", name, "--image", image, "--config", str(config_file),
                  "--kubeconfig", str(kubeconfig), "--retain"])
        except KindError as e:
            logs = _run([kind_bin, "export", "logs", str(run_dir / "failed-logs"), "--name", name], check=False)
            _run([kind_bin, "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)], check=False)
            raise KindError(f"{e}\nnode logs: {logs.strip() or run_dir / 'failed-logs'} "
                            "(the failed cluster was deleted)") from None
        say(f"kind cluster {name} created in {time.monotonic() - started:.0f} s")
    else:
        say(f"kind cluster {name} exists: reusing it")
    kc = ["--kubeconfig", str(kubeconfig)]
    nodes = _run([kind_bin, "get", "nodes", "--name", name]).split()
    # kind names them <name>-control-plane, <name>-worker, <name>-worker2, ...: that order.
    nodes.sort(key=lambda n: (not n.endswith("-control-plane"), len(n), n))
    if len(nodes) != len(templates):
        raise KindError(f"kind cluster {name} has {len(nodes)} node(s) but {config_path} describes {len(templates)}: "
                        f"delete it (make kind-down) and run kind-up again")
    _wire_pod_network(kubectl=kubectl, kubeconfig=kubeconfig, nodes=nodes)
    _run([kubectl, *kc, "wait", "--for=condition=Ready", "node", "--all", "--timeout=180s"])
    # NB: every node poses as a GPU node, the control plane too; kind untaints it only when it is
    # the sole node.
    _run([kubectl, *kc, "taint", "nodes", "--all", "node-role.kubernetes.io/control-plane-"], check=False)
    for node, template in zip(nodes, templates, strict=True):
        labels = {k: v for k, v in nodeconfig.node_labels(node=template).items() if k.startswith("nvidia.com/")}
        _run([kubectl, *kc, "label", "node", node, "--overwrite", *(f"{k}={v}" for k, v in labels.items())])
        gpus = str(template.gpu.advertised)
        patch = {"status": {"capacity": {GPU_RESOURCE: gpus}, "allocatable": {GPU_RESOURCE: gpus}}}
        _run([kubectl, *kc, "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(patch)])
        say(f"kind node {node} poses as {template.name}: {gpus} x {GPU_RESOURCE} "
            f"({template.gpu.product}, sharing {template.gpu.sharing})")
    if load:
        started = time.monotonic()
        # NB: kind compares image IDs and skips what the node already holds: a rerun is quick.
        _run([kind_bin, "load", "docker-image", "--name", name, *load])
        say(f"loaded {len(load)} image(s) into {len(nodes)} node(s) in {time.monotonic() - started:.0f} s: "
            f"{', '.join(load)}")
        # NB: a reload moves the tag, but the earlier image stays under its ID and kind's
        # import-<date> name (GBs per node, never collected: kind turns image GC off). Drop those
        # names unless a real tag points at the same image; containerd then collects the rest.
        for node in nodes:
            subprocess.run(["docker", "exec", "-i", node, "sh"], input=_PRUNE_UNTAGGED, text=True, capture_output=True)
    say(f"export KUBECONFIG={kubeconfig}")
    return 0


_PRUNE_UNTAGGED = r"""
refs=$(ctr -n k8s.io images ls | awk 'NR > 1 {print $1, $3}')
keep=$(echo "$refs" | awk '$1 !~ /^(import-|sha256:)/ {print $2}' | sort -u)
echo "$refs" | awk '$1 ~ /^(import-|sha256:)/' | while read -r ref digest; do
  echo "$keep" | grep -qx "$digest" || ctr -n k8s.io images rm "$ref" >/dev/null
done
"""


def _answers(*, kind_bin: str, kubectl: str, name: str, kubeconfig: Path) -> bool:
    """Whether the existing cluster's API server answers (its kubeconfig is exported on the way)."""
    if subprocess.run([kind_bin, "export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)],
                      capture_output=True).returncode != 0:
        return False
    probe = [kubectl, "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz", "--request-timeout=10s"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def ptp_conflist(*, pod_cidr: str) -> dict:
    """CNI config of one node: a veth per pod routed through the node (no bridge, so no
    br_netfilter is needed for Service traffic), addresses from the node's pod CIDR."""
    return {
        "cniVersion": "1.0.0",
        "name": "slm-kind",
        "plugins": [
            {"type": "ptp", "ipMasq": True, "mtu": 1500,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _wire_pod_network(*, kubectl: str, kubeconfig: Path, nodes: list[str]) -> None:
    """Give each node its CNI config and a route to every other node's pod CIDR (what kindnet
    would do). Idempotent; routes are lost when a node container restarts, so every kind-up
    sets them again."""
    kc = ["--kubeconfig", str(kubeconfig)]
    cidrs, addresses = {}, {}
    for node in nodes:
        cidrs[node] = _wait_value(
            lambda node=node: _run([kubectl, *kc, "get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]).strip(),
            what=f"a pod CIDR on node {node}")
        addresses[node] = _run([kubectl, *kc, "get", "node", node, "-o",
                                'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}']).strip()
    for node in nodes:
        config = json.dumps(ptp_conflist(pod_cidr=cidrs[node]), indent=2)
        subprocess.run(["docker", "exec", "-i", node, "sh", "-c", "cat > /etc/cni/net.d/10-slm-ptp.conflist"],
                       input=config, text=True, check=True, capture_output=True)
        for other in nodes:
            if other != node:
                _run(["docker", "exec", node, "ip", "route", "replace", cidrs[other], "via", addresses[other]])


def _wait_value(get: Callable[[], str], *, what: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value:
            return value
        if time.monotonic() > deadline:
            raise KindError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def kind_down(*, bin_dir: str | Path, run_dir: str | Path, name: str, say: Say = print) -> int:
    """Delete the kind cluster; a no-op when it does not exist. Returns the exit code."""
    kind_bin = _binary(bin_dir, "kind")
    ok, why = docker_available()
    if not ok:
        say(f"nothing to delete: {why}")
        return 0
    _run([kind_bin, "delete", "cluster", "--name", name, "--kubeconfig", str(Path(run_dir).absolute() / "kubeconfig")])
    say(f"kind cluster {name} deleted")
    # kind leaves its Docker network behind; remove it once no other kind cluster uses it.
    if not _run([kind_bin, "get", "clusters"], check=False).split():
        if subprocess.run(["docker", "network", "rm", "kind"], capture_output=True).returncode == 0:
            say("docker network kind removed")
    return 0


def _binary(bin_dir: str | Path, name: str) -> str:
    path = Path(bin_dir).expanduser().absolute() / name
    if not path.is_file():
        raise KindError(f"missing binary {path}; build it with `make binaries`")
    return str(path)


def _run(argv: list[str], *, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0 and check:
        raise KindError(f"`{' '.join(argv[:4])} ...` failed ({result.returncode}): {result.stderr.strip()[-1000:]}")
    return result.stdout

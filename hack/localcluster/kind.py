"""A kind cluster (real kubelet in Docker) whose node poses as a GPU node.

The control plane of :mod:`.controlplane` simulates pods; kind runs them. Where a Docker engine
exists, ``kind-up`` makes a one-node kind cluster and gives its node the labels and the
``nvidia.com/gpu`` capacity of the first device-plugin node of the node config, patched on the
node status the way a device plugin's advertisement would appear (the kubelet keeps an extended
resource it did not set until it restarts).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

from . import config as nodeconfig

Say = Callable[[str], None]


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


def kind_up(*, bin_dir: str | Path, run_dir: str | Path, name: str, config_path: str | Path, say: Say = print) -> int:
    """Create the kind cluster (if absent) and fake one GPU node on it; return the exit code."""
    ok, why = docker_available()
    if not ok:
        raise KindError(f"kind needs a Docker engine: {why}")
    kind_bin, kubectl = _binary(bin_dir, "kind"), _binary(bin_dir, "kubectl")
    template = next((n for n in nodeconfig.load_config(path=config_path).nodes if n.gpu and n.gpu.advertised), None)
    if template is None:
        raise KindError(f"{config_path} has no device-plugin GPU node (sharing none/mps/time-slicing) to copy onto the kind node")
    kubeconfig = Path(run_dir).absolute() / "kubeconfig"
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    existing = _run([kind_bin, "get", "clusters"]).split()
    if name not in existing:
        say(f"creating kind cluster {name} (pulls the node image on first use)")
        _run([kind_bin, "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "180s"])
    else:
        _run([kind_bin, "export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)])
    kc = ["--kubeconfig", str(kubeconfig)]
    node = _run([kubectl, *kc, "get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]).strip()
    labels = {k: v for k, v in nodeconfig.node_labels(node=template).items() if k.startswith("nvidia.com/")}
    _run([kubectl, *kc, "label", "node", node, "--overwrite", *(f"{k}={v}" for k, v in labels.items())])
    gpus = str(template.gpu.advertised)
    patch = {"status": {"capacity": {nodeconfig.GPU_RESOURCE: gpus}, "allocatable": {nodeconfig.GPU_RESOURCE: gpus}}}
    _run([kubectl, *kc, "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(patch)])
    say(f"kind node {node} poses as {template.name}: {gpus} x {nodeconfig.GPU_RESOURCE} ({template.gpu.product})")
    say(f"export KUBECONFIG={kubeconfig}")
    return 0


def kind_down(*, bin_dir: str | Path, run_dir: str | Path, name: str, say: Say = print) -> int:
    """Delete the kind cluster; a no-op when it does not exist. Returns the exit code."""
    kind_bin = _binary(bin_dir, "kind")
    ok, why = docker_available()
    if not ok:
        say(f"nothing to delete: {why}")
        return 0
    _run([kind_bin, "delete", "cluster", "--name", name, "--kubeconfig", str(Path(run_dir).absolute() / "kubeconfig")])
    say(f"kind cluster {name} deleted")
    return 0


def _binary(bin_dir: str | Path, name: str) -> str:
    path = Path(bin_dir).expanduser().absolute() / name
    if not path.is_file():
        raise KindError(f"missing binary {path}; build it with `make binaries`")
    return str(path)


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise KindError(f"`{' '.join(argv[:4])} ...` failed ({result.returncode}): {result.stderr.strip()[-1000:]}")
    return result.stdout

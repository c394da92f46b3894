"""The end-to-end suite's cluster: real pods in a kind cluster built here (``make e2e``).

``e2e`` (session) makes sure a Docker engine answers, builds the project's images
(``hack/images.sh``: cached layers make a rerun take seconds), and brings up the kind cluster
(``hack/cluster.py kind-up``: reused when it exists) with those images loaded. Nothing
is simulated but the GPU: the nodes only pose as GPU nodes (``hack/kind-gpu-nodes.yaml``), and
vLLM is its CPU build. Without a Docker engine (or, not being root, without the Debian base image
debootstrap would make) the suite skips, saying why; with ``SLM_REQUIRE_E2E=1`` (``make e2e``,
``.ci/run``) that is a failure instead.

The cluster is ``make kind-up``'s (``slm-gpu``, ``.run/kind``), left running for the next session
(``make kind-down`` removes it), unless ``SLM_E2E_DOWN=1``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.localcluster.cluster import REPO, Cluster, cluster_script, find_binaries
from tests.kubetest import TEST_RUN_ROOT

E2E_DIR = Path(__file__).parent
#: The cluster `make kind-up` makes (hack/cluster.py's defaults): `make e2e` reuses it.
RUN_DIR = TEST_RUN_ROOT / "kind"
CLUSTER_NAME = "slm-gpu"


@dataclasses.dataclass(frozen=True)
class Images:
    operator: str
    engine: str


@dataclasses.dataclass(frozen=True)
class E2E:
    cluster: Cluster
    images: Images


def _unavailable(reason: str) -> None:
    if os.environ.get("SLM_REQUIRE_E2E") == "1":
        pytest.fail(f"SLM_REQUIRE_E2E=1 but the end-to-end cluster cannot run: {reason}", pytrace=False)
    pytest.skip(f"end-to-end tests need a Docker engine and a kind cluster: {reason}")


def _stage(name: str, argv: list[str], *, timeout: float) -> str:
    """Run one setup stage, print its time, return its stdout; fail with its output's tail."""
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    print(f"[e2e] {name}: {time.monotonic() - started:.0f} s", flush=True)
    if result.returncode != 0:
        pytest.fail(f"{name} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}", pytrace=False)
    return result.stdout


@pytest.fixture(scope="session")
def e2e() -> Iterator[E2E]:
    check = subprocess.run(["bash", "hack/docker-engine.sh", "--check"], capture_output=True, text=True, cwd=REPO)
    if check.returncode != 0:
        _unavailable(f"no Docker engine answers ({check.stdout.strip()}); `bash hack/docker-engine.sh` starts one")
    bin_dir, why = find_binaries()
    if bin_dir is None:
        _unavailable(why)
    if os.geteuid() != 0 and subprocess.run(["docker", "image", "inspect", "slm-local/debian:bookworm"],
                                            capture_output=True).returncode != 0:
        _unavailable("the Debian base image is built with debootstrap, which needs root: run "
                     "`sudo bash hack/base-image.sh` once")
    built = dict(line.split("=", 1) for line in _stage("images", ["bash", "hack/images.sh"], timeout=3600).split()
                 if "=" in line)
    images = Images(operator=built["operator"], engine=built["e2e-engine"])
    _stage("kind-up", [
        str(REPO / ".venv" / "bin" / "python"), "hack/cluster.py", "kind-up", "--bin", bin_dir,
        "--run-dir", str(RUN_DIR), "--name", CLUSTER_NAME, "--load", images.operator, "--load", images.engine,
    ], timeout=1800)
    cluster = Cluster.of_run_dir(run_dir=RUN_DIR, bin_dir=bin_dir)
    try:
        yield E2E(cluster=cluster, images=images)
    finally:
        if os.environ.get("SLM_E2E_DOWN") == "1":
            cluster_script("kind-down", "--bin", bin_dir, "--run-dir", str(RUN_DIR), "--name", CLUSTER_NAME,
                           timeout=300, check=False)
        else:
            print(f"[e2e] kind cluster {CLUSTER_NAME} left running: KUBECONFIG={cluster.kubeconfig}; "
                  "`make kind-down` removes it")

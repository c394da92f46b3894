"""The tests' side of the cluster harness: where test sessions put their clusters, and their sweep.

The harness itself (:class:`Cluster`, :func:`wait_for`, starting and stopping a local control
plane, finding the binaries) is ``hack/localcluster/cluster.py``, shared with the demo and the
benches; its names are re-exported here, so tests import :func:`wait_for` and the :class:`Cluster`
type from this module. The session fixture in ``tests/conftest.py`` builds on both. Nothing in a
test should sleep: poll with :func:`wait_for`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hack.localcluster.cluster import (
    REPO,
    Cluster,
    CommandFailed,
    StopWaiting,
    ca_file_of,
    cluster_script,
    find_binaries,
    run,
    server_of,
    start_cluster,
    stop_cluster,
    wait_for,
)
from hack.localcluster.processes import pid_exists

__all__ = [
    "REPO",
    "TEST_RUN_ROOT",
    "Cluster",
    "CommandFailed",
    "StopWaiting",
    "ca_file_of",
    "cluster_script",
    "existing_cluster",
    "find_binaries",
    "processes_mentioning",
    "run",
    "server_of",
    "start_cluster",
    "stop_cluster",
    "sweep_stale_test_clusters",
    "wait_for",
]

#: Where test sessions put their clusters: one run dir per pytest process, so two sessions in one
#: checkout never stop each other's cluster.
TEST_RUN_ROOT = REPO / ".run"


def sweep_stale_test_clusters() -> None:
    """Stop and remove the clusters of earlier test sessions whose pytest process is gone."""
    for run_dir in TEST_RUN_ROOT.glob("test-cluster-*"):
        owner = run_dir.name.rsplit("-", 1)[1]
        if not owner.isdigit() or pid_exists(int(owner)):
            continue
        stop_cluster(run_dir=run_dir, timeout=60)
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

"""Shared pytest setup: markers by folder, the session's Kubernetes cluster and test namespaces.

* Tests under ``tests/integration/`` are marked ``integration``.
* ``cluster`` (session): a local control plane with simulated GPU nodes started by
  ``hack/cluster.py`` (through the harness, ``hack/localcluster/cluster.py``) in
  ``.run/test-cluster-<pytest pid>`` (or ``$SLM_TEST_RUN_DIR``), stopped at
  the end (its logs stay until a later session sweeps run dirs whose pytest is gone);
  or, with ``USE_EXISTING_CLUSTER=true``, the cluster of ``$KUBECONFIG``, left as it is. It starts
  only when a collected test asks for it. Without binaries it skips, unless ``SLM_REQUIRE_CLUSTER=1``
  (``make test``) turns that into a failure.
* ``namespace``: a fresh ``t-<random>`` namespace per test, PodSecurity ``baseline`` enforced.
* Tests under ``tests/e2e/`` are marked ``e2e``; their kind cluster is ``tests/e2e/conftest.py``'s.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import kubetest

INTEGRATION_DIR = Path(__file__).parent / "integration"
E2E_DIR = Path(__file__).parent / "e2e"

#: PodSecurity level of test namespaces. NB: `baseline`, the level our vLLM pods are written to
#: pass (no privileged, hostPath or hostNetwork), and which still allows images that run as root,
#: as the vLLM images do; `restricted` would need runAsNonRoot and a seccomp profile.
POD_SECURITY_LEVEL = "baseline"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


def _unavailable(reason: str) -> None:
    """Skip, or fail where the cluster is required (SLM_REQUIRE_CLUSTER=1, as in `make test`)."""
    if os.environ.get("SLM_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"SLM_REQUIRE_CLUSTER=1 but no cluster can start: {reason}", pytrace=False)
    pytest.skip(f"no Kubernetes cluster for integration tests: {reason}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[kubetest.Cluster]:
    bin_dir, why = kubetest.find_binaries()
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        try:
            existing = kubetest.existing_cluster(bin_dir=bin_dir)
        except RuntimeError as e:
            _unavailable(str(e))
        yield existing
        return
    if bin_dir is None:
        _unavailable(why)
    kubetest.sweep_stale_test_clusters()
    run_dir = os.environ.get("SLM_TEST_RUN_DIR") or str(kubetest.TEST_RUN_ROOT / f"test-cluster-{os.getpid()}")
    try:
        started = kubetest.start_cluster(bin_dir=bin_dir, run_dir=run_dir)
    except (kubetest.CommandFailed, subprocess.TimeoutExpired) as e:
        # NB: the binaries exist, so a cluster that does not start is a real failure, not a skip.
        kubetest.stop_cluster(run_dir=run_dir, timeout=300)
        pytest.fail(f"the local control plane did not start:\n{e}", pytrace=False)
    try:
        yield started
    finally:
        kubetest.stop_cluster(run_dir=run_dir, timeout=120)


def create_namespace(cluster: kubetest.Cluster, name: str) -> str:
    """Namespace ``name`` under the tests' Pod Security level, once its ``default`` ServiceAccount
    exists (pods are refused before)."""
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n"
            f"  name: {name}\n  labels:\n"
            f"    pod-security.kubernetes.io/enforce: {POD_SECURITY_LEVEL}\n"
            "    pod-security.kubernetes.io/enforce-version: latest\n"
        ),
    )
    # NB: pods are refused until the ServiceAccount controller has made `default` in the namespace.
    # Up to 90 s: a controller-manager just restarted (the control-plane fault tests) starts its
    # controllers only after its informers have synced, which took over 30 s here on 2 cores.
    kubetest.wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, "-o", "name",
                                check=False).returncode == 0,
        timeout=90,
        message=f"ServiceAccount default in namespace {name}",
    )
    return name


@pytest.fixture
def namespace(cluster: kubetest.Cluster) -> Iterator[str]:
    name = create_namespace(cluster, f"t-{secrets.token_hex(4)}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

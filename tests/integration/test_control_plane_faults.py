"""The control plane failing under the operator: the API server stopped for 30 s while a service's
replicas start, and etcd restarted under a settled cluster.

NB: after the API server's restart it answers the operator's ServiceAccount 403 for a moment (its
RBAC authorizer not synced yet); the own watches back off at most ``kube.WATCH_BACKOFF``'s 10 s, so
readiness catches up within seconds of the server's return.

On a cluster of their own (``hack/cluster.py up`` in a run dir of this module's, the chart and an
operator with a 2 s retry interval): an outage leaves a cluster's scheduler and controllers
catching up for a while, which the shared cluster's next tests would feel. Each fault must end
with the service Ready, exactly its groups and pods (no duplicate, nothing orphaned), the operator
process the same one, and its own watches working again: a GPU freed after the outage still wakes
a service that waits for one (an event, no timer polls it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from hack.localcluster.controlplane import component_stopped
from tests import kubetest
from tests.conftest import create_namespace
from tests.integration.operator_harness import (
    OperatorProcess,
    apply_yaml,
    install_chart,
    serviceaccount_kubeconfig,
    slms,
    wait_phase,
)
from tests.integration.test_leader_election import l4_service
from tests.integration.test_operator_lifecycle import children, ready_pods, static_service
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30


@pytest.fixture(scope="module")
def own(cluster, tmp_path_factory) -> Iterator[tuple[kubetest.Cluster, OperatorProcess]]:
    """A control plane, chart and operator of this module's own (``cluster``: the session's, only
    for its binaries and its verdict on whether clusters can run here)."""
    run_dir = kubetest.TEST_RUN_ROOT / f"test-cluster-cp-{os.getpid()}"
    started = kubetest.start_cluster(bin_dir=cluster.bin_dir, run_dir=run_dir)
    try:
        install_chart(started)
        work = tmp_path_factory.mktemp("cp-operator")
        operator = OperatorProcess(kubeconfig=serviceaccount_kubeconfig(started, path=work / "kubeconfig"),
                                   work_dir=work, extra_env={"SLM_RETRY_SECONDS": "2"})
        operator.start()
        try:
            yield started, operator
        finally:
            operator.stop()
    finally:
        kubetest.stop_cluster(run_dir=run_dir, timeout=120)


def api_ready(cluster: kubetest.Cluster) -> bool:
    result = cluster.kubectl("get", "--raw", "/readyz", check=False)
    return result.returncode == 0 and result.stdout.strip() == "ok"


def exactly(cluster: kubetest.Cluster, namespace: str, name: str, *, groups: int, pods: int) -> None:
    """Exactly ``groups`` StatefulSets and ``pods`` pods of service ``name``, every pod Ready."""
    statefulsets = children(cluster, namespace, "statefulsets", name)
    assert len(statefulsets) == groups, [s["metadata"]["name"] for s in statefulsets]
    ready_pods(cluster, namespace, name, pods)  # NB: waits until exactly that many, all Ready


def test_the_api_server_stopped_30_s_while_replicas_start_heals_with_nothing_twice(own) -> None:
    cluster, operator = own
    namespace = create_namespace(cluster, "outage")
    pid = operator.pid
    apply_yaml(cluster, namespace, static_service("outage", gpus=2, sharing="mps"))
    wait_for(lambda: len(children(cluster, namespace, "statefulsets", "outage")) == 2, timeout=60, interval=0.2,
             message="both groups applied")

    # The replicas are starting (one after another in each group) when the API server goes away.
    with component_stopped(run_dir=cluster.run_dir, name="kube-apiserver"):
        assert not api_ready(cluster)
        time.sleep(OUTAGE_SECONDS)
    wait_for(lambda: api_ready(cluster), timeout=60, interval=0.5, message="the API server ready again")

    obj = wait_phase(cluster, namespace, "outage", ("Ready",), timeout=120, operator=operator)
    assert obj["status"]["placement"]["ready"] == "4/4"
    exactly(cluster, namespace, "outage", groups=2, pods=4)
    assert operator.running and operator.pid == pid, "the operator restarted instead of riding it out"


def test_etcd_restarted_under_a_settled_cluster_leaves_the_operator_watching(own) -> None:
    cluster, operator = own
    namespace = create_namespace(cluster, "etcd")
    names = [f"l4-{i}" for i in range(5)]  # NB: the stock config has one node of 4 unshared L4 GPUs
    for name in names:
        apply_yaml(cluster, namespace, l4_service(name))

    def four_ready() -> dict[str, list[str]] | None:
        by_phase: dict[str, list[str]] = {}
        for name in names:
            by_phase.setdefault((slms(cluster, namespace, name).get("status") or {}).get("phase", ""), []).append(name)
        return by_phase if sorted(by_phase) == ["Pending", "Ready"] and len(by_phase["Ready"]) == 4 else None
    settled = wait_for(four_ready, timeout=120, interval=0.5, message="4 Ready, 1 Pending for a GPU")
    assert settled is not None
    (waiting,) = settled["Pending"]

    with component_stopped(run_dir=cluster.run_dir, name="etcd"):
        wait_for(lambda: not api_ready(cluster), timeout=30, interval=0.5, message="the API server noticing")
    wait_for(lambda: api_ready(cluster), timeout=90, interval=0.5, message="the API server ready again")

    # kopf's watches are back: a new service is served.
    apply_yaml(cluster, namespace, static_service("after-etcd", gpus=1, sharing="mps"))
    wait_phase(cluster, namespace, "after-etcd", ("Ready",), timeout=120, operator=operator)
    # The own watches are back: a GPU freed now wakes the waiting service.
    cluster.kubectl("delete", "slmservice", settled["Ready"][0], "-n", namespace, "--timeout=60s")
    wait_phase(cluster, namespace, waiting, ("Ready",), timeout=120, operator=operator)
    for name in [*settled["Ready"][1:], waiting]:
        exactly(cluster, namespace, name, groups=1, pods=1)
    exactly(cluster, namespace, "after-etcd", groups=1, pods=2)

"""Two operator replicas on the real control plane: one leader, no double-booked GPU, a take-over.

Both replicas run as the chart's ServiceAccount with the chart's RBAC (leader election is on by
default, so the Role grants the one Lease). Scarce GPUs make double-booking visible: the L4 node
has 4 whole GPUs, and 6 services each want one; two acting operators would each see the same free
GPUs and plan more groups than fit, leaving pods the scheduler cannot place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest

from tests.integration.operator_harness import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    apply_yaml,
    serviceaccount_kubeconfig,
    slms,
)
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration
L4, L4_NODE, L4_GPUS = "NVIDIA-L4", "gpu-l4-0", 4
LEASE = "slm-operator-leader"  # NB: the chart's default; its Role grants get/patch on this name only
DURATION = 6


def l4_service(name: str) -> dict:
    return {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "metadata": {"name": name},
            "spec": {"model": "facebook/opt-125m", "gpu": {"product": L4, "sharing": "exclusive"},
                     "profiling": {"mode": "static", "static": {"batchSize": 64, "replicasPerGPU": 1,
                                                                 "memoryPerReplicaGiB": 6,
                                                                 "tokensPerSecondPerGPU": 5000}},
                     "scale": {"gpus": 1}}}


def lease(cluster) -> dict:
    result = cluster.kubectl("get", "lease", LEASE, "-n", OPERATOR_NAMESPACE, "-o", "json", check=False)
    return {} if result.returncode else json.loads(result.stdout)


def holder(cluster) -> str:
    return (lease(cluster).get("spec") or {}).get("holderIdentity") or ""


def l4_gpus_requested(cluster) -> tuple[int, int]:
    """nvidia.com/gpu requested by pods bound to the L4 node, and by pods no node took."""
    pods = cluster.get_json("pods", "-A")["items"]
    bound = pending = 0
    for pod in pods:
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        gpus = sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
                   for c in pod["spec"]["containers"])
        if pod["spec"].get("nodeName") == L4_NODE:
            bound += gpus
        elif not pod["spec"].get("nodeName") and gpus:
            pending += gpus
    return bound, pending


def placed(cluster, namespace: str, names: list[str]) -> list[str]:
    return [n for n in names if (slms(cluster, namespace, n).get("status") or {}).get("phase") == "Ready"]


def test_two_replicas_elect_one_leader_book_no_gpu_twice_and_the_standby_takes_over(
        cluster, operator, namespace, tmp_path):
    operator.stop()  # NB: the shared operator runs without leader election; it must not act here too
    cluster.kubectl("delete", "lease", LEASE, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    kubeconfig = serviceaccount_kubeconfig(cluster, path=tmp_path / "kubeconfig")
    replicas = {name: OperatorProcess(kubeconfig=kubeconfig, work_dir=tmp_path / name,
                                      log_path=tmp_path / f"{name}.log", extra_env={
                                          "SLM_LEADER_ELECTION": "true", "SLM_POD_NAME": name,
                                          "SLM_LEASE_DURATION_SECONDS": str(DURATION)})
                for name in ("op-a", "op-b")}
    try:
        replicas["op-a"].start()
        wait_for(lambda: holder(cluster) == "op-a", timeout=30, message="op-a to hold the Lease")
        replicas["op-b"].start()  # NB: start() returns once its liveness answers: a standby is alive
        free = L4_GPUS - l4_gpus_requested(cluster)[0]
        names = [f"l4-{i}" for i in range(6)]
        for name in names:
            apply_yaml(cluster, namespace, l4_service(name))

        wait_for(lambda: len(placed(cluster, namespace, names)) == free or None, timeout=90,
                 message=f"{free} of 6 services placed on the {free} free L4 GPUs")
        bound, pending = l4_gpus_requested(cluster)
        assert bound <= L4_GPUS and pending == 0, (bound, pending)
        assert holder(cluster) == "op-a"
        standby_log = replicas["op-b"].log_path.read_text(errors="replace")
        assert "waiting for Lease" in standby_log
        assert "reconcile" not in standby_log and namespace not in standby_log, "the standby acted"

        # The leader dies without releasing: op-b takes over once the Lease is DURATION s stale.
        replicas["op-a"].kill()
        wait_for(lambda: holder(cluster) == "op-b", timeout=DURATION * 4, message="op-b to take the Lease over")
        assert lease(cluster)["spec"]["leaseTransitions"] >= 1
        freed = placed(cluster, namespace, names)[0]
        cluster.kubectl("delete", "slmservice", freed, "-n", namespace, "--wait=true")
        waiting = [n for n in names if n != freed]
        try:
            wait_for(lambda: len(placed(cluster, namespace, waiting)) == free or None, timeout=90,
                     message="the new leader to place a waiting service on the freed GPU")
        except AssertionError as exc:
            seen = cluster.kubectl("get", "slms,statefulsets,pods", "-n", namespace, "-o", "wide", check=False)
            if replicas["op-b"].pid:  # NB: its threads' stacks, into its log (``__main__``)
                os.kill(replicas["op-b"].pid, signal.SIGUSR1)
                time.sleep(1)
            raise AssertionError(f"{exc}\n{seen.stdout}{seen.stderr}\nop-b log:\n"
                                 f"{replicas['op-b'].log_tail(lines=400)}") from None
        bound, pending = l4_gpus_requested(cluster)
        assert bound <= L4_GPUS and pending == 0, (bound, pending)

        # A clean stop releases the Lease at once.
        replicas["op-b"].stop()
        assert holder(cluster) == "", lease(cluster)
    finally:
        for replica in replicas.values():
            with contextlib.suppress(Exception):
                replica.kill()
        cluster.kubectl("delete", "slmservice", "--all", "-n", namespace, "--wait=false", check=False)
        operator.start()

"""Moving a Ready service's GPU group on the real control plane (scheduler, StatefulSet controller,
KWOK pods turning Ready): make-before-break, with no pod left Pending by the operator's affinity."""

from __future__ import annotations

from typing import Any

import pytest

from hack.localcluster.config import (
    ClusterConfig,
    GpuSpec,
    NodeSpec,
    dra_manifests,
    node_manifest,
)
from hack.localcluster.controlplane import component_stopped
from tests.integration.operator_harness import apply_yaml, operator_with, slms, wait_phase
from tests.integration.test_operator_lifecycle import children, static_service
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}.get(kind, {})


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


def _settled(cluster, namespace: str, name: str, count: int, timeout: float = 150) -> list[dict[str, Any]]:
    """Exactly ``count`` pods of service ``name``, all Ready: none of a removed group left behind."""
    def settled() -> list[dict[str, Any]] | None:
        pods = children(cluster, namespace, "pods", name)
        return pods if len(pods) == count and all(_ready(p) for p in pods) else None
    return wait_for(settled, timeout=timeout, interval=0.5, message=f"exactly {count} Ready pods of {name}")


def test_a_sharing_change_keeps_the_old_group_serving_until_the_new_one_is_ready(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("mv", gpus=1, sharing="mps"))
    wait_phase(cluster, namespace, "mv", ("Ready",), operator=operator)
    _settled(cluster, namespace, "mv", 2)

    apply_yaml(cluster, namespace, static_service("mv", gpus=1, sharing="time-slicing"))
    seen: list[tuple[dict[str, int], dict[str, Any]]] = []

    def moved() -> dict[str, Any] | None:
        groups = {s["metadata"]["name"]: (s.get("status") or {}).get("readyReplicas", 0)
                  for s in children(cluster, namespace, "statefulsets", "mv")}
        obj = slms(cluster, namespace, "mv")
        seen.append((groups, obj))
        done = (list(groups) == ["mv-g1"] and obj["status"]["phase"] == "Ready"
                and obj["status"]["placement"]["mechanism"] == "time-slicing"
                and _condition(obj, "Progressing").get("reason") == "Complete")
        return obj if done else None

    obj = wait_for(moved, timeout=150, interval=0.3, message="mv moved to time-slicing")
    # The old group served, Ready, until the new one was: never a moment without two Ready replicas.
    assert any(set(groups) == {"mv-g0", "mv-g1"} for groups, _ in seen), "the groups never ran side by side"
    for groups, status in seen:
        assert sum(groups.values()) >= 2, f"a moment with fewer than 2 Ready replicas: {groups}"
        assert groups.get("mv-g0", 2) == 2 and (groups.get("mv-g1") == 2 or "mv-g0" in groups), groups
        assert _condition(status, "Available").get("status") == "True", status["status"]
    moving = [_condition(s, "Progressing") for _, s in seen if _condition(s, "Progressing").get("reason") == "Moving"]
    assert moving and moving[0]["message"].startswith(
        "moving group mv-g0 from mps on node gpu-h100-0 to time-slicing: ")

    # Then: one group, its pods Ready on the time-slicing node; no duplicate, nothing of the old one left.
    pods = _settled(cluster, namespace, "mv", 2)
    assert {p["spec"]["nodeName"] for p in pods} == {"gpu-h100-1"}
    assert {p["metadata"]["labels"]["slm.pareto.dev/group"] for p in pods} == {"1"}
    assert [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "mv")] == ["mv-g1"]
    assert [g["name"] for g in obj["status"]["placement"]["groups"]] == ["mv-g1"]


PRODUCT = "NVIDIA-H100-MOVE-TEST"


def _node_spec(name: str, *, product: str = PRODUCT, sharing: str = "mps") -> NodeSpec:
    return NodeSpec(name=name, cpu="64", memory="512Gi", pods="110", ephemeral_storage="100Gi", labels={},
                    gpu=GpuSpec(product=product, memory_mib=81559, count=1, sharing=sharing,
                                replicas=4 if sharing == "mps" else 1))


def _node(name: str, index: int) -> dict[str, Any]:
    return node_manifest(node=_node_spec(name), index=index)


def test_a_deleted_node_under_a_group_is_re_placed_on_another(cluster, operator, namespace):
    names = ["gpu-move-0", "gpu-move-1"]
    api = cluster.admin_api()
    try:
        for i, name in enumerate(names):
            api.create(_node(name, 200 + i))
        wait_for(lambda: all(_ready(cluster.get_json("node", n)) for n in names), timeout=60, interval=0.5,
                 message="the test's nodes Ready")
        svc = static_service("lost", gpus=1, sharing="mps")
        svc["spec"]["gpu"]["product"] = PRODUCT
        apply_yaml(cluster, namespace, svc)
        wait_phase(cluster, namespace, "lost", ("Ready",), operator=operator)
        (first,) = {p["spec"]["nodeName"] for p in _settled(cluster, namespace, "lost", 2)}
        (other,) = set(names) - {first}

        cluster.kubectl("delete", "node", first, "--wait=false")

        def replaced() -> dict[str, Any] | None:
            obj = slms(cluster, namespace, "lost")
            groups = obj["status"]["placement"]["groups"]
            ok = obj["status"]["phase"] == "Ready" and [(g["name"], g.get("node")) for g in groups] == [
                ("lost-g1", other)]
            return obj if ok else None
        wait_for(replaced, timeout=120, interval=0.5, message=f"lost re-placed on {other}")
        pods = _settled(cluster, namespace, "lost", 2)
        assert {p["spec"]["nodeName"] for p in pods} == {other}
        assert [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "lost")] == ["lost-g1"]
    finally:
        for name in names:
            cluster.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")


def test_a_dra_group_moving_to_mps_takes_its_claim_with_it(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("dm", gpus=1, sharing="dra"))
    wait_phase(cluster, namespace, "dm", ("Ready",), operator=operator)
    assert {p["spec"]["nodeName"] for p in _settled(cluster, namespace, "dm", 2)} == {"gpu-h100-dra-0"}
    (claim,) = [c["metadata"]["name"] for c in children(cluster, namespace, "resourceclaims", "dm")]

    apply_yaml(cluster, namespace, static_service("dm", gpus=1, sharing="mps"))
    wait_for(lambda: [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "dm")] == ["dm-g1"]
             and _condition(slms(cluster, namespace, "dm"), "Progressing").get("reason") == "Complete",
             timeout=150, interval=0.5, message="dm moved to mps")
    assert {p["spec"]["nodeName"] for p in _settled(cluster, namespace, "dm", 2)} == {"gpu-h100-0"}
    wait_for(lambda: children(cluster, namespace, "resourceclaims", "dm") == [], timeout=60, interval=0.5,
             message=f"claim {claim} of the old group gone")


CORDON_PRODUCT = "NVIDIA-H100-CORDON-TEST"


def test_a_group_waiting_for_a_node_cordoned_before_its_pods_bound_moves_to_another(cluster, operator, namespace):
    """The planner pins a device-plugin group to a node (``slm.pareto.dev/node``); the node is
    cordoned before the scheduler binds its pods (here: the scheduler is stopped meanwhile). Its
    pods could never start there: the group is replaced on the other node at once."""
    names = ["gpu-cordon-0", "gpu-cordon-1"]
    api = cluster.admin_api()
    try:
        for i, name in enumerate(names):
            api.create(node_manifest(node=_node_spec(name, product=CORDON_PRODUCT), index=220 + i))
        wait_for(lambda: all(_ready(cluster.get_json("node", n)) for n in names), timeout=60, interval=0.5,
                 message="the test's nodes Ready")
        svc = static_service("cordon", gpus=1, sharing="mps")
        svc["spec"]["gpu"]["product"] = CORDON_PRODUCT
        with component_stopped(run_dir=cluster.run_dir, name="kube-scheduler"):
            apply_yaml(cluster, namespace, svc)
            (first,) = wait_for(lambda: children(cluster, namespace, "statefulsets", "cordon") or None, timeout=60,
                                interval=0.5, message="the group applied")
            pinned = first["metadata"]["annotations"]["slm.pareto.dev/node"]
            (other,) = set(names) - {pinned}
            assert all(not p["spec"].get("nodeName") for p in children(cluster, namespace, "pods", "cordon"))
            cluster.kubectl("cordon", pinned)

            def moved() -> list[dict[str, Any]] | None:
                sets = children(cluster, namespace, "statefulsets", "cordon")
                return sets if [(s["metadata"]["name"], s["metadata"]["annotations"]["slm.pareto.dev/node"])
                                for s in sets] == [("cordon-g1", other)] else None
            wait_for(moved, timeout=60, interval=0.5, message=f"the group re-pinned to {other}, the old one gone")
        wait_phase(cluster, namespace, "cordon", ("Ready",), timeout=120, operator=operator)
        assert {p["spec"]["nodeName"] for p in _settled(cluster, namespace, "cordon", 2)} == {other}
    finally:
        cluster.kubectl("delete", "slmservice", "cordon", "-n", namespace, "--wait=false", check=False)
        for name in names:
            cluster.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)


NOT_READY_ANNOTATION = "local.slm.pareto.dev/not-ready"  # NB: hack/localcluster/kwok-stages.yaml
NOT_READY_PRODUCTS = {"mps": "NVIDIA-H100-NOTREADY-MPS", "dra": "NVIDIA-H100-NOTREADY-DRA"}


def test_a_node_not_ready_under_a_group_moves_it_after_the_grace_period_device_plugin_and_dra(
        cluster, operator, namespace, tmp_path):
    """A node reports Ready=False, as a kubelet whose container runtime is down does (the local
    cluster's KWOK stage ``node-not-ready``, on annotation ``local.slm.pareto.dev/not-ready``); its
    replicas stay Ready as far as the API says. Past SLM_NODE_NOT_READY_SECONDS the node's status
    event alone moves the group to the other node of its product; for DRA with a claim of its own."""
    api = cluster.admin_api()
    nodes = {sharing: [_node_spec(f"gpu-nr-{sharing}-{i}", product=product, sharing=sharing) for i in range(2)]
             for sharing, product in NOT_READY_PRODUCTS.items()}
    specs = [spec for pair in nodes.values() for spec in pair]
    slices = [o for o in dra_manifests(config=ClusterConfig(nodes=tuple(specs))) if o["kind"] == "ResourceSlice"]
    env = {"SLM_NODE_NOT_READY_SECONDS": "5", "SLM_RETRY_SECONDS": "2"}
    with operator_with(operator, work_dir=tmp_path, env=env) as fast:
        try:
            for i, spec in enumerate(specs):
                api.create(node_manifest(node=spec, index=210 + i))
            for obj in slices:
                api.create(obj)
            wait_for(lambda: all(_ready(cluster.get_json("node", s.name)) for s in specs), timeout=60, interval=0.5,
                     message="the test's nodes Ready")
            first: dict[str, str] = {}
            for sharing, product in NOT_READY_PRODUCTS.items():
                svc = static_service(f"nr-{sharing}", gpus=1, sharing=sharing)
                svc["spec"]["gpu"]["product"] = product
                apply_yaml(cluster, namespace, svc)
            for sharing in NOT_READY_PRODUCTS:
                wait_phase(cluster, namespace, f"nr-{sharing}", ("Ready",), operator=fast)
                (first[sharing],) = {p["spec"]["nodeName"] for p in _settled(cluster, namespace, f"nr-{sharing}", 2)}
            claims = {c["metadata"]["name"] for c in children(cluster, namespace, "resourceclaims", "nr-dra")}
            assert claims, "the DRA group has no claim"

            for node_name in first.values():
                cluster.kubectl("annotate", "node", node_name, f"{NOT_READY_ANNOTATION}=true")
            wait_for(lambda: not any(_ready(cluster.get_json("node", n)) for n in first.values()), timeout=60,
                     interval=0.5, message="the annotated nodes NotReady")

            for sharing, lost in first.items():
                name = f"nr-{sharing}"
                (other,) = {s.name for s in nodes[sharing]} - {lost}

                def moved(name=name, other=other) -> dict[str, Any] | None:
                    obj = slms(cluster, namespace, name)
                    groups = obj["status"]["placement"]["groups"]
                    return obj if obj["status"]["phase"] == "Ready" and [
                        (g["name"], g.get("node")) for g in groups] == [(f"{name}-g1", other)] else None
                wait_for(moved, timeout=120, interval=0.5, message=f"{name} moved off the NotReady node to {other}")
                # Nothing of the old group is left: its StatefulSet and pods are gone.
                assert [s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", name)] == [
                    f"{name}-g1"]
                pods = _settled(cluster, namespace, name, 2)
                assert {p["spec"]["nodeName"] for p in pods} == {other}
            moved_claims = {c["metadata"]["name"] for c in children(cluster, namespace, "resourceclaims", "nr-dra")}
            assert moved_claims - claims, "the moved DRA group has no claim of its own"
        finally:
            cluster.kubectl("delete", "slmservice", "--all", "-n", namespace, "--wait=false", check=False)
            for obj in slices:
                cluster.kubectl("delete", "resourceslice", obj["metadata"]["name"], "--ignore-not-found",
                                "--wait=false", check=False)
            for spec in specs:
                cluster.kubectl("delete", "node", spec.name, "--ignore-not-found", "--wait=false", check=False)

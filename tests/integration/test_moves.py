"""Moving a Ready service's GPU group on the real control plane (scheduler, StatefulSet controller,
KWOK pods turning Ready): make-before-break, with no pod left Pending by the operator's affinity."""

from __future__ import annotations

from typing import Any

import pytest

from hack.localcluster.config import GpuSpec, NodeSpec, node_manifest
from tests.integration.operator_harness import apply_yaml, slms, wait_phase
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


def _node(name: str, index: int) -> dict[str, Any]:
    spec = NodeSpec(name=name, cpu="64", memory="512Gi", pods="110", ephemeral_storage="100Gi", labels={},
                    gpu=GpuSpec(product=PRODUCT, memory_mib=81559, count=1, sharing="mps", replicas=4))
    return node_manifest(node=spec, index=index)


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

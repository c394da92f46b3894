"""spec.routing.inferencePool on the real control plane: the InferencePool child and the missing-CRD story.

The InferencePool CRD is our own stand-in (tests/integration/crds/inferencepools.yaml: the v1
fields the operator sets, with the upstream types, bounds and enums), installed and removed here.
The tests run in file order: first without the CRD (the service serves through its Service and
says how to install it), then with it (the pool's shape, owner, update, removal), last the CRD
removed under a routed service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator_harness import apply_yaml, get_json, slms, wait_phase
from tests.integration.test_operator_lifecycle import children, ready_pods, static_service
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration

POOL_CRD = "inferencepools.inference.networking.k8s.io"
POOL_CRD_FILE = Path(__file__).parent / "crds" / "inferencepools.yaml"


def install_pool_crd(cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(POOL_CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{POOL_CRD}", "--timeout=60s")
    wait_for(lambda: cluster.kubectl("get", "inferencepools", "-A", check=False).returncode == 0, timeout=30,
             message="InferencePools to be served")


def remove_pool_crd(cluster) -> None:
    cluster.kubectl("delete", "crd", POOL_CRD, "--ignore-not-found", "--wait=true", "--timeout=60s", timeout=90)
    wait_for(lambda: cluster.kubectl("get", "inferencepools", "-A", check=False).returncode != 0, timeout=30,
             message="InferencePools to be no longer served")


def pool(cluster, namespace: str, name: str) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "inferencepool", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def routed(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Routed"), None)


def routed_service(service: str, **picker: Any) -> dict[str, Any]:
    return static_service(service, routing={"inferencePool": {"endpointPicker": picker} if picker else {}})


@pytest.fixture(scope="module")
def without_pool_crd(cluster):
    remove_pool_crd(cluster)


@pytest.fixture
def pool_crd(cluster):
    install_pool_crd(cluster)


def test_without_the_crd_the_service_serves_and_says_how_to_install_it(
        cluster, operator, namespace, without_pool_crd):
    apply_yaml(cluster, namespace, routed_service("r"))
    obj = wait_phase(cluster, namespace, "r", ("Ready",), operator=operator)  # through the Service
    assert [s["metadata"]["name"] for s in get_json(cluster, "services", "-n", namespace)["items"]] == ["r"]
    cond = routed(obj)
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "InferencePoolCRDMissing")
    assert POOL_CRD in cond["message"] and "kubectl apply -f" in cond["message"]
    assert "requests reach the replicas through Service r" in cond["message"]
    events = get_json(cluster, "events", "-n", namespace, "--field-selector",
                      "involvedObject.name=r,reason=InferencePoolCRDMissing")["items"]
    assert [e["type"] for e in events] == ["Warning"] and events[0]["message"] == cond["message"]

    # The CRD arrives: the retry timer finds it, the pool appears, the condition turns True.
    install_pool_crd(cluster)
    wait_for(lambda: pool(cluster, namespace, "r"), timeout=60, message="the InferencePool once its CRD exists")
    wait_for(lambda: (routed(slms(cluster, namespace, "r")) or {}).get("status") == "True", timeout=30,
             message="Routed=True")
    assert slms(cluster, namespace, "r")["status"]["phase"] == "Ready"


def test_the_pool_selects_the_replicas_is_owned_follows_the_spec_and_goes_with_the_field(
        cluster, operator, namespace, pool_crd):
    apply_yaml(cluster, namespace, routed_service("p", failureMode="FailOpen"))
    obj = wait_phase(cluster, namespace, "p", ("Ready",), operator=operator)
    found = pool(cluster, namespace, "p")
    assert found is not None
    assert found["spec"] == {
        "selector": {"matchLabels": {"app.kubernetes.io/component": "model-server", "slm.pareto.dev/service": "p"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"group": "", "kind": "Service", "name": "p-epp", "port": {"number": 9002},
                              "failureMode": "FailOpen"},
    }
    (ref,) = found["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("SLMService", "p", obj["metadata"]["uid"],
                                                                         True)
    managed = json.loads(cluster.kubectl("get", "inferencepool", "p", "-n", namespace, "--show-managed-fields",
                                         "-o", "json").stdout)["metadata"]["managedFields"]
    assert [(m["manager"], m["operation"]) for m in managed] == [("slm-operator", "Apply")]
    # The pool's selector takes exactly the service's replicas, which serve on its target port.
    replicas = {p["metadata"]["name"] for p in ready_pods(cluster, namespace, "p", 2)}
    selector = ",".join(f"{k}={v}" for k, v in found["spec"]["selector"]["matchLabels"].items())
    selected = get_json(cluster, "pods", "-n", namespace, "-l", selector)["items"]
    assert {p["metadata"]["name"] for p in selected} == replicas
    assert {port["containerPort"] for p in selected for port in p["spec"]["containers"][0]["ports"]} == {8000}
    assert (routed(obj) or {}).get("reason") == "InferencePoolApplied"

    # A spec change reaches the pool (what the spec leaves unset is the operator's default again).
    apply_yaml(cluster, namespace, routed_service("p", name="shared-epp", port=9100))
    wait_for(lambda: (pool(cluster, namespace, "p") or {}).get("spec", {}).get("endpointPickerRef") == {
        "group": "", "kind": "Service", "name": "shared-epp", "port": {"number": 9100}, "failureMode": "FailClose"},
        timeout=60, message="the pool follows spec.routing")

    # Routing off: the pool and the condition go; the Service and the replicas stay.
    apply_yaml(cluster, namespace, static_service("p"))
    wait_for(lambda: pool(cluster, namespace, "p") is None, timeout=60, message="the pool deleted with the field")
    wait_for(lambda: routed(slms(cluster, namespace, "p")) is None, timeout=30, message="Routed removed")
    assert {p["metadata"]["name"] for p in ready_pods(cluster, namespace, "p", 2)} == replicas

    # Back on, then the SLMService deleted: the garbage collector takes the pool with it.
    apply_yaml(cluster, namespace, routed_service("p"))
    wait_for(lambda: pool(cluster, namespace, "p"), timeout=60, message="the pool back")
    cluster.kubectl("delete", "slmservice", "p", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: pool(cluster, namespace, "p") is None and not children(cluster, namespace, "services", "p"),
             timeout=90, message="the pool garbage-collected with its SLMService")


def test_a_bad_endpoint_picker_is_refused_by_the_api_server(cluster, installed_chart, namespace):
    bad = routed_service("b", name="Shared_EPP")
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(bad),
                             check=False)
    assert result.returncode != 0
    assert "spec.routing.inferencePool.endpointPicker.name: Invalid value" in result.stderr
    assert "routing.inferencePool.endpointPicker.name must be a Service name" in result.stderr


def test_the_crd_removed_under_a_routed_service_is_reported_at_the_next_reconcile(
        cluster, operator, namespace, pool_crd):
    apply_yaml(cluster, namespace, routed_service("c"))
    wait_phase(cluster, namespace, "c", ("Ready",), operator=operator)
    wait_for(lambda: (routed(slms(cluster, namespace, "c")) or {}).get("status") == "True", timeout=30,
             message="Routed=True")
    remove_pool_crd(cluster)
    try:
        # NB: the operator resolved the kind while it was served; the apply's 404 makes it look again.
        apply_yaml(cluster, namespace, routed_service("c", port=9100))
        wait_for(lambda: (routed(slms(cluster, namespace, "c")) or {}).get("reason") == "InferencePoolCRDMissing",
                 timeout=60, message="Routed=False once the CRD is gone")
        assert slms(cluster, namespace, "c")["status"]["phase"] == "Ready"
    finally:
        install_pool_crd(cluster)

"""The InferencePool child of ``spec.routing.inferencePool``: its shape, and where its endpoint picker comes from."""

from __future__ import annotations

from slm_operator.builders.children import (
    build_group_statefulset,
    build_inference_pool,
    build_service,
    endpoint_picker,
    owner_reference,
)
from slm_operator.config import OperatorConfig
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.plan import make_plan
from slm_operator.spec import EndpointPickerRef
from tests.unit.factories import node, profile, spec

DEFAULTS = OperatorConfig().endpoint_picker
OWNER = owner_reference(name="opt", uid="u-1")


def test_the_pool_selects_exactly_the_engine_pods_on_the_serving_port():
    picker = endpoint_picker(name="opt", asked=EndpointPickerRef(), defaults=DEFAULTS)
    pool = build_inference_pool(name="opt", namespace="ns", picker=picker, owner=OWNER)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1" and pool["kind"] == "InferencePool"
    assert pool["metadata"]["name"] == "opt" and pool["metadata"]["namespace"] == "ns"
    assert pool["metadata"]["ownerReferences"] == [{
        "apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "name": "opt", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}]
    assert pool["spec"] == {
        "selector": {"matchLabels": {"slm.pareto.dev/service": "opt", "app.kubernetes.io/component": "model-server"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"kind": "Service", "name": "opt-epp", "port": {"number": 9002},
                              "failureMode": "FailClose"},
    }
    # The same pods as the Service's, and every replica of every group carries those labels.
    assert build_service(name="opt", namespace="ns", owner=OWNER)["spec"]["selector"] == \
        pool["spec"]["selector"]["matchLabels"]
    s = spec(scale={"gpus": 2})
    plan = make_plan(spec=s, profile=profile(),
                     inventory=build_inventory(nodes=[node("n", count=2, sharing="mps", replicas=4)]))
    assert plan.placeable_gpus == 2
    for index in range(2):
        sts = build_group_statefulset(name="opt", namespace="ns", index=index, spec=s, plan=plan, image="i",
                                      owner=OWNER)
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = sts["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert [p["containerPort"] for p in ports] == [pool["spec"]["targetPorts"][0]["number"]]


def test_the_spec_overrides_the_operator_defaults_field_by_field():
    asked = EndpointPickerRef(port=9100, failure_mode="FailOpen")
    assert endpoint_picker(name="opt", asked=asked, defaults=DEFAULTS) == EndpointPickerRef(
        name="opt-epp", port=9100, failure_mode="FailOpen")
    shared = EndpointPickerRef(name="team-epp", port=9002, failure_mode="FailClose")
    assert endpoint_picker(name="opt", asked=EndpointPickerRef(name="mine"), defaults=shared).name == "mine"
    assert endpoint_picker(name="opt", asked=EndpointPickerRef(), defaults=shared).name == "team-epp"

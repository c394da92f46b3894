"""``deploy.reserve_groups`` and ``apply_children``: a plan's groups are in the placement ledger
before any API write (the next plan counts them while this one applies), and the groups an apply
did not reach leave it again when the API refuses one."""

import pytest

from slm_operator import deploy, kube
from slm_operator.builders.children import ENGINE_DEFAULTS
from slm_operator.errors import ApplyRejected
from slm_operator.gpu_index import PlacementLedger
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.plan import make_plan
from tests.unit.builders import test_network_policy_apply
from tests.unit.builders.test_network_policy_apply import Api
from tests.unit.factories import H100, node, profile, spec

#: The fake API (kube.apply, get and delete) of the NetworkPolicy tests.
api = test_network_policy_apply.api


def _plan(gpus: int):
    s = spec(gpu={"product": H100, "sharing": "mps"}, scale={"gpus": gpus})
    inventory = build_inventory(nodes=[node("a", count=2, sharing="mps", replicas=4),
                                       node("b", count=2, sharing="mps", replicas=4)])
    return s, make_plan(spec=s, profile=profile(), inventory=inventory)


def test_reserving_records_every_group_on_its_planned_node_without_an_api_call(api: Api) -> None:
    s, plan = _plan(gpus=3)
    ledger = PlacementLedger()
    reserved = deploy.reserve_groups(name="opt", namespace="ns", plan=plan, existing=(), ledger=ledger)
    assert api.writes == []
    assert [g.index for g in reserved.groups] == [0, 1, 2]
    assert [g.pinned_node for g in reserved.groups] == list(plan.group_nodes)
    held = ledger.merged_with({})
    assert sorted(held) == ["ns/opt-g0", "ns/opt-g1", "ns/opt-g2"]
    assert all(g.mechanism == "mps" and g.replicas == plan.replicas_per_gpu for g in held.values())


def test_a_refused_statefulset_leaves_the_ledger_with_the_groups_after_it(api: Api) -> None:
    s, plan = _plan(gpus=3)
    ledger = PlacementLedger()
    reserved = deploy.reserve_groups(name="opt", namespace="ns", plan=plan, existing=(), ledger=ledger)
    accept = api.apply

    def refuse_the_second_group(obj):
        if obj["kind"] == "StatefulSet" and obj["metadata"]["name"] == "opt-g1":
            raise ApplyRejected("StatefulSet opt-g1: spec.template: denied by policy")
        return accept(obj)

    kube.apply = refuse_the_second_group  # NB: the fixture's monkeypatch restores kube.apply
    with pytest.raises(ApplyRejected):
        deploy.apply_children(name="opt", namespace="ns", uid="u", spec=s, plan=plan, reserved=reserved, image="i",
                              existing=(), ledger=ledger, engine_defaults=ENGINE_DEFAULTS)
    assert sorted(ledger.merged_with({})) == ["ns/opt-g0"], "only the group that was applied is still owed"
    assert ("apply", "StatefulSet", "opt-g0") in api.writes

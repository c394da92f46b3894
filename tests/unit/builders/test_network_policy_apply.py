"""``deploy.apply_children`` and the NetworkPolicy: applied when the spec asks for one, removed when
it no longer does, and a same-named policy someone else made is left alone."""

from typing import Any

import pytest

from slm_operator import deploy, kube
from slm_operator.builders.children import ENGINE_DEFAULTS, EngineDefaults
from slm_operator.gpu_index import PlacementLedger
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.plan import make_plan
from tests.unit.factories import node, profile, spec


class Api:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []

    def apply(self, obj: dict[str, Any]) -> kube.Outcome:
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return kube.Outcome.APPLIED

    def get(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def delete(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> kube.Outcome:
        self.writes.append(("delete", kind, name))
        found = self.objects.pop((kind, name), None)
        return kube.Outcome.DELETED if found else kube.Outcome.NOT_FOUND


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Api:
    fake = Api()
    for name in ("apply", "get", "delete"):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    return fake


def _apply(s, *, uid="u-1", defaults=ENGINE_DEFAULTS):
    plan = make_plan(spec=s, profile=profile(),
                     inventory=build_inventory(nodes=[node("t", sharing="time-slicing", replicas=4)]))
    ledger = PlacementLedger()
    reserved = deploy.reserve_groups(name="opt", namespace="ns", plan=plan, existing=(), ledger=ledger)
    deploy.apply_children(name="opt", namespace="ns", uid=uid, spec=s, plan=plan, reserved=reserved, image="i",
                          existing=(), ledger=ledger, engine_defaults=defaults)


def test_policy_is_applied_before_the_pods_and_removed_when_unset(api: Api) -> None:
    _apply(spec(networkPolicy={"ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "gw"}}}]}))
    kinds = [kind for _, kind, _ in api.writes]
    assert kinds.index("NetworkPolicy") < kinds.index("StatefulSet")
    assert api.objects[("NetworkPolicy", "opt")]["metadata"]["ownerReferences"][0]["uid"] == "u-1"

    api.writes.clear()
    _apply(spec())
    assert ("delete", "NetworkPolicy", "opt") in api.writes and ("NetworkPolicy", "opt") not in api.objects
    # NB: without a policy to apply, a StatefulSet is the first write (apply → first StatefulSet latency).
    assert api.writes[0] == ("apply", "StatefulSet", "opt-g0")


def test_engine_defaults_reach_the_statefulset(api: Api) -> None:
    _apply(spec(), defaults=EngineDefaults(run_as_user=2000, memory_request="10Gi"))
    pod = api.objects[("StatefulSet", "opt-g0")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 2000
    assert pod["containers"][0]["resources"]["requests"] == {"memory": "10Gi"}


def test_a_policy_of_the_same_name_made_by_someone_else_is_not_deleted(api: Api) -> None:
    theirs = {"kind": "NetworkPolicy", "metadata": {"name": "opt", "namespace": "ns"}}
    api.objects[("NetworkPolicy", "opt")] = theirs
    _apply(spec())
    assert api.objects[("NetworkPolicy", "opt")] is theirs
    assert not any(w[0] == "delete" for w in api.writes)
    _apply(spec(), uid="someone-else")  # owned by another SLMService of the name: not ours either
    assert ("NetworkPolicy", "opt") in api.objects

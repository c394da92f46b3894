"""GroupState: one type for a GPU group, read from StatefulSets and pods, written to the status."""

from slm_operator.planning.groups import STATUS_KEYS, GroupState, group_from_statefulset, groups_from_objects


def sts(index: int, *, claim: str | None = None, ready: int | None = None) -> dict:
    labels = {"slm.pareto.dev/service": "opt", "slm.pareto.dev/group": str(index)}
    template = {"spec": {"resourceClaims": [{"name": "gpu", "resourceClaimName": claim}]}} if claim else {}
    return {"metadata": {"name": f"opt-g{index}", "namespace": "ns", "labels": labels,
                         "annotations": {"slm.pareto.dev/sharing": "dra", "slm.pareto.dev/gpu-product": "P"}},
            "spec": {"replicas": 3, "template": template},
            **({"status": {"readyReplicas": ready}} if ready is not None else {})}


def test_a_statefulset_reads_as_a_group():
    group = group_from_statefulset(sts(1, claim="opt-g1-gpu-ab", ready=2))
    assert group == GroupState(namespace="ns", name="opt-g1", service="opt", index=1, product="P", mechanism="dra",
                               replicas=3, ready_replicas=2, claim="opt-g1-gpu-ab")
    assert (group.key, group.service_key, group.claim_key) == ("ns/opt-g1", "ns/opt", "ns/opt-g1-gpu-ab")
    assert group_from_statefulset({"metadata": {"name": "x", "labels": {}}}) is None


def test_groups_are_ordered_by_index_and_located_by_their_pods():
    pods = [{"metadata": {"labels": {"slm.pareto.dev/group": "10"}}, "spec": {"nodeName": "b"}},
            {"metadata": {"labels": {"slm.pareto.dev/group": "2"}}, "spec": {}}]
    groups = groups_from_objects(statefulsets=[sts(10), sts(2)], pods=pods)
    assert [(g.index, g.node) for g in groups] == [(2, None), (10, "b")]


def test_the_status_shape_is_the_crds():
    group = GroupState(namespace="ns", name="opt-g0", service="opt", index=0, product="P", mechanism="mps",
                       replicas=2, ready_replicas=1, node="n", claim=None)
    assert group.to_status() == {"name": "opt-g0", "index": 0, "node": "n", "replicas": 2, "readyReplicas": 1}
    assert set(group.to_status()) <= set(STATUS_KEYS)

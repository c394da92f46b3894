"""dra-shares: the inventory of consumable GPUs, the share each replica asks, sizing in replicas, the
claim template and pods, the start gate, and the status it leads to."""

from __future__ import annotations

import pytest

from slm_operator.builders.children import (
    START_GATE_SCRIPT,
    build_claim_template,
    build_group_statefulset,
    claim_template_name,
)
from slm_operator.errors import PlanningError
from slm_operator.gpu_index import StartGrants, claim_entry, packed_pod_entry
from slm_operator.planning.groups import GroupState, group_from_statefulset
from slm_operator.planning.inventory import build_inventory, unbound_demand
from slm_operator.planning.plan import TARGET_HEADROOM, make_plan
from slm_operator.planning.shares import ShareRequest, device_occupancy, parse_quantity
from slm_operator.planning.start_gate import StartingPod, grants
from slm_operator.status import readiness, serving
from tests.unit.factories import node, profile, spec

A100, A100_MIB = "NVIDIA-A100-SXM4-80GB", 81920


def shared_slice(node_name: str, *, count: int = 2, memory_mib: int = A100_MIB, shares: int | None = 120) -> dict:
    capacity = {"memory": {"value": f"{memory_mib}Mi"}}
    if shares is not None:
        capacity["shares"] = {"value": str(shares)}
    return {"spec": {"driver": "gpu.nvidia.com", "nodeName": node_name, "pool": {"name": node_name},
                     "devices": [{"name": f"gpu-{i}", "allowMultipleAllocations": True, "capacity": capacity}
                                 for i in range(count)]}}


def claim(node_name: str, device: str, *, memory: str, shares: str | None = None, name: str = "c") -> dict:
    consumed = {"memory": memory} | ({"shares": shares} if shares is not None else {})
    return {"name": name, "status": {"allocation": {"devices": {"results": [
        {"driver": "gpu.nvidia.com", "pool": node_name, "device": device, "consumedCapacity": consumed}]}}}}


def shared_node(name: str = "s0", product: str = A100) -> dict:
    return node(name, product=product, memory=A100_MIB, count=2, sharing="dra")


def a100_profile(**overrides):
    return profile(**({"gpu_product": A100, "replicas_to_saturate": 4, "memory_per_replica_gib": 10.0,
                       "tokens_per_second_per_gpu": 20000.0, "tokens_per_second_per_replica": 8000.0,
                       "weights_gib": 1.0, "kv_cache_gib": 7.5} | overrides))


def a100_spec(**scale):
    return spec(gpu={"product": A100}, scale=scale or {"targetTokensPerSecond": 9000})


# --- inventory ----------------------------------------------------------------------------------------


def test_consumed_capacity_of_allocated_claims_is_subtracted_per_device():
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")],
                                resource_claims=[claim("s0", "gpu-0", memory="20Gi", shares="30"),
                                                 claim("s0", "gpu-0", memory="11131Mi", shares="30")])
    (pool,) = inventory.pools
    assert pool.sharing == "dra-shares" and pool.free == 1 and pool.free_devices == ("gpu-1",)
    gpu0, gpu1 = pool.devices
    assert (gpu0.memory_mib, gpu0.shares, gpu0.used_memory_mib, gpu0.used_shares, gpu0.allocations) == (
        A100_MIB, 120, 20480 + 11131, 60, 2)
    assert gpu1.allocations == 0 and gpu0.key == "gpu.nvidia.com/s0/gpu-0"
    assert gpu0.fits(ShareRequest(memory_mib=A100_MIB - 31611, shares=60))
    assert not gpu0.fits(ShareRequest(memory_mib=A100_MIB - 31611 + 1, shares=60)), "memory is a limit"
    assert not gpu0.fits(ShareRequest(memory_mib=1, shares=61)), "Σ shares ≤ the device's"


def test_whole_dra_devices_and_shared_ones_are_separate_pools():
    whole = {"spec": {"driver": "gpu.nvidia.com", "nodeName": "d0", "pool": {"name": "d0"},
                      "devices": [{"name": "gpu-0"}]}}
    inventory = build_inventory(nodes=[shared_node(), node("d0", product=A100, sharing="dra", count=1)],
                                resource_slices=[shared_slice("s0"), whole])
    assert {(p.node, p.sharing) for p in inventory.pools} == {("s0", "dra-shares"), ("d0", "dra")}


def test_memory_only_devices_have_no_shares_and_a_shares_request_never_fits_them():
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0", shares=None)])
    device = inventory.pools[0].devices[0]
    assert device.shares is None
    assert device.consumption(ShareRequest(memory_mib=100, shares=1)) is None
    assert device.fits(ShareRequest(memory_mib=A100_MIB, shares=None))


@pytest.mark.parametrize(("text", "value"), [("80Gi", 80 * 2**30), ("11131Mi", 11131 * 2**20), ("120", 120),
                                             ("500m", 0.5), ("1k", 1000), ("bad", 0)])
def test_quantities(text, value):
    assert parse_quantity(text) == value


def test_pending_replicas_of_every_service_are_demand_until_their_claims_are_allocated():
    request = ShareRequest(memory_mib=11131, shares=30)
    groups = [GroupState(namespace="a", name="chat-g0", service="chat", index=0, product=A100,
                         mechanism="dra-shares", replicas=3, share_request=request),
              GroupState(namespace="b", name="emb-g0", service="emb", index=0, product=A100,
                         mechanism="dra-shares", replicas=1, share_request=request)]
    demand = unbound_demand(groups=groups, bound_pods={}, allocated_claims=[],
                            allocated_per_group={"a/chat-g0": 1, "b/emb-g0": 1})
    assert demand.shares == {A100: (request, request)}, "the planned service's pending replicas count too"


# --- planning ------------------------------------------------------------------------------------------


def test_auto_picks_dra_shares_and_sizes_replicas_by_the_shared_plateau_with_headroom():
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")])
    plan = make_plan(spec=a100_spec(targetTokensPerSecond=9000), profile=a100_profile(), inventory=inventory)
    assert plan.mechanism == "dra-shares" and plan.replicas_per_gpu == 4
    # one replica at 1/4 of the GPU: 20000 / 4 = 5000 tok/s (not its solo 8000); 9000 × 1.1 / 5000 -> 2
    assert plan.tokens_per_second_per_replica == 5000 and TARGET_HEADROOM == 0.10
    assert (plan.replicas, plan.placeable_replicas, plan.total_replicas) == (2, 2, 2)
    assert plan.planned_tokens_per_second == 10000.0 and not plan.degraded
    assert plan.share_per_replica == 0.25 and plan.capacity_mode == "shares"
    assert plan.share_request == ShareRequest(memory_mib=11131, shares=30)
    assert plan.memory_budget_gib == 10.0 and "--gpu-memory-utilization=0.125" in plan.vllm_args()


def test_a_target_just_above_a_replica_boundary_takes_one_more():
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")])
    plan = make_plan(spec=a100_spec(targetTokensPerSecond=9100), profile=a100_profile(), inventory=inventory)
    assert plan.replicas == 3, "9100 × 1.1 = 10010 > 2 × 5000"


def test_scale_gpus_keeps_its_meaning_gpus_times_k():
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")])
    plan = make_plan(spec=a100_spec(gpus=2), profile=a100_profile(), inventory=inventory)
    assert (plan.replicas, plan.placeable_replicas, plan.gpus) == (8, 8, 2)


def test_shares_round_up_so_a_gpu_is_never_promised_more_than_one():
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0", shares=100)])
    plan = make_plan(spec=a100_spec(gpus=1), profile=a100_profile(replicas_to_saturate=3), inventory=inventory)
    assert plan.share_request is not None and plan.share_request.shares == 34 and plan.share_per_replica == 0.34
    # three replicas of 34 shares do not fit on one 100-share GPU: the second GPU takes the third
    assert plan.placeable_replicas == 3


def test_memory_only_gpus_reserve_the_share_as_memory_and_say_so():
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0", shares=None)])
    plan = make_plan(spec=a100_spec(targetTokensPerSecond=4000), profile=a100_profile(memory_per_replica_gib=3),
                     inventory=inventory)
    assert plan.capacity_mode == "memory" and plan.share_request == ShareRequest(memory_mib=A100_MIB // 4, shares=None)
    # max(3 GiB, 1/4 of the usable 73.6 GiB): vLLM may use it all (a larger KV cache)
    assert plan.memory_budget_gib == round(A100_MIB / 1024 * 0.92 / 4, 2)
    assert "memory only" in plan.explanation


def test_capacity_counts_allocated_and_pending_claims_first_fit():
    taken = [claim("s0", "gpu-0", memory="40000Mi", shares="90"), claim("s0", "gpu-1", memory="1Gi", shares="100")]
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")], resource_claims=taken)
    plan = make_plan(spec=a100_spec(gpus=1), profile=a100_profile(), inventory=inventory)
    assert (plan.replicas, plan.placeable_replicas) == (4, 1), "30 shares left on gpu-0, 20 on gpu-1"
    assert plan.degraded


def test_no_room_anywhere_is_pending_with_the_share_it_needs():
    full = [claim("s0", f"gpu-{i}", memory="1Gi", shares="120") for i in range(2)]
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")], resource_claims=full)
    with pytest.raises(PlanningError) as error:
        make_plan(spec=a100_spec(), profile=a100_profile(), inventory=inventory)
    assert error.value.reason == "InsufficientSlots" and "no NVIDIA-A100-SXM4-80GB GPU has room" in error.value.message


def test_existing_replicas_count_as_placed_and_scale_in_is_replicas():
    own = [claim("s0", "gpu-0", memory="11131Mi", shares="30") for _ in range(4)]
    full = own + [claim("s0", "gpu-1", memory="1Gi", shares="120")]
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")], resource_claims=full)
    keep = make_plan(spec=a100_spec(gpus=1), profile=a100_profile(), inventory=inventory, existing_groups=1,
                     current_mechanism="dra-shares", existing_replicas=4)
    assert (keep.mechanism, keep.placeable_replicas) == ("dra-shares", 4)
    fewer = make_plan(spec=a100_spec(targetTokensPerSecond=4000), profile=a100_profile(), inventory=inventory,
                      existing_groups=1, current_mechanism="dra-shares", existing_replicas=4)
    assert fewer.placeable_replicas == 1


def test_one_replica_saturating_a_gpu_prefers_whole_gpus():
    whole = {"spec": {"driver": "gpu.nvidia.com", "nodeName": "d0", "pool": {"name": "d0"},
                      "devices": [{"name": "gpu-0"}]}}
    inventory = build_inventory(nodes=[shared_node(), node("d0", product=A100, sharing="dra", count=1)],
                                resource_slices=[shared_slice("s0"), whole])
    plan = make_plan(spec=a100_spec(gpus=1), profile=a100_profile(replicas_to_saturate=1), inventory=inventory)
    assert plan.mechanism == "dra"


def test_explicit_dra_shares_without_such_gpus_says_how_to_enable_them():
    inventory = build_inventory(nodes=[node("d0", product=A100, count=1)])
    with pytest.raises(PlanningError) as error:
        make_plan(spec=spec(gpu={"product": A100, "sharing": "dra-shares"}), profile=a100_profile(),
                  inventory=inventory)
    assert error.value.reason == "NoSharedGPUs" and "--consumable-shares" in error.value.message


# --- children ------------------------------------------------------------------------------------------


def shares_plan(**scale):
    inventory = build_inventory(nodes=[shared_node()], resource_slices=[shared_slice("s0")])
    return make_plan(spec=a100_spec(**scale), profile=a100_profile(), inventory=inventory)


OWNER = {"apiVersion": "slm.pareto.dev/v1alpha1", "kind": "SLMService", "name": "chat", "uid": "u"}


def test_claim_template_asks_memory_and_shares_of_a_consumable_gpu():
    plan = shares_plan()
    template = build_claim_template(name="chat", namespace="ns", plan=plan, owner=OWNER)
    assert template["kind"] == "ResourceClaimTemplate" and template["metadata"]["name"] == claim_template_name(
        name="chat", plan=plan)
    request = template["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert request["capacity"] == {"requests": {"memory": "11131Mi", "shares": "30"}}
    assert {"cel": {"expression": "device.allowMultipleAllocations == true"}} in request["selectors"]
    labels = template["spec"]["metadata"]["labels"]
    assert labels["slm.pareto.dev/packed"] == "true" and labels["slm.pareto.dev/service"] == "chat"
    bigger = shares_plan(gpus=1)
    assert claim_template_name(name="chat", plan=bigger) == claim_template_name(name="chat", plan=plan), (
        "the same claim for another replica count")


def test_statefulset_gives_every_pod_its_own_claim_and_a_start_gate():
    plan = shares_plan()
    sts = build_group_statefulset(name="chat", namespace="ns", index=0, spec=a100_spec(), plan=plan, image="vllm",
                                  owner=OWNER)
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["metadata"]["annotations"]["slm.pareto.dev/claim-shares"] == "30"
    pod = sts["spec"]["template"]
    assert pod["metadata"]["labels"]["slm.pareto.dev/packed"] == "true"
    assert pod["spec"]["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName":
                                              claim_template_name(name="chat", plan=plan)}]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c", START_GATE_SCRIPT, "vllm"] and "--max-num-seqs=128" in container["args"]
    start = next(v for v in pod["spec"]["volumes"] if v["name"] == "start")
    assert start["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.annotations['slm.pareto.dev/start']"
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["spec"]["affinity"]["podAffinity"]
    group = group_from_statefulset(sts)
    assert group is not None and group.share_request == ShareRequest(memory_mib=11131, shares=30)
    assert group.replicas == 2 and group.claim_template == claim_template_name(name="chat", plan=plan)


# --- start gate ----------------------------------------------------------------------------------------


def pod(name, devices, *, granted=False, ready=False, created="2026-01-01T00:00:00Z", namespace="a"):
    return StartingPod(namespace=namespace, name=name, created=created, devices=tuple(devices), granted=granted,
                       ready=ready)


def test_one_starting_replica_per_gpu_oldest_first_across_services():
    pods = [pod("b-0", ["g0"], created="2026-01-01T00:00:02Z", namespace="b"),
            pod("a-0", ["g0"], created="2026-01-01T00:00:01Z"),
            pod("a-1", ["g1"]), pod("a-2", [])]
    assert [(p.key, d) for p, d in grants(pods)] == [("a/a-1", "g1"), ("a/a-0", "g0")]


def test_a_granted_replica_not_ready_blocks_its_gpu_and_ready_frees_it():
    assert grants([pod("a-0", ["g0"], granted=True), pod("b-0", ["g0"])]) == []
    assert [p.name for p, _ in grants([pod("a-0", ["g0"], granted=True, ready=True), pod("b-0", ["g0"])])] == ["b-0"]


def test_grants_not_yet_seen_by_the_watch_still_block():
    memo = StartGrants()
    memo.record("a/a-0")
    merged = memo.merged_with([pod("a-0", ["g0"]), pod("b-0", ["g0"])])
    assert grants(merged) == []
    assert memo.merged_with([pod("b-0", ["g0"])]) == [pod("b-0", ["g0"])], "a pod gone is forgotten"


def test_index_entries_of_packed_pods_and_their_claims():
    entry = packed_pod_entry(uid="u", namespace="a", name="chat-g0-0", labels={"slm.pareto.dev/packed": "true"},
                             annotations={"slm.pareto.dev/start": "granted"},
                             meta={"creationTimestamp": "t"},
                             status={"conditions": [{"type": "Ready", "status": "False"}],
                                     "resourceClaimStatuses": [{"name": "gpu",
                                                                "resourceClaimName": "chat-g0-0-gpu-x"}]})
    assert entry == {"u": {"namespace": "a", "name": "chat-g0-0", "created": "t", "claims": ["a/chat-g0-0-gpu-x"],
                           "granted": True, "ready": False, "deleting": False}}
    assert packed_pod_entry(uid="u", namespace="a", name="p", labels={}, annotations={}, meta={}, status={}) is None
    indexed = claim_entry(uid="c", namespace="a", name="chat-g0-0-gpu-x", status=claim("s0", "gpu-0", memory="1Gi")[
        "status"], labels={"slm.pareto.dev/packed": "true", "slm.pareto.dev/service": "chat",
                           "slm.pareto.dev/group": "0"})
    assert indexed is not None and indexed["c"]["group"] == "a/chat-g0"


# --- status --------------------------------------------------------------------------------------------


def test_status_shows_replicas_shares_and_the_gpus_they_occupy():
    plan = shares_plan()
    claims = [claim("s0", "gpu-0", memory="11131Mi", shares="30")["status"] for _ in range(2)]
    devices = device_occupancy([{"status": c} for c in claims])
    group = GroupState(namespace="ns", name="chat-g0", service="chat", index=0, product=A100,
                       mechanism="dra-shares", replicas=2, ready_replicas=1)
    update = serving(name="chat", plan=plan, groups=[group], endpoint="http://x", devices=devices)
    placement = update.fields["placement"]
    assert placement | {"groups": None} == {
        "mechanism": "dra-shares", "resourceName": "gpu.nvidia.com", "replicasPerGPU": 4, "totalReplicas": 2,
        "requestedReplicas": 2, "readyReplicas": 1, "ready": "1/2", "sharePerReplica": 0.25,
        "memoryPerReplicaGiB": 10.87, "capacityMode": "shares", "packingGuarantee": "one-gpu",
        "plannedTokensPerSecond": 10000.0, "gpus": 1,
        "devices": [{"node": "s0", "device": "gpu-0", "replicas": 2}], "nodes": ["s0"], "groups": None}
    assert update.phase == "Deploying"
    later = readiness(current={"placement": placement, "message": plan.explanation},
                      groups=[GroupState(namespace="ns", name="chat-g0", service="chat", index=0, product=A100,
                                         mechanism="dra-shares", replicas=2, ready_replicas=2)], devices=devices)
    assert later is not None and later.phase == "Ready" and later.fields["placement"]["gpus"] == 1


def test_group_claims_select_whole_devices_only_where_the_product_also_has_shared_ones():
    from slm_operator.builders.children import build_resource_claim, claim_name

    whole = {"spec": {"driver": "gpu.nvidia.com", "nodeName": "d0", "pool": {"name": "d0"},
                      "devices": [{"name": "gpu-0"}]}}
    dra_spec = spec(gpu={"product": A100, "sharing": "dra"}, scale={"gpus": 1})
    only_whole = build_inventory(nodes=[node("d0", product=A100, sharing="dra", count=1)], resource_slices=[whole])
    plain = make_plan(spec=dra_spec, profile=a100_profile(), inventory=only_whole)
    both = build_inventory(nodes=[shared_node(), node("d0", product=A100, sharing="dra", count=1)],
                           resource_slices=[shared_slice("s0"), whole])
    guarded = make_plan(spec=dra_spec, profile=a100_profile(), inventory=both)
    assert (plain.whole_devices_only, guarded.whole_devices_only) == (False, True)

    def selectors(plan):
        claim = build_resource_claim(name="m", namespace="ns", index=0, plan=plan, owner=OWNER)
        return [s["cel"]["expression"] for s in claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"]]
    assert "!device.allowMultipleAllocations" in selectors(guarded) and len(selectors(plain)) == 1
    assert claim_name(name="m", index=0, plan=plain) != claim_name(name="m", index=0, plan=guarded), (
        "a claim's spec is immutable: the new selector comes with a new name")


def test_first_fit_places_in_device_order_and_counts_what_does_not_fit():
    from slm_operator.planning.shares import SharedDevice, first_fit, fitting_replicas

    devices = [SharedDevice(driver="d", pool="p", name=f"gpu-{i}", node="n", memory_mib=1000, shares=4)
               for i in range(2)]
    big, small = ShareRequest(memory_mib=600, shares=2), ShareRequest(memory_mib=100, shares=1)
    placed, missed = first_fit(devices, [big, small, big, big, small, small])
    assert missed == 1, "the third big one: 600 MiB more fits neither GPU"
    # the small ones fill gpu-0's last share first, then go on to gpu-1
    assert [(d.used_memory_mib, d.used_shares, d.allocations) for d in placed] == [(800, 4, 3), (700, 3, 2)]
    assert fitting_replicas(placed, small, limit=10) == 1 and fitting_replicas(placed, small, limit=0) == 0
    assert fitting_replicas(devices, small, limit=100) == 8, "shares run out before memory"

"""Apply a plan's children and read its GPU groups back: the I/O side of ``builders.children``.

``builders.children`` decides what the objects look like (pure ``build_*``); this module sends them
through ``kube`` (server-side apply, so an unchanged plan writes nothing new), scales in by whole
GPU groups, moves groups make-before-break (``planning.moves`` decides what moves), removes DRA
claims no group uses any more and the NetworkPolicy and InferencePool the spec no longer asks
for, and lists a service's StatefulSets and pods as
:class:`~slm_operator.planning.groups.GroupState`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from slm_operator import kube
from slm_operator.builders.children import (
    EngineDefaults,
    build_claim_template,
    build_group_statefulset,
    build_inference_pool,
    build_network_policy,
    build_resource_claim,
    build_service,
    claim_name,
    claim_template_name,
    owner_reference,
)
from slm_operator.constants import (
    INFERENCE_POOL_API_VERSION,
    INFERENCE_POOL_KIND,
    LABEL_MANAGED_BY,
    LABEL_PACKED,
    LABEL_SERVICE,
    MANAGED_BY,
    Routing,
    group_name,
)
from slm_operator.gpu_index import PlacementLedger
from slm_operator.planning.groups import GroupState, groups_from_objects
from slm_operator.planning.moves import LostNode, Rollout, plan_rollout
from slm_operator.planning.plan import Plan
from slm_operator.planning.shares import DeviceOccupancy, device_occupancy
from slm_operator.spec import EndpointPickerRef, SLMServiceSpec


@dataclasses.dataclass(frozen=True)
class Applied:
    """What :func:`apply_children` did: where requests can go, and what happened to the groups."""

    routing: Routing
    rollout: Rollout


def read_share_devices(*, name: str, namespace: str) -> list[DeviceOccupancy]:
    """``dra-shares``: the GPUs the replicas' claims of SLMService ``namespace/name`` are allocated on."""
    claims = kube.list_objects(api_version="resource.k8s.io/v1", kind="ResourceClaim", namespace=namespace,
                               label_selector=f"{LABEL_SERVICE}={name},{LABEL_PACKED}=true")
    return device_occupancy(claims)


def read_groups(*, name: str, namespace: str) -> list[GroupState]:
    """The GPU groups of SLMService ``namespace/name`` as the API has them now (two list calls)."""
    selector = f"{LABEL_SERVICE}={name},{LABEL_MANAGED_BY}={MANAGED_BY}"
    statefulsets = kube.list_objects(api_version="apps/v1", kind="StatefulSet", namespace=namespace,
                                     label_selector=selector)
    pods = kube.list_objects(api_version="v1", kind="Pod", namespace=namespace, label_selector=selector)
    return groups_from_objects(statefulsets=statefulsets, pods=pods)


@dataclasses.dataclass(frozen=True)
class Reserved:
    """The groups one plan applies, decided and recorded in the placement ledger (:func:`reserve_groups`)."""

    rollout: Rollout
    #: One per ``rollout.apply``, in order: the group as the ledger holds it (its node, its claim).
    groups: tuple[GroupState, ...]


def reserve_groups(
    *, name: str, namespace: str, plan: Plan, existing: Sequence[GroupState], ledger: PlacementLedger,
    lost: Mapping[str, LostNode] | None = None,
) -> Reserved:
    """Which groups ``plan`` applies and deletes (``planning.moves``), each applied one on its node,
    recorded in ``ledger``. No API call: the caller holds the planning lock for the plan and this, and
    applies (:func:`apply_children`) after releasing it, so one service's API writes never hold up
    the next service's plan.

    NB: a group keeps the node it was pinned to (its StatefulSet unchanged, no restart); new ones
    take the plan's nodes in order. One the plan has no node for is the scheduler's pick.
    """
    dra = plan.mechanism == "dra"
    claims = {g.index: claim_name(name=name, index=g.index, plan=plan) for g in existing} if dra else None
    rollout = plan_rollout(plan=plan, existing=existing, lost=lost or {}, claims=claims)
    pinned = {g.index: g.pinned_node for g in existing}
    fresh_nodes = iter(plan.group_nodes)
    groups = []
    for group in rollout.apply:
        index = group.index
        groups.append(GroupState(
            namespace=namespace, name=group_name(service=name, index=index), service=name, index=index,
            product=plan.gpu_product, mechanism=plan.mechanism,
            replicas=plan.total_replicas if plan.shares_mode else plan.replicas_per_gpu,
            claim=claim_name(name=name, index=index, plan=plan) if dra else None,
            claim_template=claim_template_name(name=name, plan=plan) if plan.shares_mode else None,
            share_request=plan.share_request, replaces=group.replaces,
            pinned_node=pinned[index] if index in pinned else next(fresh_nodes, None)))
    for reserved in groups:
        ledger.record(reserved)
    return Reserved(rollout=rollout, groups=tuple(groups))


def apply_children(
    *,
    name: str,
    namespace: str,
    uid: str,
    spec: SLMServiceSpec,
    plan: Plan,
    reserved: Reserved,
    image: str,
    existing: Sequence[GroupState],
    ledger: PlacementLedger,
    engine_defaults: EngineDefaults,
    picker: EndpointPickerRef | None = None,
    pool_may_exist: bool = False,
) -> Applied:
    """Apply the NetworkPolicy (``spec.networkPolicy``), one StatefulSet (and DRA claim) per group
    ``reserved`` (:func:`reserve_groups`), the Service and the InferencePool (``picker`` set:
    ``spec.routing.inferencePool``), then remove the NetworkPolicy (when unset) and the groups and
    claims the plan no longer has. Raises :class:`~slm_operator.errors.ApplyRejected` when the API
    server refuses an object; whatever raises, the reserved groups not applied yet leave ``ledger``.
    ``engine_defaults`` (the operator's configuration) go into every vLLM pod. Returns where
    requests can go (``crd-missing`` when the cluster does not serve InferencePools: the rest is
    applied all the same, the Service serves) and the groups' rollout.

    Groups whose placement changed (mechanism, product, replicas per GPU or claim, or a lost node)
    move make-before-break (``planning.moves``): a replacement under a new index, the old group
    deleted once it is Ready.

    ``pool_may_exist`` (the status says routing was on): without ``picker``, delete this service's
    InferencePool. NB: only then, so that services without routing never ask whether the cluster
    serves InferencePools (a discovery round trip where it does not).
    """
    rollout = reserved.rollout
    wanted_claims = {g.claim for g in rollout.keep if g.claim}
    wanted_templates = {g.claim_template for g in rollout.keep if g.claim_template}
    owner = owner_reference(name=name, uid=uid)
    applied = 0
    try:
        # NB: a policy the spec asks for goes before the pods, so that a replica is never reachable
        # from where the policy says it is not. Everything else waits until the groups are applied:
        # the first StatefulSet of a new service is its first write (a Service with no pod yet,
        # or a policy deleted a moment later, changes nothing meanwhile).
        if spec.network_policy is not None:
            kube.apply(build_network_policy(name=name, namespace=namespace, policy=spec.network_policy,
                                            owner=owner))
        if plan.shares_mode and rollout.apply:
            # NB: before the StatefulSet, so its pods find their template at once.
            wanted_templates.add(claim_template_name(name=name, plan=plan))
            kube.apply(build_claim_template(name=name, namespace=namespace, plan=plan, owner=owner,
                                            index=rollout.apply[0].index))
        for group in reserved.groups:
            if group.claim:
                wanted_claims.add(group.claim)
                kube.apply(build_resource_claim(name=name, namespace=namespace, index=group.index, plan=plan,
                                                owner=owner))
            kube.apply(build_group_statefulset(name=name, namespace=namespace, index=group.index, spec=spec,
                                               plan=plan, image=image, owner=owner,
                                               engine_defaults=engine_defaults, replaces=group.replaces,
                                               node=group.pinned_node))
            applied += 1
    except BaseException:
        ledger.forget(g.key for g in reserved.groups[applied:])
        raise
    routing = _apply_service(name=name, namespace=namespace, uid=uid, picker=picker, pool_may_exist=pool_may_exist)
    if spec.network_policy is None:
        _delete_owned(api_version="networking.k8s.io/v1", kind="NetworkPolicy", name=name, namespace=namespace,
                      uid=uid)
    # Scale in whole GPU groups, and remove the groups moved away from (planning.moves); claims no
    # group references any more go with them. (dra-shares scales in by the StatefulSet's replicas:
    # the claims of removed pods are deleted with them.)
    for old in rollout.delete:
        kube.delete(api_version="apps/v1", kind="StatefulSet", name=old.name, namespace=namespace)
    stale = {g.claim for g in existing if g.claim} - wanted_claims
    for claim in sorted(c for c in stale if c):
        kube.delete(api_version="resource.k8s.io/v1", kind="ResourceClaim", name=claim, namespace=namespace)
    # NB: the StatefulSet references the new template by now; claims made from an old one live on
    # with their pods (a claim does not need its template).
    for template in sorted({g.claim_template for g in existing if g.claim_template} - wanted_templates):
        if template:
            kube.delete(api_version="resource.k8s.io/v1", kind="ResourceClaimTemplate", name=template,
                        namespace=namespace)
    return Applied(routing=routing, rollout=rollout)


def _apply_service(
    *, name: str, namespace: str, uid: str, picker: EndpointPickerRef | None, pool_may_exist: bool
) -> Routing:
    """The Service and the InferencePool of SLMService ``namespace/name``; where requests can go."""
    owner = owner_reference(name=name, uid=uid)
    kube.apply(build_service(name=name, namespace=namespace, owner=owner))
    if picker is not None:
        pool = build_inference_pool(name=name, namespace=namespace, picker=picker, owner=owner)
        return "crd-missing" if kube.apply(pool) is kube.Outcome.NOT_SERVED else "inference-pool"
    if pool_may_exist:
        _delete_owned(api_version=INFERENCE_POOL_API_VERSION, kind=INFERENCE_POOL_KIND, name=name,
                      namespace=namespace, uid=uid)
    return "service"


def _delete_owned(*, api_version: str, kind: str, name: str, namespace: str, uid: str) -> None:
    """Delete a child the spec no longer asks for (a NetworkPolicy, an InferencePool); an object of
    that name someone else made (no controller reference to this SLMService) is not ours to remove."""
    current = kube.get(api_version=api_version, kind=kind, name=name, namespace=namespace)
    refs = ((current or {}).get("metadata") or {}).get("ownerReferences") or ()
    if any(ref.get("uid") == uid and ref.get("controller") for ref in refs):
        kube.delete(api_version=api_version, kind=kind, name=name, namespace=namespace)

"""Moving GPU groups make-before-break: which groups to apply, which to delete, and what to say.

A group must *move* when where it runs no longer matches the plan: another mechanism
(``spec.gpu.sharing``), another GPU product, another number of replicas per GPU or DRA claim, or
its node is gone or has been NotReady longer than a grace period, or none of its pods is bound yet
and the node it is pinned to was cordoned. Patching its StatefulSet in place cannot
work: the new pods' node affinity excludes the old node while the group's required pod affinity
(its pods stay together) pins them to it (or pins an added replica to a GPU with no room), so
they would stay Pending for good. Instead the replacement is a new group under a new index (a new
StatefulSet name and group label, so no pod affinity ties it to the old pods), annotated with the
indexes it replaces (``constants.ANNOTATION_REPLACES``); the old group keeps serving until its
replacement is Ready, then goes with its claim. Everything is decided from what the cluster
stores (the StatefulSets, their pods' nodes, the nodes): an operator restarted mid-move carries on.

Capacity: the plan is made against the inventory while the old groups still hold their GPUs, so
it places only the replacements that fit beside them; a group left without one keeps serving and
is reported waiting (``status.MOVE_WAITING``). A group whose node is gone, or whose pods all wait
for a cordoned node, has nothing to keep: it is deleted at once.

Side-effect free.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slm_operator.constants import group_name
from slm_operator.planning.groups import GroupState
from slm_operator.planning.inventory import cordoned
from slm_operator.planning.plan import Plan


@dataclasses.dataclass(frozen=True)
class LostNode:
    """A node a group can no longer count on: ``gone`` (deleted), ``NotReady`` past the grace period,
    or ``cordoned`` (or tainted against the replicas: :func:`~slm_operator.planning.inventory.cordoned`),
    which only a group none of whose pods is bound there loses (its pods would wait for good)."""

    name: str
    state: str
    #: NotReady only: for how long, in seconds.
    seconds: float = 0.0

    @property
    def gone(self) -> bool:
        return self.state == "gone"

    @property
    def nothing_to_keep(self) -> bool:
        """Its groups serve nothing: the node is gone, or (cordoned) none of their pods runs there."""
        return self.state in ("gone", "cordoned")

    def describe(self) -> str:
        if self.gone:
            return f"node {self.name} is gone"
        if self.state == "cordoned":
            return f"node {self.name} is cordoned or tainted against the replicas, which wait for it"
        return f"node {self.name} has been NotReady for {int(self.seconds)}s"


@dataclasses.dataclass(frozen=True)
class GroupToApply:
    """A group the plan wants: an existing one (patched) or a new one, and the groups it replaces."""

    index: int
    replaces: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What ``deploy.apply_children`` does to a service's groups for one plan."""

    apply: tuple[GroupToApply, ...]
    delete: tuple[GroupState, ...]
    #: Misplaced groups kept for now (still serving until their replacement is Ready, or waiting).
    keep: tuple[GroupState, ...]
    #: One sentence per move in progress, and per group waiting for room for its replacement.
    moving: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()


def lost_nodes(
    *, nodes: Iterable[Mapping[str, Any]], groups: Iterable[GroupState], now: datetime.datetime,
    grace_seconds: float,
) -> dict[str, LostNode]:
    """The nodes of ``groups`` that are gone (not among ``nodes``, the GPU nodes the index knows),
    NotReady for longer than ``grace_seconds`` (by their Ready condition's lastTransitionTime), or
    cordoned (a group counts that only while none of its pods is bound: see :func:`_lost`)."""
    by_name = {(n.get("metadata") or {}).get("name"): n for n in nodes}
    lost: dict[str, LostNode] = {}
    for node in sorted({g.placed_node for g in groups if g.placed_node}):
        entry = by_name.get(node)
        if entry is None:
            lost[node] = LostNode(name=node, state="gone")
            continue
        seconds = _not_ready_seconds(entry.get("status") or {}, now=now)
        if seconds is not None and seconds >= grace_seconds:
            lost[node] = LostNode(name=node, state="NotReady", seconds=seconds)
        elif cordoned(entry):
            lost[node] = LostNode(name=node, state="cordoned")
    return lost


def seconds_until_lost(*, status: Mapping[str, Any], now: datetime.datetime, grace_seconds: float) -> float | None:
    """A node's ``status``: seconds until its groups count as lost (0: they do now), ``None`` while it
    is Ready (or says nothing of it), as :func:`lost_nodes` judges it. A NotReady node that says
    not since when counts from ``now``."""
    seconds = _not_ready_seconds(status, now=now)
    return None if seconds is None else max(0.0, grace_seconds - seconds)


def _not_ready_seconds(status: Mapping[str, Any], *, now: datetime.datetime) -> float | None:
    """How long a node has been NotReady, by its Ready condition's lastTransitionTime (0 when it says
    not since when); ``None`` while it is Ready or has no Ready condition."""
    ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return None
    since = _parse_time(ready.get("lastTransitionTime"))
    return (now - since).total_seconds() if since else 0.0


def staying_groups(
    *, groups: Sequence[GroupState], product: str, lost: Mapping[str, LostNode]
) -> list[GroupState]:
    """The groups that can stay as they are if the plan keeps their mechanism: on ``product`` and on
    a node that is not lost. The planner counts them as placed, each for its own mechanism. NB: an
    old group being replaced counts too: a spec changed back mid-move keeps it, not its replacement."""
    return [g for g in groups if _same(g.product, product) and _lost(g, lost) is None]


def current_mechanism(staying: Sequence[GroupState]) -> str | None:
    """The mechanism the service runs under now: that of its staying groups; mid-move, that of the
    replacements (the old groups it leaves are not staying)."""
    mechanisms = {g.mechanism for g in staying}
    if len(mechanisms) == 1:
        return mechanisms.pop()
    return next((g.mechanism for g in staying if g.replaces), None)


def plan_rollout(
    *, plan: Plan, existing: Sequence[GroupState], lost: Mapping[str, LostNode], claims: Mapping[int, str] | None = None
) -> Rollout:
    """Which groups to apply (existing ones that fit the plan, and new ones), which to delete, and
    which misplaced groups to keep serving for now. Side-effect free.

    ``claims``: with ``dra``, the claim the plan names for each existing group's index.

    A group *fits* the plan when it runs its mechanism on its product, with its replicas per GPU and
    (``dra``) its claim, on a node that is not lost;
    fitting groups beyond the plan's count are scaled in (highest index first). A misplaced group
    is deleted once every group replacing it is Ready (when the service has as many groups as the
    spec asks without it: once they all are), at once when its node is gone; otherwise it keeps
    serving, waiting for room for its replacement.
    """
    wanted = (1 if plan.placeable_replicas else 0) if plan.shares_mode else plan.placeable_gpus
    desired = (1 if plan.replicas else 0) if plan.shares_mode else plan.gpus
    claim_of = dict(claims or {})
    fit = [g for g in existing if _fits(g, plan=plan, lost=lost, claim=claim_of.get(g.index))]
    misplaced = [g for g in existing if g not in fit]
    staying, scaled_in = fit[:wanted], fit[wanted:]
    misplaced_indexes = {g.index for g in misplaced}
    replaced_by: dict[int, list[GroupState]] = {}
    for group in staying:
        for old in group.replaces:
            if old in misplaced_indexes:
                replaced_by.setdefault(old, []).append(group)

    # New groups: each replaces a misplaced group that has no replacement yet, in index order (a
    # dra-shares StatefulSet, one for all replicas, replaces them all; a dra-shares group left
    # is replaced by every new group), then plain scale-out.
    unreplaced = [g for g in misplaced if g.index not in replaced_by]
    new: list[GroupToApply] = []
    for position, index in enumerate(_fresh_indexes(existing, count=max(0, wanted - len(staying)))):
        if plan.shares_mode:
            replaces = [g.index for g in unreplaced]
        else:
            one = [g for g in unreplaced if g.mechanism != "dra-shares"]
            replaces = [one[position].index] if position < len(one) else []
            replaces += [g.index for g in unreplaced if g.mechanism == "dra-shares"]
        new.append(GroupToApply(index=index, replaces=tuple(sorted(replaces))))
        for old in replaces:
            replaced_by.setdefault(old, []).append(_planned(group=index, like=misplaced[0], plan=plan))
    # NB: a misplaced group nothing replaces is not needed once the spec's groups are placed without
    # it (the spec asks fewer now); it still serves until they are Ready.
    if unreplaced and len(staying) + len(new) >= desired:
        everyone = staying + [_planned(group=n.index, like=unreplaced[0], plan=plan) for n in new]
        for group in unreplaced:
            replaced_by.setdefault(group.index, everyone)

    delete: list[GroupState] = list(scaled_in)
    keep: list[GroupState] = []
    moving: list[str] = []
    waiting: list[str] = []
    for group in misplaced:
        node = _lost(group, lost)
        replacements = replaced_by.get(group.index, [])
        if node is not None and node.nothing_to_keep:
            delete.append(group)
        elif group.index in replaced_by and all(_ready(g) for g in replacements):
            delete.append(group)
        elif replacements:
            keep.append(group)
            moving.append(_moving(group, plan=plan, node=node, to=replacements, claim=claim_of.get(group.index)))
        else:
            keep.append(group)
            waiting.append(_waiting(group, plan=plan, node=node, claim=claim_of.get(group.index)))
    kept = {g.index for g in keep}
    apply = [GroupToApply(index=g.index, replaces=tuple(i for i in g.replaces if i in kept)) for g in staying]
    return Rollout(apply=tuple(apply + new), delete=tuple(delete), keep=tuple(keep), moving=tuple(moving),
                   waiting=tuple(waiting))


def _fits(group: GroupState, *, plan: Plan, lost: Mapping[str, LostNode], claim: str | None) -> bool:
    return (_same(group.mechanism, plan.mechanism) and _same(group.product, plan.gpu_product)
            and not reshaped(group, plan=plan, claim=claim) and _lost(group, lost) is None)


def reshaped(group: GroupState, *, plan: Plan, claim: str | None = None) -> bool:
    """A group of the plan's mechanism with another number of replicas per GPU, or (``dra``) whose
    claim the plan names otherwise (``claim``: the one it names for the group's index; another
    device class, whole devices only). NB: it moves too: a replica added or restarted in place is
    pinned by the group's pod affinity to its node, whose GPUs may have no slot or device left for
    it (a claim is immutable: a new one is another GPU)."""
    if plan.shares_mode or group.mechanism != plan.mechanism:
        return False
    return ((group.replicas > 0 and group.replicas != plan.replicas_per_gpu)
            or bool(claim and group.claim and group.claim != claim))


def _same(recorded: str, wanted: str) -> bool:
    """NB: a StatefulSet without the annotation (``""``, made by hand or long ago) is not moved for it."""
    return not recorded or recorded == wanted


def _lost(group: GroupState, lost: Mapping[str, LostNode]) -> LostNode | None:
    # NB: a dra-shares StatefulSet spreads its replicas over GPUs of several nodes; its first pod's
    # node says nothing of the others.
    if group.mechanism == "dra-shares" or not group.placed_node:
        return None
    node = lost.get(group.placed_node)
    if node is not None and node.state == "cordoned" and group.node is not None:
        return None  # NB: a cordon stops new pods only: a group with a pod bound there keeps serving
    return node


def _planned(*, group: int, like: GroupState, plan: Plan) -> GroupState:
    """A group about to be created, as the next read will show it (nothing Ready)."""
    return GroupState(namespace=like.namespace, name=group_name(service=like.service, index=group),
                      service=like.service, index=group, product=plan.gpu_product, mechanism=plan.mechanism,
                      replicas=plan.total_replicas if plan.shares_mode else plan.replicas_per_gpu)


def _ready(group: GroupState) -> bool:
    return group.replicas > 0 and group.ready_replicas >= group.replicas


def _fresh_indexes(existing: Sequence[GroupState], *, count: int) -> list[int]:
    """Indexes above every existing group's. NB: never a gap below: a group deleted a moment ago
    may still have terminating pods with that index's label, which a new group's required pod
    affinity would follow to the old node."""
    start = max((g.index for g in existing), default=-1) + 1
    return list(range(start, start + count))


def _where(group: GroupState, *, plan: Plan) -> str:
    product = f" ({group.product})" if group.product != plan.gpu_product else ""
    size = f" ({group.replicas} replicas per GPU)" if group.replicas != plan.replicas_per_gpu and reshaped(
        group, plan=plan) else ""
    return f"{group.mechanism or 'unknown sharing'}{product}{size}" + (f" on node {group.node}" if group.node else "")


def _target(plan: Plan, group: GroupState, *, claim: str | None) -> str:
    resized = reshaped(group, plan=plan)
    return (plan.mechanism + (f" ({plan.gpu_product})" if group.product != plan.gpu_product else "")
            + (f" ({plan.replicas_per_gpu} replicas per GPU)" if resized else "")
            + (" (another claim)" if not resized and reshaped(group, plan=plan, claim=claim) else ""))


def _moving(
    group: GroupState, *, plan: Plan, node: LostNode | None, to: Sequence[GroupState], claim: str | None
) -> str:
    ready = sum(g.ready_replicas for g in to)
    wanted = sum(g.replicas for g in to)
    names = ", ".join(g.name for g in to)
    why = f" ({node.describe()})" if node else ""
    return (f"moving group {group.name} from {_where(group, plan=plan)}{why} to {_target(plan, group, claim=claim)}: "
            f"{ready}/{wanted} replicas of the new group {names} Ready")


def _waiting(group: GroupState, *, plan: Plan, node: LostNode | None, claim: str | None) -> str:
    why = f" ({node.describe()})" if node else ""
    target = _target(plan, group, claim=claim)
    return (f"group {group.name} stays on {_where(group, plan=plan)}{why} until a {target} group fits beside it"
            ": no free GPU for its replacement; free GPUs or add nodes")


def _parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None

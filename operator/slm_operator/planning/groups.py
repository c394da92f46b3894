"""A GPU group as the operator knows it: one type for the index, the planner and the status.

A *GPU group* is one StatefulSet of ``replicas`` vLLM pods on one node (see
``builders.children``): with ``dra`` they share one GPU (the group's claim); with ``mps`` or
``time-slicing`` they are slots of the node's device-plugin pool, on whichever GPUs the plugin's
allocation policy picks. The operator reads groups from three places — the StatefulSet watch (what
was promised), a list of StatefulSets and their pods (readiness and node), its own applies (the
placement ledger) — and writes them into ``status.placement.groups``; all four use
:class:`GroupState`.

Side-effect free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from slm_operator.constants import (
    ANNOTATION_CLAIM_MEMORY,
    ANNOTATION_CLAIM_SHARES,
    ANNOTATION_MECHANISM,
    ANNOTATION_NODE,
    ANNOTATION_PRODUCT,
    ANNOTATION_REPLACES,
    LABEL_GROUP,
    LABEL_SERVICE,
)
from slm_operator.planning.shares import ShareRequest

#: The keys of a group in the CRD's ``status.placement.groups`` schema (others would be pruned,
#: and every comparison with the stored status would then differ and write again).
STATUS_KEYS = ("name", "index", "node", "replicas", "readyReplicas", "claim")


@dataclasses.dataclass(frozen=True)
class GroupState:
    """One GPU group: its StatefulSet, what it was planned with, and (when read) how it runs."""

    namespace: str
    #: The StatefulSet's name (``constants.group_name``).
    name: str
    #: The SLMService it belongs to (same namespace).
    service: str
    index: int
    #: GPU product (node label spelling) and mechanism it was planned with; ``""`` if unknown.
    product: str
    mechanism: str
    #: Pods the StatefulSet asks for (the plan's replicas per GPU) and how many are Ready.
    replicas: int
    ready_replicas: int = 0
    #: The node its pods run on, once one is scheduled.
    node: str | None = None
    #: The DRA ResourceClaim its pods share (same namespace), if any.
    claim: str | None = None
    #: ``dra-shares``: the ResourceClaimTemplate each pod gets its own claim from, and what one
    #: such claim consumes.
    claim_template: str | None = None
    share_request: ShareRequest | None = None
    #: The indexes of the groups this one was made to replace (a move), until they are gone.
    replaces: tuple[int, ...] = ()
    #: Device-plugin groups: the node the planner pinned its pods to (``None``: the scheduler's pick,
    #: as for groups made before pinning, DRA and ``dra-shares``).
    pinned_node: str | None = None

    @property
    def placed_node(self) -> str | None:
        """Where its pods run or will run: the node of a bound pod, else the node it is pinned to
        (a group whose pods wait for a node that is gone moves like one whose pods ran there)."""
        return self.node or self.pinned_node

    @property
    def key(self) -> str:
        """``<namespace>/<statefulset>``: how indexes and the ledger name a group."""
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service}"

    @property
    def claim_key(self) -> str | None:
        return f"{self.namespace}/{self.claim}" if self.claim else None

    def to_status(self) -> dict[str, Any]:
        """The group as ``status.placement.groups[]`` holds it."""
        values = {"name": self.name, "index": self.index, "node": self.node, "replicas": self.replicas,
                  "readyReplicas": self.ready_replicas, "claim": self.claim}
        return {key: values[key] for key in STATUS_KEYS if values[key] is not None}


def group_from_statefulset(statefulset: Mapping[str, Any], *, node: str | None = None) -> GroupState | None:
    """Read one of our group StatefulSets (a dict as the API returns it); ``None`` if it is not one."""
    meta = statefulset.get("metadata") or {}
    labels = meta.get("labels") or {}
    if LABEL_SERVICE not in labels:
        return None
    annotations = meta.get("annotations") or {}
    spec = statefulset.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    claims = [c.get("resourceClaimName") for c in pod_spec.get("resourceClaims") or ()]
    templates = [c.get("resourceClaimTemplateName") for c in pod_spec.get("resourceClaims") or ()]
    memory = _int(annotations.get(ANNOTATION_CLAIM_MEMORY))
    shares = annotations.get(ANNOTATION_CLAIM_SHARES)
    return GroupState(
        namespace=meta.get("namespace") or "",
        name=meta.get("name") or "",
        service=labels[LABEL_SERVICE],
        index=_int(labels.get(LABEL_GROUP)),
        product=annotations.get(ANNOTATION_PRODUCT, ""),
        mechanism=annotations.get(ANNOTATION_MECHANISM, ""),
        replicas=_int(spec.get("replicas")),
        ready_replicas=_int((statefulset.get("status") or {}).get("readyReplicas")),
        node=node,
        claim=claims[0] if claims and claims[0] else None,
        claim_template=templates[0] if templates and templates[0] else None,
        share_request=ShareRequest(memory_mib=memory, shares=_int(shares) if shares else None) if memory else None,
        replaces=tuple(int(i) for i in (annotations.get(ANNOTATION_REPLACES) or "").split(",") if i.isdigit()),
        pinned_node=annotations.get(ANNOTATION_NODE) or None,
    )


def groups_from_objects(
    *, statefulsets: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> list[GroupState]:
    """The groups of one service, ordered by index, each with the node its first pod landed on."""
    node_of: dict[str, str] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        index = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_GROUP)
        if node and index is not None:
            node_of.setdefault(index, node)
    groups = []
    for sts in statefulsets:
        index = ((sts.get("metadata") or {}).get("labels") or {}).get(LABEL_GROUP, "0")
        group = group_from_statefulset(sts, node=node_of.get(index))
        if group is not None:
            groups.append(group)
    return sorted(groups, key=lambda g: g.index)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0

"""Compute the SLMService status: phase, conditions, profile and placement summaries.

Each outcome of a reconcile (failed, pending, profiling, serving, readiness) is a
:class:`StatusUpdate` built by a function here; ``reporter`` writes it. Side-effect free.
:func:`desired_patch` returns only what differs from the stored status, so a
reconcile that changes nothing writes nothing (zero API writes once everything is Ready), and a
condition's ``lastTransitionTime`` moves only when its ``status`` flips.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from slm_operator.constants import (
    INFERENCE_POOL_API_VERSION,
    INFERENCE_POOL_CRD,
    INFERENCE_POOL_CRD_INSTALL,
    SERVING_PORT,
    Routing,
    engine_labels,
    label_selector,
)
from slm_operator.errors import SLMError
from slm_operator.planning.groups import GroupState
from slm_operator.planning.plan import Plan
from slm_operator.planning.shares import DeviceOccupancy
from slm_operator.profiling.types import Profile
from slm_operator.spec import EndpointPickerRef

Phase = Literal["Pending", "Profiling", "Planning", "Deploying", "Ready", "Degraded", "Failed"]
CONDITION_TYPES = ("Profiled", "Planned", "Available", "Progressing", "Routed")
#: Reason of the Routed condition while the cluster lacks the InferencePool CRD.
POOL_CRD_MISSING = "InferencePoolCRDMissing"
#: Reasons of the Progressing condition while GPU groups move (``planning.moves``): replacements
#: starting, and groups left where they are until a replacement fits beside them.
MOVING = "Moving"
MOVE_WAITING = "MoveWaitingForCapacity"
MOVE_REASONS = (MOVING, MOVE_WAITING)
#: A condition as the CRD stores it (type, status, reason, message, and the times we add).
Condition = dict[str, Any]


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(type_: str, ok: bool | None, reason: str, message: str) -> Condition:
    return {"type": type_, "status": "Unknown" if ok is None else ("True" if ok else "False"),
            "reason": reason, "message": message}


def merge_conditions(
    *, current: Iterable[Mapping[str, Any]], updates: Iterable[Mapping[str, Any]], generation: int | None, now: str,
    removed: Iterable[str] = (),
) -> list[Condition]:
    """Replace conditions by type; keep ``lastTransitionTime`` unless the status flipped. Conditions
    of the ``removed`` types go (one that no longer applies, such as Routed once routing is off)."""
    by_type = {c["type"]: dict(c) for c in current if c["type"] not in removed}
    for update in updates:
        old = by_type.get(update["type"])
        new = dict(update) | ({"observedGeneration": generation} if generation is not None else {})
        unchanged = old is not None and old.get("status") == new["status"]
        new["lastTransitionTime"] = old.get("lastTransitionTime") if old is not None and unchanged else now
        by_type[update["type"]] = new
    ordered = [by_type[t] for t in CONDITION_TYPES if t in by_type]
    return ordered + [c for t, c in sorted(by_type.items()) if t not in CONDITION_TYPES]


def profile_summary(profile: Profile) -> dict[str, Any]:
    """The profile as ``status.profile`` holds it (camelCase, no empty values)."""
    summary = {
        "source": profile.source,
        "engine": profile.engine,
        "gpuProduct": profile.gpu_product,
        "batchSize": profile.batch_size,
        "plateauTokensPerSecond": round(profile.tokens_per_second_per_replica, 1),
        "tokensPerSecondPerGPU": round(profile.tokens_per_second_per_gpu, 1),
        "memoryPerReplicaGiB": round(profile.memory_per_replica_gib, 2),
        "replicasToSaturate": profile.replicas_to_saturate,
        "interTokenLatencyMs": profile.inter_token_latency_ms,
        "rooflineFraction": round(profile.roofline_fraction, 3) if profile.roofline_fraction is not None else None,
        "profileRef": profile.profile_ref,
        "measuredAt": profile.measured_at,
        "explanation": profile.explanation,
    }
    return {k: v for k, v in summary.items() if v is not None and v != ""}


def placement_summary(
    *, plan: Plan, ready_replicas: int, groups: Sequence[GroupState], requested_gpus: int,
    devices: Sequence[DeviceOccupancy] = (),
) -> dict[str, Any]:
    """``status.placement``: what runs where, and what is guaranteed about it. ``packingGuarantee``
    says whether the GPU behind each unit is one physical GPU (``one-gpu``: DRA claims, whole GPUs)
    or slots of one node's device-plugin pool (``node-slot-pool``), with the allocation policy the
    plan assumes there (``allocationPolicy``) and the slots per GPU a replica's share is one of."""
    if plan.shares_mode:
        return {
            "mechanism": plan.mechanism,
            "resourceName": plan.device_class_name,
            "replicasPerGPU": plan.replicas_per_gpu,
            "totalReplicas": plan.total_replicas,
            "requestedReplicas": plan.replicas,
            "readyReplicas": ready_replicas,
            "ready": f"{ready_replicas}/{plan.total_replicas}",
            "sharePerReplica": plan.share_per_replica,
            "memoryPerReplicaGiB": round(plan.share_request.memory_mib / 1024, 2) if plan.share_request else None,
            "capacityMode": plan.capacity_mode,
            "packingGuarantee": plan.packing_guarantee,
            "plannedTokensPerSecond": plan.planned_tokens_per_second,
            **shared_devices_summary(devices),
            "groups": [g.to_status() for g in groups],
        }
    return {
        "mechanism": plan.mechanism,
        "resourceName": plan.resource_name or plan.device_class_name,
        "packingGuarantee": plan.packing_guarantee,
        # NB: only where replicas are device-plugin slots (absent, not null: a null would differ
        # from the stored status at every comparison and be written again).
        **({"allocationPolicy": plan.allocation_policy, "slotsPerGPU": plan.slots_per_gpu}
           if plan.allocation_policy is not None else {}),
        "gpus": plan.placeable_gpus,
        "requestedGPUs": requested_gpus,
        "replicasPerGPU": plan.replicas_per_gpu,
        "totalReplicas": plan.total_replicas,
        "readyReplicas": ready_replicas,
        "ready": f"{ready_replicas}/{plan.total_replicas}",
        "plannedTokensPerSecond": plan.planned_tokens_per_second,
        "nodes": sorted({g.node for g in groups if g.node}),
        "groups": [g.to_status() for g in groups],
    }


def shared_devices_summary(devices: Sequence[DeviceOccupancy]) -> dict[str, Any]:
    """``dra-shares``: the GPUs the replicas' claims are allocated on (``gpus`` counts them)."""
    return {"gpus": len(devices), "devices": [d.to_status() for d in devices],
            "nodes": sorted({d.node for d in devices})}


def serving_phase(
    *, total_replicas: int, ready_replicas: int, placeable_gpus: int, requested_gpus: int, explanation: str
) -> tuple[Phase, list[Condition]]:
    """Phase and conditions once children exist. Side-effect free.

    Partial placement (fewer GPUs than asked) is Degraded once something serves, never Ready.
    """
    degraded = placeable_gpus < requested_gpus
    conditions = [condition(
        "Planned", True, "PartialPlacement" if degraded else "Planned",
        f"only {placeable_gpus} of {requested_gpus} GPU(s) fit now: {explanation}" if degraded else explanation,
    )]
    total = total_replicas
    if ready_replicas >= total:
        conditions += [condition("Available", True, "AllReplicasReady", f"{ready_replicas}/{total} replicas ready"),
                       condition("Progressing", False, "Complete", "all planned replicas are ready")]
        return ("Degraded" if degraded else "Ready"), conditions
    conditions += [
        condition("Available", ready_replicas > 0, "ReplicasReady" if ready_replicas else "NoReplicaReady",
                  f"{ready_replicas}/{total} replicas ready"),
        condition("Progressing", True, "StartingReplicas",
                  f"{total - ready_replicas} replica(s) starting, one after another in each GPU group "
                  "(dra-shares: on each GPU)"),
    ]
    return ("Degraded" if degraded and ready_replicas else "Deploying"), conditions


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level status keys whose value differs (a merge patch). Empty when nothing changed."""
    return {k: v for k, v in desired.items() if current.get(k) != v}


# --- Status updates: what each outcome of a reconcile writes --------------------------------------

@dataclasses.dataclass(frozen=True)
class StatusUpdate:
    """One outcome, as the status should show it: phase, conditions, other top-level fields."""

    phase: Phase
    conditions: tuple[Condition, ...]
    #: Other top-level status keys to set (``profile``, ``placement``, ``endpoint``).
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: ``status.message``; ``None`` leaves it as it is.
    message: str | None = None
    #: A Warning Event reason posted with this update even when the phase does not change.
    warning: str | None = None
    #: The message of that Event; ``None``: ``message``.
    warning_message: str | None = None
    #: Condition types to remove from the status.
    removed_conditions: tuple[str, ...] = ()

    def with_profile(self, profiled: Profiled | None) -> StatusUpdate:
        """This update, also saying what profiling found (its condition and ``status.profile``)."""
        if profiled is None:
            return self
        return dataclasses.replace(self, conditions=(profiled.condition, *self.conditions),
                                   fields={"profile": profiled.summary, **self.fields})

    def with_routing(self, routed: Condition | None, *, current: Mapping[str, Any]) -> StatusUpdate:
        """This update, also saying where requests go (condition Routed, see :func:`routed`; removed
        when routing is off). A Warning Event when the InferencePool CRD is first found missing,
        not at every reconcile while it stays missing."""
        if routed is None:
            return dataclasses.replace(self, removed_conditions=(*self.removed_conditions, "Routed"))
        before: Mapping[str, Any] = next(
            (c for c in current.get("conditions") or () if c.get("type") == "Routed"), {})
        update = dataclasses.replace(self, conditions=(*self.conditions, routed))
        if routed["reason"] == POOL_CRD_MISSING and before.get("reason") != POOL_CRD_MISSING:
            update = dataclasses.replace(update, warning=POOL_CRD_MISSING, warning_message=routed["message"])
        return update

    def with_moves(self, *, moving: Sequence[str], waiting: Sequence[str]) -> StatusUpdate:
        """This update, with condition Progressing saying which groups move (``Moving``, True) or
        wait for room for their replacement (``MoveWaitingForCapacity``); as it is when none do."""
        if not moving and not waiting:
            return self
        progressing = condition("Progressing", bool(moving), MOVE_WAITING if waiting else MOVING,
                                "; ".join([*moving, *waiting]))
        return dataclasses.replace(self, conditions=tuple(
            c for c in self.conditions if c["type"] != "Progressing") + (progressing,))

    def event_message(self) -> str:
        return self.message or "; ".join(
            f"{c['type']}={c['status']} ({c['reason']}): {c['message']}" for c in self.conditions)


@dataclasses.dataclass(frozen=True)
class Profiled:
    """What a finished profile adds to every later update of the same reconcile."""

    condition: Condition
    summary: dict[str, Any]


def failed(condition_type: str, error: SLMError) -> StatusUpdate:
    """A permanent error: ``Failed`` until the spec changes, with a Warning Event of its reason."""
    return StatusUpdate(phase="Failed", conditions=(condition(condition_type, False, error.reason, error.message),),
                        message=error.message, warning=error.reason)


def retrying(condition_type: str, error: SLMError) -> StatusUpdate:
    """A write the API server may accept later (forbidden, throttled, unreachable): ``Degraded`` with
    the reason, a Warning Event, and the retry timer tries again."""
    return StatusUpdate(phase="Degraded", conditions=(condition(condition_type, False, error.reason, error.message),),
                        message=error.message, warning=error.reason)


def pending(condition_type: str, reason: str, message: str) -> StatusUpdate:
    """Waiting for something outside the spec (a Secret, free GPUs); a timer looks again."""
    return StatusUpdate(phase="Pending", conditions=(condition(condition_type, False, reason, message),),
                        message=message)


def profiling(*, current: Mapping[str, Any], progress: str) -> StatusUpdate:
    """A measurement is running: its progress, in the condition and in ``status.profile``."""
    return StatusUpdate(phase="Profiling", conditions=(condition("Profiled", None, "Profiling", progress),),
                        fields={"profile": dict(current.get("profile") or {}) | {"progress": progress}},
                        message=f"profiling: {progress}")


def profiled(*, profile: Profile, current: Mapping[str, Any]) -> Profiled:
    summary = profile_summary(profile)
    if "progress" in (current.get("profile") or {}):
        summary["progress"] = None  # a merge patch deletes it once profiling is done
    # NB: an auto profile the profiler could not measure says why in the reason, not only in words.
    reason = profile.fallback_reason or f"Profile{profile.source.capitalize()}"
    return Profiled(condition=condition("Profiled", True, reason,
                                        profile.explanation or f"{profile.source} profile"),
                    summary=summary)


def serving(
    *, name: str, plan: Plan, groups: Sequence[GroupState], endpoint: str, devices: Sequence[DeviceOccupancy] = ()
) -> StatusUpdate:
    """Children are applied: phase from how many replicas are Ready, and where they run.

    ``status.selector`` (the scale subresource's labelSelectorPath) selects the vLLM pods of SLMService
    ``name``, for an HPA or KEDA; the scale subresource's status replicas are ``placement.gpus``.
    ``devices``: with ``dra-shares``, the GPUs the replicas' claims hold."""
    # NB: mid-move the old groups and their replacements are Ready together; count what is planned.
    ready = min(sum(g.ready_replicas for g in groups), plan.total_replicas)
    # NB: dra-shares places replicas, not GPUs: partial placement is fewer replicas than asked.
    placed, wanted = ((plan.placeable_replicas, plan.replicas) if plan.shares_mode
                      else (plan.placeable_gpus, plan.gpus))
    phase, conditions = serving_phase(total_replicas=plan.total_replicas, ready_replicas=ready,
                                      placeable_gpus=placed, requested_gpus=wanted, explanation=plan.explanation)
    placement = placement_summary(plan=plan, ready_replicas=ready, groups=groups, requested_gpus=plan.gpus,
                                  devices=devices)
    return StatusUpdate(phase=phase, conditions=tuple(conditions), message=plan.explanation,
                        fields={"placement": placement, "endpoint": endpoint,
                                "selector": label_selector(engine_labels(service=name))})


def routed(*, name: str, routing: Routing, picker: EndpointPickerRef | None) -> Condition | None:
    """The Routed condition: how a gateway reaches the replicas besides Service ``name``; ``None``
    when ``spec.routing.inferencePool`` is unset (the Service only: no condition)."""
    if routing == "service" or picker is None:
        return None
    if routing == "crd-missing":
        return condition(
            "Routed", False, POOL_CRD_MISSING,
            f"spec.routing.inferencePool is set but the cluster does not serve {INFERENCE_POOL_CRD} "
            f"({INFERENCE_POOL_API_VERSION}): install the Gateway API Inference Extension CRDs, e.g. "
            f"{INFERENCE_POOL_CRD_INSTALL}; the operator looks again every retry interval. Meanwhile "
            f"requests reach the replicas through Service {name} (status.endpoint)")
    return condition(
        "Routed", True, "InferencePoolApplied",
        f"InferencePool {name} selects the replicas on port {SERVING_PORT}; endpoint picker Service "
        f"{picker.name}:{picker.port} (failureMode {picker.failure_mode}); route an HTTPRoute backendRef "
        f"to it. Service {name} serves too")


def waiting(status: Mapping[str, Any]) -> bool:
    """True while something outside the spec must happen before the service is what it asks (a
    Secret, the InferencePool CRD, an API write refused for now, a group moving: a move's old group
    goes once the new one is Ready): the retry timer reconciles it again.

    NB: not what events bring: replicas turning Ready (the StatefulSet watch folds readiness), a
    node NotReady past its grace period (its status events, ``wakeups.NodeGraceTimers``), GPU
    capacity freed (:func:`waiting_for_capacity`, the inventory's watches). A Deploying service is
    not polled: at scale that was a full re-plan and re-apply of every starting service each
    interval, all under the planning lock."""
    conditions = status.get("conditions") or ()
    if any((c.get("type") == "Routed" and c.get("reason") == POOL_CRD_MISSING)
           or (c.get("type") == "Progressing" and c.get("reason") in MOVE_REASONS) for c in conditions):
        return True
    return status.get("phase") in ("Pending", "Degraded") and not waiting_for_capacity(status)


#: Planner reasons only more GPU capacity changes (a slot or a device freed, a node added).
CAPACITY_REASONS = ("InsufficientSlots", "NoSharedGPUs", "NoMatchingGPUs", "PartialPlacement")


def waiting_for_capacity(status: Mapping[str, Any]) -> bool:
    """True while the service waits for GPU capacity and for nothing else: Pending for one of the
    :data:`CAPACITY_REASONS`, or Degraded by a partial placement whose placed replicas are all
    Ready. Such a service is reconciled when the GPU inventory's free capacity grows (``wakeups``)."""
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    if (conditions.get("Planned") or {}).get("reason") not in CAPACITY_REASONS:
        return False
    if (conditions.get("Routed") or {}).get("reason") == POOL_CRD_MISSING:
        return False
    progressing = (conditions.get("Progressing") or {}).get("reason")
    if status.get("phase") == "Pending":
        return progressing not in MOVE_REASONS
    return status.get("phase") == "Degraded" and progressing == "Complete"


#: Phases a readiness change never moves a service out of: the reconciler set them for a reason
#: pod readiness knows nothing of (a bad spec, a missing Secret, a profile being measured), and
#: only the reconciler, once that reason is gone, moves it on.
RECONCILER_PHASES: tuple[Phase, ...] = ("Failed", "Pending", "Profiling", "Planning")


def readiness(
    *, current: Mapping[str, Any], groups: Sequence[GroupState], devices: Sequence[DeviceOccupancy] | None = None
) -> StatusUpdate | None:
    """The stored placement with the groups' readiness now; ``None`` when readiness has nothing to say:
    before anything is placed, or while the service is in one of :data:`RECONCILER_PHASES` (NB: so a
    Failed service never turns Ready because its old pods still run). ``devices``: with ``dra-shares``,
    the GPUs the replicas' claims hold now."""
    placement = dict(current.get("placement") or {})
    if not placement or current.get("phase") in RECONCILER_PHASES:
        return None
    ready = min(sum(g.ready_replicas for g in groups), placement.get("totalReplicas", 0))
    placement |= {"readyReplicas": ready, "ready": f"{ready}/{placement.get('totalReplicas', 0)}",
                  "groups": [g.to_status() for g in groups], "nodes": sorted({g.node for g in groups if g.node})}
    shares = placement.get("mechanism") == "dra-shares"
    if shares and devices is not None:
        placement |= shared_devices_summary(devices)
    placed, wanted = ((placement.get("totalReplicas", 0), placement.get("requestedReplicas", 0)) if shares
                      else (placement.get("gpus", 0), placement.get("requestedGPUs", 0)))
    phase, conditions = serving_phase(
        total_replicas=placement.get("totalReplicas", 0), ready_replicas=ready,
        placeable_gpus=placed, requested_gpus=wanted, explanation=current.get("message", ""),
    )
    # NB: while groups move, Progressing is the reconciler's (which groups, how far); the retry
    # timer brings it up to date.
    if any(c.get("type") == "Progressing" and c.get("reason") in MOVE_REASONS for c in current.get("conditions") or ()):
        conditions = [c for c in conditions if c["type"] != "Progressing"]
    return StatusUpdate(phase=phase, conditions=tuple(conditions), fields={"placement": placement})


def desired_patch(
    *, current: Mapping[str, Any], update: StatusUpdate, generation: int | None, now: str
) -> dict[str, Any]:
    """The merge patch that brings ``current`` to ``update``: only what changed, empty if nothing."""
    desired = dict(update.fields)
    desired["phase"] = update.phase
    desired["conditions"] = merge_conditions(current=current.get("conditions") or (), updates=update.conditions,
                                             generation=generation, now=now, removed=update.removed_conditions)
    if generation is not None:
        desired["observedGeneration"] = generation
    if update.message is not None:
        desired["message"] = update.message
    return status_patch(current, desired)

"""Compute the SLMService status: phase, conditions, profile and placement summaries.

Side-effect free. :func:`status_patch` returns only what differs from the stored status, so a
reconcile that changes nothing writes nothing (zero API writes once everything is Ready), and a
condition's ``lastTransitionTime`` moves only when its ``status`` flips.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from slm_operator.planning.plan import Plan
from slm_operator.profiling.types import Profile

Phase = Literal["Pending", "Profiling", "Planning", "Deploying", "Ready", "Degraded", "Failed"]
CONDITION_TYPES = ("Profiled", "Planned", "Available", "Progressing")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(type_: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "Unknown" if ok is None else ("True" if ok else "False"),
            "reason": reason, "message": message}


def merge_conditions(
    *, current: Iterable[Mapping[str, Any]], updates: Iterable[Mapping[str, Any]], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """Replace conditions by type; keep ``lastTransitionTime`` unless the status flipped."""
    by_type = {c["type"]: dict(c) for c in current}
    for update in updates:
        old = by_type.get(update["type"])
        new = dict(update) | ({"observedGeneration": generation} if generation is not None else {})
        new["lastTransitionTime"] = (old or {}).get("lastTransitionTime") if old and old.get("status") == new["status"] else now
        by_type[update["type"]] = new
    ordered = [by_type[t] for t in CONDITION_TYPES if t in by_type]
    return ordered + [c for t, c in sorted(by_type.items()) if t not in CONDITION_TYPES]


def profile_summary(profile: Profile) -> dict[str, Any]:
    summary = {
        "source": profile.source,
        "engine": profile.engine,
        "gpuProduct": profile.gpu_product,
        "paretoBatchSize": profile.pareto_batch_size,
        "plateauTokensPerSecond": round(profile.tokens_per_second_per_replica, 1),
        "tokensPerSecondPerGPU": round(profile.tokens_per_second_per_gpu, 1),
        "memoryPerReplicaGiB": round(profile.memory_per_replica_gib, 2),
        "replicasPerGPU": profile.replicas_per_gpu,
        "interTokenLatencyMs": profile.inter_token_latency_ms,
        "profileRef": profile.profile_ref,
        "measuredAt": profile.measured_at,
        "explanation": profile.explanation,
    }
    return {k: v for k, v in summary.items() if v is not None and v != ""}


def placement_summary(
    *, plan: Plan, ready_replicas: int, groups: list[dict[str, Any]], requested_gpus: int
) -> dict[str, Any]:
    return {
        "mechanism": plan.mechanism,
        "resourceName": plan.resource_name or plan.device_class_name,
        "gpus": plan.placeable_gpus,
        "requestedGPUs": requested_gpus,
        "replicasPerGPU": plan.replicas_per_gpu,
        "totalReplicas": plan.total_replicas,
        "readyReplicas": ready_replicas,
        "ready": f"{ready_replicas}/{plan.total_replicas}",
        "plannedTokensPerSecond": plan.planned_tokens_per_second,
        "nodes": sorted({g["node"] for g in groups if g.get("node")}),
        "groups": groups,
    }


def serving_phase(
    *, total_replicas: int, ready_replicas: int, placeable_gpus: int, requested_gpus: int, explanation: str
) -> tuple[Phase, list[dict[str, Any]]]:
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
                  f"{total - ready_replicas} replica(s) starting, one after another on each GPU"),
    ]
    return ("Degraded" if degraded and ready_replicas else "Deploying"), conditions


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level status keys whose value differs (a merge patch). Empty when nothing changed."""
    return {k: v for k, v in desired.items() if current.get(k) != v}

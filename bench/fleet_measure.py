"""The fleet benchmark's measurements: GPUs occupied against the lower bound, targets, bind latency.

Every number of ``bench/results/fleet-*.json`` that the scale benchmark's measurements
(``bench/scale_measure.py``: watches, API server counters, steady state) do not give is computed
here; bench/README.md defines each. :func:`fleet_packing` is pure (dicts in, dict out).
"""

from __future__ import annotations

import collections
import math
import re
import time
from typing import Any

from bench.scale_measure import SERVICES_PATH, Tracker, latency_summary, rounded
from bench.scale_workload import MEMORY_MIB
from hack.localcluster.api import Api
from slm_operator.constants import LABEL_SERVICE, MANAGED_BY_SELECTOR, USABLE_MEMORY_FRACTION
from slm_operator.planning.plan import desired_gpus
from slm_operator.planning.profiles import static_profile
from slm_operator.spec import parse_spec

PODS_PATH = f"/api/v1/pods?labelSelector={MANAGED_BY_SELECTOR}"
#: The fields of a result printed at the end of a run (the issue's top-level keys first).
HEADLINE = ("services", "servicesTargetMet", "gpusOccupied", "lowerBoundGpus", "packingRatio", "groupModeGpus",
            "gpuPerServiceGpus", "applyToBoundP50Seconds", "applyToBoundP99Seconds", "operatorRssMiB",
            "operatorPeakRssMiB", "steadyStateWritesPerMinute", "steadyStateOperatorRequestsPerMinute", "phases",
            "overcommittedDevices")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


class FleetTracker(Tracker):
    """The scale benchmark's tracker plus, per engine pod, when it was first seen bound to a node."""

    def __init__(self) -> None:
        super().__init__()
        self.first_bound: dict[tuple[str, str], float] = {}

    def on_pod(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        if kind == "DELETED" or not (obj.get("spec") or {}).get("nodeName"):
            return
        with self.lock:
            self.first_bound.setdefault((meta.get("namespace", ""), meta["name"]), now)


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``12Gi``, ``250m``, ``1.5``, 3) as a number."""
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", str(value).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def fleet_packing(*, services: list[dict[str, Any]], pods: list[dict[str, Any]], claims: list[dict[str, Any]],
                  slices: list[dict[str, Any]], nodes: dict[str, Any]) -> dict[str, Any]:
    """GPUs occupied, the lower bound and the two baselines, targets met, capacity checks. Side-effect free."""
    usable_gib = {p: MEMORY_MIB[p] / 1024 * USABLE_MEMORY_FRACTION for p in MEMORY_MIB}
    by_service = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services}
    bound: collections.Counter[tuple[str, str]] = collections.Counter()
    for pod in pods:
        if pod["spec"].get("nodeName"):
            bound[(pod["metadata"]["namespace"], (pod["metadata"].get("labels") or {}).get(LABEL_SERVICE, ""))] += 1

    shares: dict[str, float] = collections.defaultdict(float)
    memory: dict[str, float] = collections.defaultdict(float)
    group_mode = per_service = planned_replicas = met_status = met_bound = 0
    mechanisms: collections.Counter[str] = collections.Counter()
    unmet: list[dict[str, Any]] = []
    for key, svc in by_service.items():
        spec, placement = svc["spec"], (svc.get("status") or {}).get("placement") or {}
        product = spec["gpu"]["product"]
        static = spec["profiling"]["static"]
        target = float(spec["scale"]["targetTokensPerSecond"])
        profile = static_profile(spec=parse_spec(spec), gpu_product=product)
        group_mode += desired_gpus(spec=parse_spec(spec), per_gpu=profile.tokens_per_second_per_gpu)
        # NB: one vLLM replica per GPU, each service on GPUs of its own (a plain deployment), at the
        # profile's one-replica throughput (static profiles: the plateau / k*, a lower bound).
        per_service += max(1, math.ceil(target / profile.tokens_per_second_per_replica - 1e-9))
        planned_replicas += int(placement.get("totalReplicas") or 0)
        mechanisms[str(placement.get("mechanism"))] += 1
        share = float(placement.get("sharePerReplica") or 0.0)
        n = bound.get(key, 0)
        shares[product] += n * share
        # NB: what a replica needs (its budget at B*), against usable memory; its claim asks
        # budget ÷ USABLE_MEMORY_FRACTION of the whole GPU, the same fraction.
        memory[product] += n * float(static["memoryPerReplicaGiB"])
        planned = float(placement.get("plannedTokensPerSecond") or 0.0)
        # NB: the second check does not trust the status: bound replicas x the share of the GPU's
        # plateau each is worth (the bandwidth-bound model: replicas share one GPU's plateau).
        from_bound = n * profile.tokens_per_second_per_gpu / profile.replicas_to_saturate
        met_status += planned >= target
        met_bound += from_bound >= target * (1 - 1e-9)
        if from_bound < target:
            unmet.append({"service": "/".join(key), "targetTokensPerSecond": target,
                          "boundReplicas": n, "plannedTokensPerSecond": planned,
                          "phase": (svc.get("status") or {}).get("phase")})

    lower = {p: math.ceil(max(shares[p], memory[p] / usable_gib[p]) - 1e-9) for p in set(shares) | set(memory)}
    occupied, overcommitted = _devices(claims=claims, slices=slices, nodes=nodes)
    occupied_total = sum(occupied.values())
    lower_total = sum(lower.values())
    return {
        "gpusOccupied": occupied_total,
        "gpusOccupiedByProduct": dict(occupied),
        "lowerBoundGpus": lower_total,
        "lowerBoundGpusByProduct": lower,
        "sharesByProduct": {p: round(v, 3) for p, v in shares.items()},
        "memoryGiBByProduct": {p: round(v, 1) for p, v in memory.items()},
        "packingRatio": rounded(occupied_total / lower_total if lower_total else None),
        "groupModeGpus": group_mode,
        "gpuPerServiceGpus": per_service,
        "servicesTargetMet": met_bound,
        "servicesTargetMetByStatus": met_status,
        "servicesTargetUnmet": unmet[:10],
        "replicasBound": sum(bound.values()),
        "replicasPlanned": planned_replicas,
        "servicesByMechanism": dict(mechanisms.most_common()),
        "overcommittedDevices": len(overcommitted),
        "overcommitExamples": overcommitted[:5],
    }


def _devices(*, claims: list[dict[str, Any]], slices: list[dict[str, Any]],
             nodes: dict[str, Any]) -> tuple[collections.Counter[str], list[dict[str, Any]]]:
    """Distinct allocated devices per product, and devices whose consumed capacity exceeds what they publish."""
    capacity: dict[tuple[str, str, str], dict[str, float]] = {}
    for rs in slices:
        spec = rs.get("spec") or {}
        for device in spec.get("devices") or ():
            capacity[(spec.get("driver", ""), (spec.get("pool") or {}).get("name", ""), device["name"])] = {
                name: quantity(c["value"]) for name, c in (device.get("capacity") or {}).items()}
    consumed: dict[tuple[str, str, str], dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float))
    for claim in claims:
        results = ((((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or ())
        for r in results:
            key = (r.get("driver", ""), r.get("pool", ""), r.get("device", ""))
            for name, amount in (r.get("consumedCapacity") or {}).items():
                consumed[key][name] += quantity(amount)
            consumed[key].setdefault("_claims", 0.0)
            consumed[key]["_claims"] += 1
    occupied: collections.Counter[str] = collections.Counter()
    over = []
    for key, used in consumed.items():
        node = nodes.get(key[1]) or {}
        occupied[(node.get("gpu") or {}).get("product", "unknown")] += 1
        published = capacity.get(key, {})
        for name, amount in used.items():
            if name != "_claims" and name in published and amount > published[name] * (1 + 1e-9):
                over.append({"device": "/".join(key), "capacity": name, "consumed": amount,
                             "published": published[name]})
    return occupied, over


def snapshot(*, api: Api, nodes_doc: dict[str, Any], tracker: FleetTracker) -> dict[str, Any]:
    """Phases, why services are not Ready, packing and apply → all replicas bound, from one list of each kind."""
    services = api.list_all(SERVICES_PATH)
    pods = api.list_all(PODS_PATH)
    claims = api.list_all("/apis/resource.k8s.io/v1/resourceclaims")
    slices = api.list_all("/apis/resource.k8s.io/v1/resourceslices")
    phases = collections.Counter((s.get("status") or {}).get("phase") or "(none)" for s in services)
    why = collections.Counter(
        f"{c['type']}={c['reason']}" for s in services for c in (s.get("status") or {}).get("conditions") or ()
        if c.get("status") != "True" and c["type"] in ("Planned", "Available"))
    pending_examples = [{"service": f"{s['metadata']['namespace']}/{s['metadata']['name']}",
                         "message": (s.get("status") or {}).get("message")}
                        for s in services if (s.get("status") or {}).get("phase") not in ("Ready", "Degraded")][:10]
    packing = fleet_packing(services=services, pods=pods, claims=claims, slices=slices,
                            nodes={n["name"]: n for n in nodes_doc["nodes"]})

    # apply → all replicas bound: per service, the last of its current pods to be seen bound.
    pods_of: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for pod in pods:
        meta = pod["metadata"]
        pods_of[(meta["namespace"], (meta.get("labels") or {}).get(LABEL_SERVICE, ""))].append(meta["name"])
    to_bound = []
    with tracker.lock:
        for svc in services:
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            want = int(((svc.get("status") or {}).get("placement") or {}).get("totalReplicas") or 0)
            seen = [tracker.first_bound.get((key[0], p)) for p in pods_of.get(key, ())]
            if key in tracker.applied and want and len(seen) >= want and all(t is not None for t in seen):
                to_bound.append(max(t for t in seen if t is not None) - tracker.applied[key])
    bound_latency = latency_summary(values=to_bound)
    return {"phases": dict(phases.most_common()), "notTrueConditions": dict(why.most_common(10)),
            "notReadyExamples": pending_examples, "packing": packing,
            **{k: packing[k] for k in ("gpusOccupied", "lowerBoundGpus", "packingRatio", "groupModeGpus",
                                       "gpuPerServiceGpus", "servicesTargetMet", "overcommittedDevices")},
            "applyToBound": bound_latency, "applyToBoundP50Seconds": bound_latency["p50"],
            "applyToBoundP99Seconds": bound_latency["p99"], "snapshotAt": time.time()}

"""Choosing the batch size (the papers' B*) and the replicas that saturate one GPU (k*) from a
throughput/latency curve.

The rules, all side-effect free:

1. **Clean.** Points with zero, negative or non-finite throughput are set aside with a reason
   (kept in :attr:`BatchSelection.rejected`); repeated batch sizes are averaged. A batch size that
   is not a positive integer is an input error.
2. **Feasible.** A point is feasible when it had no preemptions (the KV cache held the batch) and
   meets the SLO: mean inter-token latency ≤ ``slo.max_inter_token_latency_ms`` and mean TTFT ≤
   ``slo.max_time_to_first_token_ms`` (unset = unconstrained).
3. **Pareto frontier** (throughput vs ITL): the points no other point beats on both throughput
   (higher) and ITL (lower). Shown to the user; the batch size B* is always on it up to noise.
4. **Batch size B* = start of the plateau**: with ``best`` the highest feasible throughput, B* is
   the smallest feasible batch whose throughput reaches ``(1 − ε)·best``. The comparison uses a
   non-decreasing (isotonic) fit of throughput over batch size, so a lone noisy spike at a small
   batch is pooled with its neighbours instead of being picked. Because a pooled block's first
   value is at least the block mean, the measured throughput at B* is still ≥ ``(1 − ε)·best``.
5. **k*** = the replica count with the highest aggregate throughput among the measured
   replication points that meet the SLO without preemptions; without measurements, the
   estimator's memory-bound count, labelled as an estimate.

Relation to the follow-up paper's batching advisor (arXiv 2503.08311, shared/reference/README):
its rule A keeps the *largest* B whose per-request efficiency ``T(B)/(B·T(1))`` stays above ε
(and ITL ≤ 5× ITL(32)); its rule B keeps the largest B whose TPOT ≤ 3× TPOT(32). Both stop where
batching stops paying per request; ours stops where batching stops paying in total throughput,
which is what a throughput-packing operator needs, and the SLO replaces their fixed latency
factor. On the reference OPT-1.3B sweeps the two land within one sweep step of each other
(tests/unit/profiling/test_selection.py); :func:`advisor_rule_a` and :func:`advisor_rule_b`
implement theirs for that comparison.

Noise: on a flat plateau the "smallest batch within ε" moves when noise moves the threshold.
With multiplicative noise of at most δ, B* stays between the noiseless B* for
``ε' = 1 − (1−ε)(1−δ)/(1+δ)`` and for ``ε'' = 1 − (1−ε)(1+δ)/(1−δ)``; the property tests check
that bound rather than a fixed step count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from slm_operator.errors import PermanentError

from .types import Slo

__all__ = [
    "SelectionError",
    "SelectionPoint",
    "ReplicaPoint",
    "BatchSelection",
    "ReplicaSelection",
    "pareto_frontier",
    "isotonic_increasing",
    "select_batch",
    "select_replicas",
    "advisor_rule_a",
    "advisor_rule_b",
]


class SelectionError(PermanentError, ValueError):
    """The data cannot give a batch size (or k*): bad input, or nothing feasible (an SLO no batch
    size meets, a model whose KV cache does not fit). The message says why."""

    reason = "NoFeasibleBatchSize"


@dataclasses.dataclass(frozen=True)
class SelectionPoint:
    """One measured or estimated batch size. Throughput is input+output tokens/s of one replica."""

    batch_size: int
    throughput_tok_s: float
    itl_ms: float | None = None
    ttft_ms: float | None = None
    preemptions: int = 0
    memory_gib: float | None = None


@dataclasses.dataclass(frozen=True)
class ReplicaPoint:
    """k replicas at ``batch_size`` each on one GPU; throughput is the GPU's aggregate."""

    replicas: int
    aggregate_tok_s: float
    itl_ms: float | None = None
    preemptions: int = 0
    batch_size: int | None = None


@dataclasses.dataclass(frozen=True)
class BatchSelection:
    """The outcome of :func:`select_batch`, with everything needed to explain it.

    ``batch_size`` is the chosen batch size (B*), ``None`` when nothing qualifies.
    """

    batch_size: int | None
    epsilon: float
    best_tok_s: float | None
    threshold_tok_s: float | None
    points: tuple[SelectionPoint, ...]
    frontier: tuple[int, ...]
    feasible: tuple[int, ...]
    smoothed: dict[int, float]
    rejected: dict[int, str]
    explanation: str

    @property
    def point(self) -> SelectionPoint | None:
        return next((p for p in self.points if p.batch_size == self.batch_size), None)

    def selected_batch_size(self) -> int:
        """The chosen batch size; :class:`SelectionError` with the explanation when there is none."""
        if self.batch_size is None:
            raise SelectionError(self.explanation)
        return self.batch_size

    def to_dict(self) -> dict[str, object]:
        point = self.point
        return {
            "batchSize": self.batch_size,
            "plateauTokensPerSecond": round(point.throughput_tok_s, 1) if point else None,
            "bestTokensPerSecond": round(self.best_tok_s, 1) if self.best_tok_s else None,
            "thresholdTokensPerSecond": round(self.threshold_tok_s, 1) if self.threshold_tok_s else None,
            "interTokenLatencyMs": point.itl_ms if point else None,
            "memoryGiB": point.memory_gib if point else None,
            "epsilon": self.epsilon,
            "frontier": list(self.frontier),
            "feasible": list(self.feasible),
            "rejected": {str(b): why for b, why in self.rejected.items()},
            "explanation": self.explanation,
        }


@dataclasses.dataclass(frozen=True)
class ReplicaSelection:
    """The outcome of :func:`select_replicas`: ``replicas`` is k*, the count that saturates one GPU."""

    replicas: int
    aggregate_tok_s: float | None
    estimated: bool
    #: Why each rejected option was rejected, keyed "k x batch" (e.g. "4x256").
    rejected: dict[str, str]
    explanation: str
    #: Per-replica batch size of the chosen option, when the options carried one.
    batch_size: int | None = None
    itl_ms: float | None = None


def _finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _clean(points: Iterable[SelectionPoint]) -> tuple[list[SelectionPoint], dict[int, str]]:
    groups: dict[int, list[SelectionPoint]] = {}
    rejected: dict[int, str] = {}
    for p in points:
        if isinstance(p.batch_size, bool) or not isinstance(p.batch_size, int) or p.batch_size < 1:
            raise SelectionError(f"batch size must be a positive integer, got {p.batch_size!r}")
        if not _finite_positive(p.throughput_tok_s):
            rejected.setdefault(p.batch_size, f"throughput {p.throughput_tok_s!r} is zero or not a number")
            continue
        groups.setdefault(p.batch_size, []).append(p)
    cleaned = []
    for batch, same in sorted(groups.items()):
        rejected.pop(batch, None)
        cleaned.append(_average(same))
    return cleaned, rejected


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return sum(present) / len(present) if present else None


def _average(same: list[SelectionPoint]) -> SelectionPoint:
    if len(same) == 1:
        return same[0]
    return SelectionPoint(
        batch_size=same[0].batch_size,
        throughput_tok_s=sum(p.throughput_tok_s for p in same) / len(same),
        itl_ms=_mean([p.itl_ms for p in same]),
        ttft_ms=_mean([p.ttft_ms for p in same]),
        preemptions=max(p.preemptions for p in same),
        memory_gib=_mean([p.memory_gib for p in same]),
    )


def _slo_violation(p: SelectionPoint, slo: Slo) -> str | None:
    if p.preemptions:
        return f"{p.preemptions} preemptions (KV cache too small for the batch)"
    if slo.max_inter_token_latency_ms is not None:
        if p.itl_ms is None:
            return "no inter-token latency measured, but the SLO limits it"
        if p.itl_ms > slo.max_inter_token_latency_ms:
            return f"ITL {p.itl_ms:.1f} ms > SLO {slo.max_inter_token_latency_ms:g} ms"
    if slo.max_time_to_first_token_ms is not None:
        if p.ttft_ms is None:
            return "no time to first token measured, but the SLO limits it"
        if p.ttft_ms > slo.max_time_to_first_token_ms:
            return f"TTFT {p.ttft_ms:.0f} ms > SLO {slo.max_time_to_first_token_ms:g} ms"
    return None


def pareto_frontier(points: Sequence[SelectionPoint]) -> list[SelectionPoint]:
    """Points not dominated in (higher throughput, lower ITL), ordered by batch size.

    Points without an ITL are left out; equal points are all kept. Side-effect free.
    """
    timed = [(p, p.itl_ms) for p in points if p.itl_ms is not None and math.isfinite(p.itl_ms)]
    frontier = []
    for p, itl in timed:
        dominated = any(
            q.throughput_tok_s >= p.throughput_tok_s
            and q_itl <= itl
            and (q.throughput_tok_s > p.throughput_tok_s or q_itl < itl)
            for q, q_itl in timed
        )
        if not dominated:
            frontier.append(p)
    return sorted(frontier, key=lambda p: p.batch_size)


def isotonic_increasing(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators). Side-effect free."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted: list[float] = []
    for total, count in blocks:
        fitted.extend([total / count] * int(count))
    return fitted


def select_batch(*, points: Iterable[SelectionPoint], slo: Slo, epsilon: float) -> BatchSelection:
    """Apply rules 1-4 of the module docstring. Side-effect free.

    Never raises for data that merely gives no answer (everything breaches the SLO, all
    throughputs zero): ``batch_size`` is then ``None`` and ``explanation`` says why, with the partial
    results (frontier, rejections) kept. Raises :class:`SelectionError` for malformed input.
    """
    if not isinstance(epsilon, (int, float)) or not 0 <= epsilon < 1:
        raise SelectionError(f"epsilon must be in [0, 1), got {epsilon!r}")
    raw = list(points)
    if not raw:
        raise SelectionError("no sweep points to select from")
    cleaned, rejected = _clean(raw)
    feasible = []
    for p in cleaned:
        why = _slo_violation(p, slo)
        if why:
            rejected[p.batch_size] = why
        else:
            feasible.append(p)
    frontier = tuple(p.batch_size for p in pareto_frontier(cleaned))

    def unselected(reason: str) -> BatchSelection:
        return BatchSelection(
            batch_size=None, epsilon=epsilon, best_tok_s=None, threshold_tok_s=None, points=tuple(cleaned),
            frontier=frontier, feasible=tuple(p.batch_size for p in feasible), smoothed={},
            rejected=dict(sorted(rejected.items())), explanation=reason,
        )

    if not cleaned:
        return unselected("no sweep point has a positive throughput; the engine produced no tokens")
    if not feasible:
        details = "; ".join(f"B={b}: {why}" for b, why in sorted(rejected.items()))
        return unselected(f"no batch size meets the SLO without preemptions ({details}); relax the SLO")

    fitted = isotonic_increasing([p.throughput_tok_s for p in feasible])
    smoothed = {p.batch_size: f for p, f in zip(feasible, fitted, strict=True)}
    best = max(feasible, key=lambda p: p.throughput_tok_s)
    threshold = (1 - epsilon) * best.throughput_tok_s
    # NB: when the fit pools the best point with lower ones, no fitted value may reach the
    # threshold (ε near 0); the best point itself then qualifies.
    chosen = next((p for p in feasible if smoothed[p.batch_size] >= threshold * (1 - 1e-12)), best)
    tail = ""
    if best.batch_size != chosen.batch_size:
        gain = best.throughput_tok_s / chosen.throughput_tok_s - 1
        tail = f" The best, B={best.batch_size}, adds only {gain:+.0%} throughput"
        if chosen.itl_ms and best.itl_ms:
            tail += f" for {best.itl_ms / chosen.itl_ms:.1f}x the inter-token latency"
        tail += "."
    slo_text = ""
    if slo.max_inter_token_latency_ms is not None:
        slo_text = f" within the ITL SLO of {slo.max_inter_token_latency_ms:g} ms"
    itl_text = f", ITL {chosen.itl_ms:.1f} ms" if chosen.itl_ms is not None else ""
    explanation = (
        f"B*={chosen.batch_size}: the smallest batch reaching {1 - epsilon:.0%} of the best throughput"
        f"{slo_text} ({chosen.throughput_tok_s:,.0f} of {best.throughput_tok_s:,.0f} tok/s at "
        f"B={best.batch_size}{itl_text}).{tail}"
    )
    return BatchSelection(
        batch_size=chosen.batch_size,
        epsilon=epsilon,
        best_tok_s=best.throughput_tok_s,
        threshold_tok_s=threshold,
        points=tuple(cleaned),
        frontier=frontier,
        feasible=tuple(p.batch_size for p in feasible),
        smoothed=smoothed,
        rejected=dict(sorted(rejected.items())),
        explanation=explanation,
    )


def select_replicas(
    *,
    options: Iterable[ReplicaPoint | tuple[int, float, float | None, int]],
    slo: Slo,
    estimated: bool = False,
) -> ReplicaSelection:
    """k* = the feasible replica count with the highest aggregate throughput (rule 5).

    ``options`` are :class:`ReplicaPoint` or ``(replicas, aggregate_tok_s, itl_ms, preemptions)``.
    One replica is always an answer: with nothing feasible, k*=1 and the explanation says why.
    Side-effect free.
    """
    pts = [o if isinstance(o, ReplicaPoint) else ReplicaPoint(o[0], o[1], o[2], o[3]) for o in options]
    rejected: dict[str, str] = {}
    feasible = []
    for p in pts:
        if not isinstance(p.replicas, int) or p.replicas < 1:
            raise SelectionError(f"replica count must be a positive integer, got {p.replicas!r}")
        key = f"{p.replicas}x{p.batch_size}" if p.batch_size else str(p.replicas)
        if not _finite_positive(p.aggregate_tok_s):
            rejected[key] = "no throughput"
            continue
        probe = SelectionPoint(1, p.aggregate_tok_s, p.itl_ms, None, p.preemptions)
        why = _slo_violation(probe, Slo(slo.max_inter_token_latency_ms))
        if why:
            rejected[key] = why
            continue
        feasible.append(p)
    label = "estimated" if estimated else "measured"
    if not feasible:
        return ReplicaSelection(
            replicas=1, aggregate_tok_s=None, estimated=estimated, rejected=rejected,
            explanation=f"k*=1: no {label} replica count met the SLO without preemptions",
        )
    best = max(feasible, key=lambda p: (p.aggregate_tok_s, -p.replicas))
    singles = [p for p in feasible if p.replicas == 1]
    single = max(singles, key=lambda p: p.aggregate_tok_s) if singles else None
    gain = ""
    if single:
        gain = f" ({best.aggregate_tok_s / single.aggregate_tok_s - 1:+.0%} over the best single replica)"
    at = f" at B={best.batch_size} each" if best.batch_size else ""
    return ReplicaSelection(
        replicas=best.replicas,
        aggregate_tok_s=best.aggregate_tok_s,
        estimated=estimated,
        rejected=rejected,
        explanation=(
            f"k*={best.replicas}{at}: highest {label} aggregate, {best.aggregate_tok_s:,.0f} tok/s per GPU{gain}."
        ),
        batch_size=best.batch_size,
        itl_ms=best.itl_ms,
    )


def advisor_rule_a(
    *, points: Sequence[SelectionPoint], epsilon: float = 0.2, latency_factor: float = 5.0
) -> int | None:
    """The follow-up's advisor, variant A: largest B with T(B)/(B·T(1)) > ε and ITL ≤ f·ITL(B≈32)."""
    by_batch = {p.batch_size: p for p in _clean(points)[0]}
    if 1 not in by_batch:
        raise SelectionError("advisor rule A needs the batch-1 throughput T(1)")
    t1 = by_batch[1].throughput_tok_s
    ref = by_batch[min(by_batch, key=lambda b: abs(b - 32))]
    ok = [
        b for b, p in by_batch.items()
        if p.throughput_tok_s / (b * t1) > epsilon
        and (p.itl_ms is None or ref.itl_ms is None or p.itl_ms <= latency_factor * ref.itl_ms)
    ]
    return max(ok) if ok else None


def advisor_rule_b(*, points: Sequence[SelectionPoint], latency_factor: float = 3.0) -> int | None:
    """Variant B: largest B with mean TPOT ≤ f·TPOT(B≈32) (``itl_ms`` carries the TPOT here)."""
    itl_by_batch = {p.batch_size: p.itl_ms for p in _clean(points)[0] if p.itl_ms is not None}
    if not itl_by_batch:
        return None
    ref = itl_by_batch[min(itl_by_batch, key=lambda b: abs(b - 32))]
    ok = [b for b, itl in itl_by_batch.items() if itl <= latency_factor * ref]
    return max(ok) if ok else None


# --- Several models on one GPU (dra-shares) --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MixMember:
    """Replicas of one model on a shared GPU: ``replicas`` of it, each reserving 1/``replicas_to_saturate``
    of the GPU, whose profile says k* replicas reach ``plateau_tok_s`` together (one alone: ``solo_tok_s``)."""

    name: str
    replicas: int
    replicas_to_saturate: int
    plateau_tok_s: float
    solo_tok_s: float


@dataclasses.dataclass(frozen=True)
class MixPrediction:
    share: float
    predicted_tok_s: dict[str, float]
    solo_sum_tok_s: float
    explanation: str

    @property
    def total_tok_s(self) -> float:
        return sum(self.predicted_tok_s.values())


def predict_mix(members: Sequence[MixMember]) -> MixPrediction:
    """What a GPU serving several models delivers, as the planner predicts it.

    Decode is bandwidth-bound: replicas on one GPU share its HBM bandwidth, so a replica reserving
    1/k* of the GPU gets 1/k* of its own model's plateau, whatever the other replicas run. The GPU's
    prediction is the sum of those, never the sum of the replicas' solo throughputs (each measured
    alone on the whole GPU). Raises SelectionError where the shares add up to more than one GPU.
    """
    if not members:
        raise SelectionError("a mix needs at least one model")
    share = sum(m.replicas / max(m.replicas_to_saturate, 1) for m in members)
    if share > 1 + 1e-9:
        raise SelectionError(f"the replicas reserve {share:.2f} of the GPU; the planner never puts more than "
                             "one GPU's worth (Σ replicas/k* ≤ 1) on a GPU")
    predicted = {m.name: m.replicas * m.plateau_tok_s / max(m.replicas_to_saturate, 1) for m in members}
    solo = sum(m.replicas * m.solo_tok_s for m in members)
    lines = [f"{m.name}: {m.replicas} replica(s) × {m.plateau_tok_s:,.0f}/{m.replicas_to_saturate} "
             f"= {predicted[m.name]:,.0f} tok/s" for m in members]
    explanation = (
        "; ".join(lines) + f". GPU: {sum(predicted.values()):,.0f} tok/s with {share:.0%} of it reserved "
        f"(each replica gets its share of its own model's plateau: decode is bandwidth-bound, so replicas on "
        f"one GPU split its bandwidth). Not the {solo:,.0f} tok/s their solo throughputs add up to: each solo "
        "figure had the whole GPU."
    )
    return MixPrediction(share=share, predicted_tok_s=predicted, solo_sum_tok_s=solo, explanation=explanation)

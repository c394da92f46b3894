"""The estimator against the reference measurements: its errors, the fit of its engine constants,
and a leave-one-out validation that cannot overfit.

The reference (``shared/reference``: OPT-1.3B on one H100 64 GB, vLLM 0.6.3 V0) holds five
measured curves (the ShareGPT sweep, four fixed-output-length sweeps with chunked prefill) and a
replication table (k replicas × max_num_seqs under MPS). Only the *engine* constants of
:class:`~.estimator.Calibration` are fitted (a0 host time per step, a1 host time per sequence,
t_L GPU time per layer); the GPU's effective bandwidth comes from the GPU table and the model's
bytes and FLOPs from its config.json, so nothing is fitted per model.

* :func:`fit_calibration` fits the three on the single-replica rows at their *observed* mean
  running batch (the step model itself) and on the replication rows (which split the step into
  host time, that replicas overlap, and GPU time, that they share). ``slm-profiler calibrate
  REFERENCE_DIR --fit`` prints it; :data:`~.estimator.CALIBRATION` is its result.
* :func:`leave_one_out` refits without each curve in turn and predicts the curve left out; the
  unit tests bound its errors and docs/profiling.md prints its table.
* :func:`calibration_report` predicts every row with the shipped constants, two ways: **at N**
  (from ``max_num_seqs`` alone, as the estimator is used: the reference runs are closed batches
  of 2000 requests with a drain tail, so their mean running batch is below N) and **at the
  observed batch** (the run's measured mean running requests: the step model without the
  finite-run effect).

ShareGPT replies end at EOS, so their lengths are geometric-like: the rows use ``length_cv = 1``
(a request in flight holds ``I + O`` tokens on average); the fixed-length sweeps use 0.
Reads CSV files; otherwise side-effect free.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .estimator import CALIBRATION, Calibration, estimate_batch, estimate_replicas, step_time
from .gpus import lookup_gpu
from .modelconfig import ModelConfig, parse_model_config, resolve_model_config
from .types import Workload

__all__ = [
    "CalibrationRow",
    "ReplicationRow",
    "CurveError",
    "PublicPointError",
    "FITTED_FIELDS",
    "cross_gpu_check",
    "calibration_report",
    "fit_calibration",
    "leave_one_out",
    "load_reference",
]

REFERENCE_GPU = "H100-64GB"
REFERENCE_MODEL = "opt-1.3b"
REPLICATION = "replication"
#: The engine constants the reference determines; everything else is a prior or a GPU/model number.
FITTED_FIELDS = ("step_overhead_s", "per_sequence_overhead_s", "per_layer_overhead_s")
#: Weight of a replication row in the fit: its 6 kept rows count about as much as one sweep.
_REPLICATION_WEIGHT = 3.0
#: A weak prior that the fixed time of a step is half host (a0), half GPU (L·t_L). Single-replica
#: curves cannot tell the two apart (both are paid once per step); only the replication table can
#: (replicas overlap host time, not GPU time). With it the prior moves the fit by < 1%; without it
#: (its leave-one-out fold) the split lands on the prior instead of on wherever the search started.
_SPLIT_PRIOR_WEIGHT = 0.001


class _PredictionErrors:
    """Relative errors of a measured row's predictions (at its max-num-seqs, and at the batch the
    engine actually ran), shared by the sweep and replication rows."""

    measured_tok_s: float
    measured_itl_ms: float
    predicted_tok_s: float
    predicted_itl_ms: float
    predicted_tok_s_at_observed: float
    predicted_itl_ms_at_observed: float

    @property
    def tok_s_error(self) -> float:
        return self.predicted_tok_s / self.measured_tok_s - 1

    @property
    def itl_error(self) -> float:
        return self.predicted_itl_ms / self.measured_itl_ms - 1

    @property
    def tok_s_error_at_observed(self) -> float:
        return self.predicted_tok_s_at_observed / self.measured_tok_s - 1

    @property
    def itl_error_at_observed(self) -> float:
        return self.predicted_itl_ms_at_observed / self.measured_itl_ms - 1


@dataclasses.dataclass(frozen=True)
class CalibrationRow(_PredictionErrors):
    sweep: str
    max_num_seqs: int
    input_tokens: float
    output_tokens: float
    chunk_budget: int | None
    kv_pool_gib: float
    measured_tok_s: float
    measured_itl_ms: float
    measured_batch: float
    length_cv: float = 0.0
    predicted_tok_s: float = math.nan
    predicted_itl_ms: float = math.nan
    predicted_tok_s_at_observed: float = math.nan
    predicted_itl_ms_at_observed: float = math.nan


@dataclasses.dataclass(frozen=True)
class ReplicationRow(_PredictionErrors):
    replicas: int
    max_num_seqs: int
    measured_tok_s: float
    measured_itl_ms: float
    excluded: bool
    input_tokens: float = 110.6
    output_tokens: float = 292.0
    #: Mean KV pool of one replica (GiB) and mean running requests of one replica, as measured.
    kv_pool_gib_per_replica: float = math.nan
    measured_batch_per_replica: float = math.nan
    predicted_tok_s: float = math.nan
    predicted_itl_ms: float = math.nan
    predicted_tok_s_at_observed: float = math.nan
    predicted_itl_ms_at_observed: float = math.nan
    predicted_preempts: bool = False


@dataclasses.dataclass(frozen=True)
class CurveError:
    """Leave-one-out errors of one curve: predicted with constants fitted without it."""

    curve: str
    points: int
    tok_s_mean: float
    tok_s_worst: float
    itl_mean: float
    itl_worst: float
    tok_s_mean_at_observed: float
    itl_mean_at_observed: float
    calibration: Calibration

    def to_dict(self) -> dict[str, object]:
        return {
            "curve": self.curve, "points": self.points,
            "tokSMeanAbsError": round(self.tok_s_mean, 4), "tokSWorstAbsError": round(self.tok_s_worst, 4),
            "itlMeanAbsError": round(self.itl_mean, 4), "itlWorstAbsError": round(self.itl_worst, 4),
            "tokSMeanAbsErrorAtObserved": round(self.tok_s_mean_at_observed, 4),
            "itlMeanAbsErrorAtObserved": round(self.itl_mean_at_observed, 4),
            "fitted": {name: getattr(self.calibration, name) for name in FITTED_FIELDS},
        }


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("model") == REFERENCE_MODEL]


def _mean(cells: str) -> float:
    values = [float(v) for v in cells.split(";") if v]
    return sum(values) / len(values)


def load_reference(reference_dir: str | pathlib.Path) -> tuple[ModelConfig, list[CalibrationRow], list[ReplicationRow]]:
    """The OPT-1.3B rows of the reference CSVs that have results (failed runs are skipped)."""
    ref = pathlib.Path(reference_dir)
    model = parse_model_config(json.loads((ref / "models" / "opt-1.3b.json").read_text()))
    rows: list[CalibrationRow] = []
    for name, chunked in (("sweep_output_length.csv", True), ("sweep_sharegpt.csv", False)):
        for r in _rows(ref / name):
            if r.get("status") != "ok":
                continue
            completed = float(r["completed"])
            rows.append(
                CalibrationRow(
                    sweep=f"output_len={r['output_len']}" if chunked else "sharegpt",
                    max_num_seqs=int(r["max_num_seqs"]),
                    input_tokens=float(r["total_input_tokens"]) / completed,
                    output_tokens=float(r["total_output_tokens"]) / completed,
                    # NB: chunked prefill with vLLM's default 512-token budget in this sweep; the
                    # ShareGPT sweep runs prefills as separate steps.
                    chunk_budget=int(r["max_num_batched_tokens"]) if chunked else None,
                    kv_pool_gib=float(r["kv_cache_size_gib"]),
                    measured_tok_s=float(r["total_token_throughput_tok_s"]),
                    measured_itl_ms=float(r["mean_itl_ms"]),
                    measured_batch=float(r["mean_running_requests"]),
                    length_cv=0.0 if chunked else 1.0,
                )
            )
    sharegpt = [r for r in rows if r.sweep == "sharegpt"]
    replication = [
        ReplicationRow(
            replicas=int(r["replicas"]),
            max_num_seqs=int(r["max_num_seqs_per_replica"]),
            measured_tok_s=float(r["total_token_throughput_tok_s"]),
            measured_itl_ms=float(r["mean_itl_ms"]),
            excluded=bool(r["excluded_reason"]),
            # NB: the same 2000 ShareGPT prompts as the sweep, split across the replicas.
            input_tokens=statistics.fmean(s.input_tokens for s in sharegpt),
            output_tokens=statistics.fmean(s.output_tokens for s in sharegpt),
            kv_pool_gib_per_replica=_mean(r["kv_cache_size_gib_per_replica"]),
            measured_batch_per_replica=_mean(r["mean_running_requests_per_replica"]),
        )
        for r in _rows(ref / "replication.csv")
        if r["chunked_prefill"] == "false"
    ]
    return model, rows, replication


def _workload(input_tokens: float, output_tokens: float) -> Workload:
    # NB: Workload holds integers; the step model uses the lengths' sums and ratios, so rounding
    # the ShareGPT means (110.6 → 111) moves the prediction by well under 1%.
    return Workload(input_tokens=round(input_tokens), output_tokens=round(output_tokens))


def _predict(row: CalibrationRow, model: ModelConfig, calibration: Calibration, batch: float) -> tuple[float, float]:
    est = estimate_batch(
        model_config=model, gpu=lookup_gpu(REFERENCE_GPU), workload=_workload(row.input_tokens, row.output_tokens),
        batch_size=batch, max_num_batched_tokens=row.chunk_budget, kv_pool_gib=row.kv_pool_gib,
        calibration=calibration, length_cv=row.length_cv,
    )
    return est.total_token_throughput_tok_s, est.inter_token_latency_ms


def _predict_replicas(
    rep: ReplicationRow, model: ModelConfig, calibration: Calibration, batch: float
) -> tuple[float, float, bool]:
    est = estimate_replicas(
        model_config=model, gpu=lookup_gpu(REFERENCE_GPU), workload=_workload(rep.input_tokens, rep.output_tokens),
        batch_size=batch, replicas=rep.replicas, max_num_batched_tokens=None, calibration=calibration,
        length_cv=1.0, kv_pool_gib_per_replica=rep.kv_pool_gib_per_replica,
    )
    return est.aggregate_tok_s, est.inter_token_latency_ms, est.preempts


def _filled(row: CalibrationRow, model: ModelConfig, calibration: Calibration) -> CalibrationRow:
    tok_s, itl = _predict(row, model, calibration, row.max_num_seqs)
    tok_s_obs, itl_obs = _predict(row, model, calibration, max(row.measured_batch, 1.0))
    return dataclasses.replace(
        row, predicted_tok_s=tok_s, predicted_itl_ms=itl,
        predicted_tok_s_at_observed=tok_s_obs, predicted_itl_ms_at_observed=itl_obs,
    )


def _filled_replicas(rep: ReplicationRow, model: ModelConfig, calibration: Calibration) -> ReplicationRow:
    tok_s, itl, preempts = _predict_replicas(rep, model, calibration, rep.max_num_seqs)
    tok_s_obs, itl_obs, _ = _predict_replicas(rep, model, calibration, max(rep.measured_batch_per_replica, 1.0))
    return dataclasses.replace(
        rep, predicted_tok_s=tok_s, predicted_itl_ms=itl, predicted_preempts=preempts,
        predicted_tok_s_at_observed=tok_s_obs, predicted_itl_ms_at_observed=itl_obs,
    )


def calibration_report(
    reference_dir: str | pathlib.Path, *, calibration: Calibration = CALIBRATION
) -> tuple[list[CalibrationRow], list[ReplicationRow]]:
    """Every reference row with the estimator's predictions filled in."""
    model, rows, replication = load_reference(reference_dir)
    return (
        [_filled(r, model, calibration) for r in rows],
        [_filled_replicas(r, model, calibration) for r in replication],
    )


def _loss(
    rows: Iterable[CalibrationRow], replication: Iterable[ReplicationRow], model: ModelConfig, calibration: Calibration
) -> float:
    split = calibration.step_overhead_s / (model.num_layers * calibration.per_layer_overhead_s)
    total = _SPLIT_PRIOR_WEIGHT * math.log(split) ** 2
    for row in rows:
        tok_s, itl = _predict(row, model, calibration, max(row.measured_batch, 1.0))
        total += math.log(tok_s / row.measured_tok_s) ** 2 + math.log(itl / row.measured_itl_ms) ** 2
    for rep in replication:
        tok_s, itl, _ = _predict_replicas(rep, model, calibration, max(rep.measured_batch_per_replica, 1.0))
        total += _REPLICATION_WEIGHT * (
            math.log(tok_s / rep.measured_tok_s) ** 2 + math.log(itl / rep.measured_itl_ms) ** 2
        )
    return total


def _nelder_mead(f: Callable[[list[float]], float], x0: Sequence[float], *, step: float = 0.5,
                 iterations: int = 2000, tolerance: float = 1e-10) -> list[float]:
    """Minimise ``f`` from ``x0`` (the standard reflect/expand/contract/shrink simplex). Deterministic."""
    n = len(x0)
    simplex = [list(x0)] + [[v + (step if i == j else 0.0) for j, v in enumerate(x0)] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < tolerance:
            break
        centre = [sum(x[j] for x in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centre, worst, strict=True)]
        f_r = f(reflected)
        if f_r < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centre, worst, strict=True)]
            f_e = f(expanded)
            simplex[-1], values[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
        elif f_r < values[-2]:
            simplex[-1], values[-1] = reflected, f_r
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centre, worst, strict=True)]
            f_c = f(contracted)
            if f_c < values[-1]:
                simplex[-1], values[-1] = contracted, f_c
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (v - b) for b, v in zip(best, x, strict=True)] for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]


def _fit(
    model: ModelConfig, rows: Sequence[CalibrationRow], replication: Sequence[ReplicationRow], start: Calibration
) -> Calibration:
    kept = [r for r in replication if not r.excluded]

    def calibration_at(x: Sequence[float]) -> Calibration:
        return _with(start, [math.exp(v) for v in x])

    x0 = [math.log(getattr(start, name)) for name in FITTED_FIELDS]
    best = _nelder_mead(lambda x: _loss(rows, kept, model, calibration_at(x)), x0)
    # NB: three significant digits: the fit is flat well beyond that (docs/profiling.md).
    return _with(start, [float(f"{math.exp(v):.3g}") for v in best])


def _with(start: Calibration, values: Sequence[float]) -> Calibration:
    """``start`` with the :data:`FITTED_FIELDS` set to ``values``, in that order."""
    a0, a1, t_layer = values
    return dataclasses.replace(start, step_overhead_s=a0, per_sequence_overhead_s=a1, per_layer_overhead_s=t_layer)


def fit_calibration(
    reference_dir: str | pathlib.Path, *, start: Calibration = CALIBRATION, exclude: Iterable[str] = ()
) -> Calibration:
    """Least squares in log space of a0, a1 and t_L on the single-replica rows (at their observed
    batch) and the replication rows, leaving out the curves named in ``exclude`` (``sharegpt``,
    ``output_len=130`` … ``output_len=520``, ``replication``). GPU and model numbers are fixed.
    """
    model, rows, replication = load_reference(reference_dir)
    skip = set(exclude)
    return _fit(
        model,
        [r for r in rows if r.sweep not in skip],
        [] if REPLICATION in skip else replication,
        start,
    )


def _abs_errors(values: Sequence[float]) -> tuple[float, float]:
    errors = [abs(v) for v in values]
    return statistics.fmean(errors), max(errors)


def leave_one_out(
    reference_dir: str | pathlib.Path, *, start: Calibration = CALIBRATION
) -> list[CurveError]:
    """For each measured curve: refit the engine constants without it, predict it at N (as the
    estimator is used) and at the observed batch, and report mean and worst absolute relative
    errors of throughput and ITL. The replication curve is its kept multi-replica rows (k > 1)."""
    model, rows, replication = load_reference(reference_dir)
    curves = sorted({r.sweep for r in rows}) + [REPLICATION]
    out = []
    for curve in curves:
        fitted = _fit(
            model, [r for r in rows if r.sweep != curve], [] if curve == REPLICATION else replication, start
        )
        held: list[CalibrationRow | ReplicationRow]
        if curve == REPLICATION:
            held = [_filled_replicas(r, model, fitted) for r in replication if r.replicas > 1 and not r.excluded]
        else:
            held = [_filled(r, model, fitted) for r in rows if r.sweep == curve]
        tok = _abs_errors([h.tok_s_error for h in held])
        itl = _abs_errors([h.itl_error for h in held])
        tok_obs = _abs_errors([h.tok_s_error_at_observed for h in held])
        itl_obs = _abs_errors([h.itl_error_at_observed for h in held])
        out.append(CurveError(curve, len(held), tok[0], tok[1], itl[0], itl[1], tok_obs[0], itl_obs[0], fitted))
    return out


@dataclasses.dataclass(frozen=True)
class PublicPointError:
    """One published batch-1 measurement predicted from the others (:func:`cross_gpu_check`)."""

    id: str
    measured_itl_ms: float
    predicted_itl_ms: float
    #: The engine's fixed step time the other points imply (ms).
    engine_fixed_ms: float

    @property
    def error(self) -> float:
        return self.predicted_itl_ms / self.measured_itl_ms - 1


def _gpu_terms_s(point: Mapping[str, Any]) -> float:
    """GPU time of one decode step at batch 1 with no engine overheads: weights (or GEMM) + KV."""
    bare = dataclasses.replace(CALIBRATION, step_overhead_s=0.0, per_sequence_overhead_s=0.0, per_layer_overhead_s=0.0)
    step = step_time(
        model_config=resolve_model_config(model=str(point["model"]), inline=None),
        gpu=lookup_gpu(str(point["gpu"])),
        workload=Workload(input_tokens=int(point["input_tokens"]), output_tokens=int(point["output_tokens"])),
        decoding=1.0, calibration=bare,
    )
    return step.gpu_s


def cross_gpu_check(points: Sequence[Mapping[str, Any]]) -> list[PublicPointError]:
    """Leave-one-out over published batch-1 decode ITLs of one engine on different GPUs/models
    (``tests/unit/profiling/data/public_vllm.json``): the engine's fixed step time is what the
    other points leave after their GPU terms (weights / effective bandwidth, KV, GEMM), and the
    held-out point is predicted as that plus its own GPU terms. It checks the GPU constants (peak
    × one efficiency per memory technology) and the model's bytes, not the V0 engine constants."""
    if len(points) < 2:
        raise ValueError("the cross-GPU check needs at least two points")
    gpu_ms = [_gpu_terms_s(p) * 1e3 for p in points]
    out = []
    for i, point in enumerate(points):
        others = [float(q["itl_ms"]) - g for j, (q, g) in enumerate(zip(points, gpu_ms, strict=True)) if j != i]
        fixed = statistics.fmean(others)
        out.append(PublicPointError(str(point["id"]), float(point["itl_ms"]), fixed + gpu_ms[i], fixed))
    return out

"""The one versioned result format of a sweep, its CSV export, and reading reference CSVs.

A sweep is stored as JSON (``format: slm-operator/sweep``, ``version``: PROFILE_FORMAT_VERSION)
holding one :class:`SweepPoint` per (replicas, batch size). :func:`to_csv` writes the columns of
shared/reference (``max_num_seqs``, ``total_token_throughput_tok_s``, ``mean_itl_ms``, ...) so
the same tools read both; :func:`load_sweep` reads either. Only file I/O, no network.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

from .selection import ReplicaPoint, SelectionPoint
from .types import PROFILE_FORMAT_VERSION

__all__ = ["SWEEP_FORMAT", "SweepPoint", "SweepResult", "SweepFormatError", "load_sweep", "to_csv", "CSV_COLUMNS"]

SWEEP_FORMAT = "slm-operator/sweep"


class SweepFormatError(ValueError):
    """A sweep file that cannot be read; the message names the file, column or field."""


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One measured configuration: ``replicas`` servers each run with ``batch_size`` requests in
    flight (client concurrency = ``--max-num-seqs`` = batch size). Throughputs are the aggregate
    over the replicas; latencies are per request.
    """

    batch_size: int
    total_token_throughput_tok_s: float
    output_throughput_tok_s: float | None = None
    replicas: int = 1
    mean_itl_ms: float | None = None
    median_itl_ms: float | None = None
    p99_itl_ms: float | None = None
    mean_ttft_ms: float | None = None
    median_ttft_ms: float | None = None
    p99_ttft_ms: float | None = None
    completed: int | None = None
    duration_s: float | None = None
    total_input_tokens: int | None = None
    total_output_tokens: int | None = None
    mean_running_requests: float | None = None
    max_running_requests: float | None = None
    #: Peak share of the KV pool in use, 0-100 (the reference's ``peak_kv_cache_usage_perc``).
    peak_kv_cache_usage_perc: float | None = None
    kv_pool_tokens: int | None = None
    num_preemptions: int = 0
    #: Estimated device memory one replica needs here (weights + peak KV in use + overhead).
    memory_gib: float | None = None
    gpu_mem_used_mib_peak: float | None = None
    mean_power_w: float | None = None
    mean_gpu_utilization_perc: float | None = None
    status: str = "ok"
    #: Mean ITL by the engine's own histogram (ms), where it exports one; the client's mean_itl_ms
    #: also holds streaming delays, which dominate on a CPU-starved client.
    engine_itl_ms: float | None = None

    def selection_point(self) -> SelectionPoint:
        per_replica = self.total_token_throughput_tok_s / max(self.replicas, 1)
        return SelectionPoint(
            batch_size=self.batch_size,
            throughput_tok_s=per_replica if self.status == "ok" else 0.0,
            itl_ms=self.mean_itl_ms,
            ttft_ms=self.mean_ttft_ms,
            preemptions=self.num_preemptions,
            memory_gib=self.memory_gib,
        )

    def replica_point(self) -> ReplicaPoint:
        return ReplicaPoint(
            replicas=self.replicas,
            aggregate_tok_s=self.total_token_throughput_tok_s if self.status == "ok" else 0.0,
            itl_ms=self.mean_itl_ms,
            preemptions=self.num_preemptions,
            batch_size=self.batch_size,
        )


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """A whole sweep: single-replica batch points, then replication points (replicas > 1)."""

    engine: str
    model: str
    gpu_product: str
    input_tokens: int
    output_tokens: int
    points: tuple[SweepPoint, ...]
    replication: tuple[SweepPoint, ...] = ()
    created_at: str | None = None
    #: Which engine metric names were read (e.g. {"kv_usage": "vllm:kv_cache_usage_perc"}).
    metric_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["points"] = [_point_dict(p) for p in self.points]
        data["replication"] = [_point_dict(p) for p in self.replication]
        data["metric_names"] = dict(self.metric_names)
        data["notes"] = list(self.notes)
        return {"format": SWEEP_FORMAT, "version": PROFILE_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "sweep") -> SweepResult:
        if data.get("format") != SWEEP_FORMAT:
            raise SweepFormatError(f"{source}: not a sweep file (format {data.get('format')!r}, want {SWEEP_FORMAT!r})")
        if data.get("version") != PROFILE_FORMAT_VERSION:
            raise SweepFormatError(
                f"{source}: sweep format version {data.get('version')!r}, this profiler reads "
                f"{PROFILE_FORMAT_VERSION}; re-run the sweep"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        try:
            kwargs["points"] = tuple(_point_from(p, source) for p in data.get("points", ()))
            kwargs["replication"] = tuple(_point_from(p, source) for p in data.get("replication", ()))
            kwargs["notes"] = tuple(data.get("notes", ()))
            return cls(**kwargs)
        except TypeError as exc:
            raise SweepFormatError(f"{source}: {exc}") from None


def _point_dict(point: SweepPoint) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(point).items() if v is not None}


def _point_from(data: Mapping[str, Any], source: str) -> SweepPoint:
    names = {f.name for f in dataclasses.fields(SweepPoint)}
    unknown = set(data) - names
    if unknown:
        raise SweepFormatError(f"{source}: unknown sweep point fields {sorted(unknown)}")
    return SweepPoint(**data)


#: The reference columns we write (a subset of shared/reference/sweep_*.csv, plus ``replicas``).
CSV_COLUMNS = (
    "model", "gpu", "replicas", "max_num_seqs", "status", "completed", "duration_s",
    "output_throughput_tok_s", "total_token_throughput_tok_s",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms",
    "mean_running_requests", "max_running_requests", "peak_kv_cache_usage_perc", "num_preemptions",
    "mean_power_w", "gpu_mem_used_mib_peak", "total_input_tokens", "total_output_tokens",
    "input_len", "output_len", "engine",
)


def to_csv(result: SweepResult) -> str:
    """The sweep as CSV with the reference's column names (replication rows after the batch rows)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for p in (*result.points, *result.replication):
        row = {k: v for k, v in dataclasses.asdict(p).items() if k in CSV_COLUMNS}
        row.update(
            model=result.model, gpu=result.gpu_product, max_num_seqs=p.batch_size, engine=result.engine,
            input_len=result.input_tokens, output_len=result.output_tokens,
        )
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def _num(row: Mapping[str, str], column: str, source: str, *, required: bool = False) -> float | None:
    raw = (row.get(column) or "").strip()
    if not raw:
        if required:
            raise SweepFormatError(f"{source}: a row has no value in required column {column!r}")
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SweepFormatError(f"{source}: column {column!r} holds {raw!r}, not a number") from None
    return value if math.isfinite(value) else None


def _batch_size(row: Mapping[str, str], column: str, source: str) -> int:
    value = _num(row, column, source, required=True)
    if value is None:
        raise SweepFormatError(f"{source}: column {column!r} holds {row.get(column)!r}, not a finite number")
    return int(value)


def _from_csv(text: str, *, source: str, where: Mapping[str, str]) -> SweepResult:
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    batch_col = "max_num_seqs" if "max_num_seqs" in columns else "max_num_seqs_per_replica"
    for need in (batch_col, "total_token_throughput_tok_s"):
        if need not in columns:
            raise SweepFormatError(
                f"{source}: missing column {need!r}; a sweep CSV needs max_num_seqs (or "
                "max_num_seqs_per_replica) and total_token_throughput_tok_s, as in shared/reference"
            )
    unknown_filters = set(where) - columns
    if unknown_filters:
        raise SweepFormatError(f"{source}: --where names columns the file lacks: {sorted(unknown_filters)}")
    rows = [r for r in reader if all((r.get(k) or "") == v for k, v in where.items())]
    # NB: the reference output-length file holds several sweeps (one per output length and model);
    # mixing them would make nonsense, so ask which one.
    for key in ("model", "output_len", "chunked_prefill"):
        if key in columns:
            values = sorted({value for r in rows if (value := r.get(key))})
            if len(values) > 1:
                raise SweepFormatError(
                    f"{source}: the rows hold {len(values)} different {key} values {values}; "
                    f"choose one sweep with --where {key}={values[0]}"
                )
    if not rows:
        raise SweepFormatError(f"{source}: no rows (after --where filters {dict(where)})")
    points: list[SweepPoint] = []
    replication: list[SweepPoint] = []
    for r in rows:
        status = (r.get("status") or "ok").strip() or "ok"
        ok = status == "ok"
        preempt = _num(r, "num_preemptions", source) or 0
        point = SweepPoint(
            batch_size=_batch_size(r, batch_col, source),
            total_token_throughput_tok_s=(_num(r, "total_token_throughput_tok_s", source, required=ok) or 0.0),
            output_throughput_tok_s=_num(r, "output_throughput_tok_s", source),
            replicas=int(_num(r, "replicas", source) or 1),
            mean_itl_ms=_num(r, "mean_itl_ms", source),
            median_itl_ms=_num(r, "median_itl_ms", source),
            p99_itl_ms=_num(r, "p99_itl_ms", source),
            mean_ttft_ms=_num(r, "mean_ttft_ms", source),
            median_ttft_ms=_num(r, "median_ttft_ms", source),
            p99_ttft_ms=_num(r, "p99_ttft_ms", source),
            mean_running_requests=_num(r, "mean_running_requests", source),
            max_running_requests=_num(r, "max_running_requests", source),
            peak_kv_cache_usage_perc=_num(r, "peak_kv_cache_usage_perc", source)
            or _num(r, "peak_kv_cache_usage_perc_mean_over_replicas", source),
            num_preemptions=int(preempt),
            gpu_mem_used_mib_peak=_num(r, "gpu_mem_used_mib_peak", source),
            mean_power_w=_num(r, "mean_power_w", source),
            status="ok" if ok else status,
        )
        (replication if point.replicas > 1 else points).append(point)
    first = rows[0]

    def length(col: str, total_col: str) -> int:
        value = _num(first, col, source)
        if value is None:
            total, done = _num(first, total_col, source), _num(first, "completed", source)
            value = total / done if total and done else 0
        return int(round(value))

    return SweepResult(
        engine=first.get("engine") or "reference",
        model=first.get("model") or "unknown",
        gpu_product=first.get("gpu") or "unknown",
        input_tokens=length("input_len", "total_input_tokens"),
        output_tokens=length("output_len", "total_output_tokens"),
        points=tuple(sorted(points, key=lambda p: p.batch_size)),
        replication=tuple(sorted(replication, key=lambda p: (p.replicas, p.batch_size))),
    )


def load_sweep(path: str | pathlib.Path, *, where: Mapping[str, str] | None = None) -> SweepResult:
    """Read our sweep JSON or a reference-format CSV. ``where`` filters CSV rows by column value."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SweepFormatError(f"sweep file {str(path)!r} does not exist") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SweepFormatError(f"{path}: not valid JSON: {exc}") from None
        if where:
            raise SweepFormatError("--where applies to CSV files only")
        return SweepResult.from_dict(data, source=str(path))
    return _from_csv(text, source=str(path), where=where or {})


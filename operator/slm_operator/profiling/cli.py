"""``slm-profiler``: estimate, measure, analyse and plot a model's batch curve.

    slm-profiler estimate --model-config config.json --gpu NVIDIA-L4 --input-tokens 512 --output-tokens 256
                          --json
    slm-profiler analyze sweep.json|reference.csv [--where output_len=390] [--epsilon 0.1] [--max-itl-ms 50] [--json]
    slm-profiler run --request request.json --output profile.json [--engine simulated|vllm] [--url URL]
                     [--progress FILE]
    slm-profiler plot sweep.json --output curve.png
    slm-profiler calibrate REFERENCE_DIR [--fit]

Exit codes: 0 done, 1 the engine or the measurement failed, 2 bad input (with a message naming
the field and the fix).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from collections.abc import Sequence

from slm_operator.constants import LABEL_MANAGED_BY, MANAGED_BY
from slm_operator.errors import ModelConfigError

from .engines.base import EngineError, EngineServer
from .estimator import CALIBRATION, estimate_curve, parameter_sources
from .gpus import lookup_gpu
from .modelconfig import ModelConfig, load_model_config_file, parse_model_config, resolve_model_config
from .results import SweepFormatError, SweepResult, load_sweep, to_csv
from .selection import (
    BatchSelection,
    MixMember,
    ReplicaSelection,
    SelectionError,
    predict_mix,
    select_batch,
    select_replicas,
)
from .types import ProfileRequest, Slo, Workload

log = logging.getLogger("slm_profiler")


class UsageError(ValueError):
    """Bad command-line input: exit code 2."""


def _batch_sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes wants comma-separated integers, got {text!r}") from None
    if not sizes or any(b < 1 for b in sizes):
        raise UsageError(f"--batch-sizes wants positive integers, got {text!r}")
    return sizes


def _cmd_estimate(args: argparse.Namespace) -> int:
    if args.model_config:
        model = parse_model_config(load_model_config_file(args.model_config))
    elif args.model:
        model = resolve_model_config(model=args.model, inline=None)
    else:
        raise UsageError(
            "give --model-config CONFIG.json (the model's config.json) or --model NAME of a built-in model"
        )
    gpu = lookup_gpu(args.gpu, memory_gib=args.gpu_memory_gib)
    if args.input_tokens < 1 or args.output_tokens < 1:
        raise UsageError("--input-tokens and --output-tokens must be >= 1")
    workload = Workload(input_tokens=args.input_tokens, output_tokens=args.output_tokens)
    curve = estimate_curve(
        model_config=model, gpu=gpu, workload=workload, batch_sizes=_batch_sizes(args.batch_sizes),
        max_num_batched_tokens=args.max_num_batched_tokens or None,
    )
    if args.json:
        print(json.dumps([e.to_dict() for e in curve], indent=2))
        return 0
    print(f"# ESTIMATE (roofline, not measured): {model.model_type} {model.num_params / 1e9:.2f}B params, "
          f"{model.weights_gib:.2f} GiB weights, {model.kv_bytes_per_token} KV bytes/token on {gpu.name}")
    for line in parameter_sources(model_config=model, gpu=gpu):
        print(f"# {line}")
    fits = [e for e in curve if not e.preempts]
    if curve[0].kv_pool_requests < float("inf"):
        print(f"# KV pool: holds {curve[0].kv_pool_requests:,.0f} requests of {workload.tokens_per_request} tokens "
              "(input + output) at full length; larger batches preempt")
    if fits:
        top = max(fits, key=lambda e: e.total_token_throughput_tok_s)
        print(f"# plateau: {top.total_token_throughput_tok_s:,.0f} tok/s at batch {top.batch_size}, "
              f"{top.roofline_fraction:.0%} of the HBM roofline ({gpu.hbm_bandwidth_gbs:,.0f} GB/s peak: weights "
              "once + the batch's KV per step)")
    print(f"{'batch':>6} {'tok/s':>10} {'out tok/s':>10} {'ITL ms':>8} {'TTFT ms':>8} {'KV GiB':>8} "
          f"{'mem GiB':>8} {'roof':>5}  bound")
    for e in curve:
        flag = "  PREEMPTS" if e.preempts else ""
        print(f"{e.batch_size:>6} {e.total_token_throughput_tok_s:>10,.0f} {e.output_throughput_tok_s:>10,.0f} "
              f"{e.inter_token_latency_ms:>8.2f} {e.ttft_ms:>8.1f} {e.kv_cache_gib:>8.2f} {e.memory_gib:>8.2f} "
              f"{e.roofline_fraction:>5.0%}  {e.bound}{flag}")
    return 0


def _where(items: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--where wants COLUMN=VALUE, got {item!r}")
        out[key] = value
    return out


def _analysis(sweep: SweepResult, *, epsilon: float, slo: Slo) -> tuple[BatchSelection, ReplicaSelection | None]:
    """The batch size (B*) of the sweep's batch points; k* too when the sweep measured replication."""
    batch = select_batch(points=[p.selection_point() for p in sweep.points], slo=slo, epsilon=epsilon)
    if not sweep.replication:
        return batch, None
    replicas = [*(p.replica_point() for p in sweep.points), *(p.replica_point() for p in sweep.replication)]
    return batch, select_replicas(options=replicas, slo=slo)


def _analysis_dict(sweep: SweepResult, batch: BatchSelection, packing: ReplicaSelection | None) -> dict[str, object]:
    """``analyze --json``: the selection's keys, and k* (``replicasToSaturate``) when measured."""
    result = {"engine": sweep.engine, "model": sweep.model, "gpu": sweep.gpu_product, **batch.to_dict()}
    if packing is not None:
        result.update(replicasToSaturate=packing.replicas, aggregateTokensPerSecond=packing.aggregate_tok_s,
                      replicaBatchSize=packing.batch_size, replicaExplanation=packing.explanation)
    return result


def _cmd_analyze(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.file, where=_where(args.where))
    slo = Slo(max_inter_token_latency_ms=args.max_itl_ms, max_time_to_first_token_ms=args.max_ttft_ms)
    batch, packing = _analysis(sweep, epsilon=args.epsilon, slo=slo)
    if args.json:
        print(json.dumps(_analysis_dict(sweep, batch, packing), indent=2))
    else:
        _print_table(sweep, batch)
        print(batch.explanation)
        if packing is not None:
            print(packing.explanation)
            if packing.aggregate_tok_s:
                print(_shared_gpu_line(packing))
    return 0 if batch.batch_size is not None else 1


def _shared_gpu_line(packing: ReplicaSelection) -> str:
    """How the planner counts one replica under dra-shares, where GPUs hold replicas of several models."""
    k = max(packing.replicas, 1)
    return (f"On a GPU shared with other models (gpu.sharing dra-shares), one replica reserves 1/{k} of it and "
            f"is planned at {packing.aggregate_tok_s or 0:,.0f}/{k} = {(packing.aggregate_tok_s or 0) / k:,.0f} tok/s, "
            "its share of this plateau, not its solo throughput: `slm-profiler mix` predicts a whole mix.")


def _mix_member(text: str) -> MixMember:
    """``NAME:REPLICAS:K:PLATEAU[:SOLO]`` of ``slm-profiler mix --model``."""
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise UsageError(f"--model wants NAME:REPLICAS:K:PLATEAU[:SOLO], got {text!r}")
    try:
        replicas, k, plateau = int(parts[1]), int(parts[2]), float(parts[3])
        solo = float(parts[4]) if len(parts) == 5 else plateau
    except ValueError:
        raise UsageError(f"--model {text!r}: REPLICAS and K are integers, PLATEAU and SOLO tok/s") from None
    if replicas < 1 or k < 1 or plateau <= 0 or solo <= 0:
        raise UsageError(f"--model {text!r}: REPLICAS, K, PLATEAU and SOLO must be positive")
    return MixMember(name=parts[0], replicas=replicas, replicas_to_saturate=k, plateau_tok_s=plateau, solo_tok_s=solo)


def _cmd_mix(args: argparse.Namespace) -> int:
    prediction = predict_mix([_mix_member(m) for m in args.model])
    if args.json:
        print(json.dumps({"share": round(prediction.share, 4), "predictedTokensPerSecond": prediction.predicted_tok_s,
                          "totalTokensPerSecond": prediction.total_tok_s,
                          "soloSumTokensPerSecond": prediction.solo_sum_tok_s}, indent=2))
    else:
        print(prediction.explanation)
    return 0


def _print_table(sweep: SweepResult, batch: BatchSelection) -> None:
    frontier = set(batch.frontier)
    label = "SIMULATED " if sweep.engine == "simulated" else ""
    print(f"# {label}sweep of {sweep.model} on {sweep.gpu_product} ({sweep.engine}), "
          f"{sweep.input_tokens} in / {sweep.output_tokens} out tokens")
    print(f"{'batch':>6} {'tok/s':>10} {'ITL ms':>8} {'TTFT ms':>9} {'running':>8} {'preempt':>7}  notes")
    for p in sweep.points:
        marks = []
        if p.batch_size == batch.batch_size:
            marks.append("B*")
        if p.batch_size in frontier:
            marks.append("frontier")
        if p.batch_size in batch.rejected:
            marks.append(batch.rejected[p.batch_size])
        itl = f"{p.mean_itl_ms:8.2f}" if p.mean_itl_ms is not None else f"{'-':>8}"
        ttft = f"{p.mean_ttft_ms:9.0f}" if p.mean_ttft_ms is not None else f"{'-':>9}"
        running = f"{p.mean_running_requests:8.1f}" if p.mean_running_requests is not None else f"{'-':>8}"
        print(f"{p.batch_size:>6} {p.total_token_throughput_tok_s:>10,.0f} {itl} {ttft} {running} "
              f"{p.num_preemptions:>7}  {', '.join(marks)}")
    for p in sweep.replication:
        print(f"{p.replicas}x{p.batch_size:<4} {p.total_token_throughput_tok_s:>10,.0f} aggregate, "
              f"ITL {p.mean_itl_ms} ms, preemptions {p.num_preemptions}")


def _cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = load_sweep(args.file, where=_where(args.where))
    slo = Slo(max_inter_token_latency_ms=args.max_itl_ms)
    batch, _ = _analysis(sweep, epsilon=args.epsilon, slo=slo)
    _print_table(sweep, batch)
    pts = [p for p in sweep.points if p.status == "ok"]
    if not pts:
        raise UsageError(f"{args.file}: no successful points to plot")
    xs = [p.batch_size for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(xs, [p.total_token_throughput_tok_s for p in pts], "o-", label="total tok/s")
    frontier = set(batch.frontier)
    fx = [p for p in pts if p.batch_size in frontier]
    ax1.plot([p.batch_size for p in fx], [p.total_token_throughput_tok_s for p in fx], "s", mfc="none", ms=11,
             label="Pareto frontier")
    itl_pts = [p for p in pts if p.mean_itl_ms is not None]
    ax2.plot([p.batch_size for p in itl_pts], [p.mean_itl_ms for p in itl_pts], "o-", color="tab:orange",
             label="mean ITL")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (concurrent requests)")
        if batch.batch_size:
            ax.axvline(batch.batch_size, color="tab:green", ls="--", label=f"B* = {batch.batch_size}")
        ax.grid(alpha=0.3)
    if batch.threshold_tok_s:
        ax1.axhline(round(batch.threshold_tok_s, 1), color="grey", ls=":", label=f"(1-ε) x best, ε={args.epsilon}")
    if args.max_itl_ms:
        ax2.axhline(args.max_itl_ms, color="red", ls=":", label="ITL SLO")
    ax1.set_ylabel("tokens/s (input+output)")
    ax2.set_ylabel("inter-token latency (ms)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    title = f"{sweep.model} on {sweep.gpu_product} ({sweep.engine})"
    fig.suptitle(("SIMULATED - " if sweep.engine == "simulated" else "") + title)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


def _load_request(path: str) -> ProfileRequest:
    """``--request FILE`` or ``--request env:VAR`` (how the profiler Job passes it)."""
    try:
        if path.startswith("env:"):
            text = os.environ.get(path[4:])
            if text is None:
                raise UsageError(f"--request {path}: environment variable {path[4:]} is not set")
        else:
            text = pathlib.Path(path).read_text()
        data = json.loads(text)
    except FileNotFoundError:
        raise UsageError(f"--request file {path!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--request {path!r} is not JSON: {exc}") from None
    try:
        return ProfileRequest.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--request file {path!r}: {exc}") from None


def _local_model_config(model: str) -> ModelConfig | None:
    """The architecture of a model vLLM loads from a local folder (baked into the image, or a
    mounted volume): its config.json sizes memory per replica. ``None`` for a hub id."""
    folder = pathlib.Path(model)
    if not (folder / "config.json").is_file():
        return None
    try:
        return parse_model_config(load_model_config_file(folder))
    except ModelConfigError as exc:
        log.warning("ignoring %s/config.json: %s", folder, exc)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from .sweep import ProgressReporter, SweepSettings, profile_from_sweep, request_model_config, run_sweep

    request = _load_request(args.request)
    engine = args.engine or request.engine
    if engine not in ("simulated", "vllm"):
        raise UsageError(f"engine must be 'simulated' or 'vllm', got {engine!r}")
    model_config = request_model_config(request)
    if model_config is None and engine == "vllm":
        model_config = _local_model_config(args.model_path or request.model)
    work_dir = pathlib.Path(args.work_dir or pathlib.Path(args.output).parent)
    work_dir.mkdir(parents=True, exist_ok=True)
    simulated = engine == "simulated"
    settings = SweepSettings(
        # NB: the simulated engine's seconds are its own clock's; shorter windows keep it quick.
        warmup_s=args.warmup_s if args.warmup_s is not None else (2.0 if simulated else 5.0),
        duration_s=args.duration_s if args.duration_s is not None else (8.0 if simulated else 20.0),
        max_batch=args.max_batch,
        refine_steps=args.refine_steps,
        replication=not args.no_replication,
        max_replicas=args.max_replicas,
        metrics_interval_s=args.metrics_interval_s if args.metrics_interval_s else (0.05 if simulated else 0.5),
    )
    attached = bool(args.url)
    # NB: without a pinned KV pool, k replicas split vLLM's default share of the device.
    utilization = CALIBRATION.gpu_memory_utilization
    if simulated:
        if model_config is None:
            raise UsageError(
                f"the simulated engine needs the architecture of {request.model!r}: put its config.json in the "
                "request's modelConfig (spec.profiling.modelConfig)"
            )
        architecture: ModelConfig = model_config
        gpu = lookup_gpu(request.gpu_product, memory_gib=request.gpu_memory_gib)
        from .engines.simulated import SimulatedDevice, start_simulated

        device = SimulatedDevice()

        def start(max_num_seqs: int, index: int, replicas: int, kv_bytes: int | None) -> EngineServer:
            return start_simulated(
                model_config=architecture, gpu=gpu, workload=request.workload, max_num_seqs=max_num_seqs,
                served_model_name=request.model, kv_cache_memory_bytes=kv_bytes,
                gpu_memory_utilization=None if kv_bytes else utilization / replicas, time_scale=args.time_scale,
                startup_s=0.0 if args.time_scale == 0 else 30.0, device=device,
            )
    elif attached:
        from .engines.vllm import attach

        def start(max_num_seqs: int, index: int, replicas: int, kv_bytes: int | None) -> EngineServer:
            return attach(args.url)
    else:
        from .engines.base import find_free_port
        from .engines.vllm import start_vllm

        def start(max_num_seqs: int, index: int, replicas: int, kv_bytes: int | None) -> EngineServer:
            return start_vllm(
                model=args.model_path or request.model, port=find_free_port(), max_num_seqs=max_num_seqs,
                max_model_len=request.workload.effective_max_model_len(), log_dir=work_dir / "logs",
                python=args.vllm_python, kv_cache_memory_bytes=kv_bytes,
                gpu_memory_utilization=None if kv_bytes or replicas == 1 else utilization / replicas,
                served_model_name=request.model, extra_args=args.vllm_arg or (),
                ready_timeout_s=args.ready_timeout_s,
            )

    progress = ProgressReporter(args.progress, planned=0)
    sweep = run_sweep(
        request=request, engine_kind=engine, start_engine=start, settings=settings, progress=progress,
        model_config=model_config, attached=attached,
    )
    sweep_path = pathlib.Path(args.sweep_output or str(args.output).removesuffix(".json") + ".sweep.json")
    sweep_path.write_text(json.dumps(sweep.to_dict(), indent=2))
    if args.csv:
        pathlib.Path(args.csv).write_text(to_csv(sweep))
    try:
        profile = profile_from_sweep(sweep=sweep, request=request, model_config=model_config)
    except SelectionError as exc:
        raise RuntimeError(f"the sweep ({sweep_path}) gives no B*: {exc}") from None
    pathlib.Path(args.output).write_text(json.dumps(profile.to_dict(), indent=2))
    log.info("profile written to %s (sweep: %s): %s", args.output, sweep_path, profile.explanation)
    if args.write_configmap:
        from .configmap_sink import write_profile_configmap

        write_profile_configmap(target=args.write_configmap, profile=profile.to_dict(), sweep=sweep.to_dict(),
                                labels={LABEL_MANAGED_BY: MANAGED_BY})
        log.info("profile written to ConfigMap %s", args.write_configmap)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import calibration_report, fit_calibration

    if args.fit:
        print(fit_calibration(args.reference_dir))
        return 0
    rows, replication = calibration_report(args.reference_dir)
    print("| sweep | N | measured tok/s | estimate at N | error | at observed batch | ITL ms measured | ITL error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.sweep} | {r.max_num_seqs} | {r.measured_tok_s:,.0f} | {r.predicted_tok_s:,.0f} | "
              f"{r.tok_s_error:+.1%} | {r.tok_s_error_at_observed:+.1%} | {r.measured_itl_ms:.2f} | "
              f"{r.itl_error:+.1%} |")
    print()
    print("| replicas x N | measured tok/s | estimate | error | kept by the paper |")
    print("|---|---:|---:|---:|---|")
    for rep in replication:
        print(f"| {rep.replicas}x{rep.max_num_seqs} | {rep.measured_tok_s:,.0f} | {rep.predicted_tok_s:,.0f} | "
              f"{rep.tok_s_error:+.1%} | {'no (preemptions)' if rep.excluded else 'yes'} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-profiler", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    est = sub.add_parser("estimate", help="roofline estimate per batch size (no GPU needed)")
    est.add_argument("--model-config", help="the model's config.json (or a folder holding it)")
    est.add_argument("--model", help="a built-in model id instead of --model-config")
    est.add_argument("--gpu", required=True, help="GPU product label or alias, e.g. NVIDIA-L4, H100-SXM")
    est.add_argument("--gpu-memory-gib", type=float, help="override the GPU's memory (MIG slice, MPS limit)")
    est.add_argument("--input-tokens", type=int, required=True)
    est.add_argument("--output-tokens", type=int, required=True)
    est.add_argument("--batch-sizes", help="comma-separated, default 1,2,4,...,1024")
    est.add_argument("--max-num-batched-tokens", type=int, default=2048, help="chunked-prefill budget; 0 = none")
    est.add_argument("--json", action="store_true")
    est.set_defaults(func=_cmd_estimate)

    ana = sub.add_parser("analyze", help="select the batch size B* (and k*) from a sweep: our JSON or a reference CSV")
    ana.add_argument("file")
    ana.add_argument("--where", action="append", help="CSV filter COLUMN=VALUE (repeatable)")
    ana.add_argument("--epsilon", type=float, default=0.1)
    ana.add_argument("--max-itl-ms", type=float)
    ana.add_argument("--max-ttft-ms", type=float)
    ana.add_argument("--json", action="store_true")
    ana.set_defaults(func=_cmd_analyze)

    mix = sub.add_parser("mix", help="predict a GPU shared by replicas of several models (dra-shares)")
    mix.add_argument("--model", action="append", required=True, metavar="NAME:REPLICAS:K:PLATEAU[:SOLO]",
                     help="replicas of one model on the GPU, its k* and plateau tok/s (status.profile "
                          "replicasToSaturate, tokensPerSecondPerGPU) and optionally one replica's solo tok/s")
    mix.add_argument("--json", action="store_true")
    mix.set_defaults(func=_cmd_mix)

    run = sub.add_parser("run", help="measure a sweep and write the Profile")
    run.add_argument("--request", required=True, help="ProfileRequest JSON file, or env:VAR holding the JSON")
    run.add_argument("--output", required=True, help="where to write the Profile JSON")
    run.add_argument("--sweep-output", help="where to write the sweep JSON (default OUTPUT.sweep.json)")
    run.add_argument("--csv", help="also write the sweep as reference-format CSV")
    run.add_argument("--engine", choices=("simulated", "vllm"))
    run.add_argument("--url", help="attach to a running OpenAI-compatible server instead of starting vLLM")
    run.add_argument("--progress", help="progress JSON file, rewritten after each step")
    run.add_argument("--work-dir", help="logs and scratch (default: the output's folder)")
    run.add_argument("--write-configmap", metavar="NAMESPACE/NAME", help="also store the result in this ConfigMap")
    run.add_argument("--model-path", help="vLLM --model (a local path) when it differs from the request's model id")
    run.add_argument("--vllm-python", default=sys.executable, help="Python that has vLLM installed")
    run.add_argument("--vllm-arg", action="append", help="extra vLLM server argument (repeatable)")
    run.add_argument("--ready-timeout-s", type=float, default=900.0)
    run.add_argument("--warmup-s", type=float)
    run.add_argument("--duration-s", type=float)
    run.add_argument("--max-batch", type=int, default=512)
    run.add_argument("--refine-steps", type=int, default=2)
    run.add_argument("--max-replicas", type=int, default=8)
    run.add_argument("--no-replication", action="store_true")
    run.add_argument("--metrics-interval-s", type=float)
    run.add_argument("--time-scale", type=float, default=0.05,
                     help="simulated engine: wall seconds per engine second (0 = as fast as Python streams)")
    run.set_defaults(func=_cmd_run)

    plot = sub.add_parser("plot", help="throughput and ITL vs batch, frontier and the batch size B* marked (PNG)")
    plot.add_argument("file")
    plot.add_argument("--output", required=True)
    plot.add_argument("--where", action="append")
    plot.add_argument("--epsilon", type=float, default=0.1)
    plot.add_argument("--max-itl-ms", type=float)
    plot.set_defaults(func=_cmd_plot)

    cal = sub.add_parser("calibrate", help="estimator vs the reference measurements (markdown tables)")
    cal.add_argument("reference_dir")
    cal.add_argument("--fit", action="store_true", help="refit the constants instead (prints a Calibration)")
    cal.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (UsageError, SweepFormatError, SelectionError, ValueError) as exc:
        # NB: every input error of ours is a ValueError subclass (unknown GPU/model, bad config).
        print(f"slm-profiler {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (EngineError, OSError, RuntimeError) as exc:
        print(f"slm-profiler {args.command}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

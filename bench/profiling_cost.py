"""What a profile costs: our adaptive sweep vs the follow-up paper's full max-num-seqs grid.

Both run on the SIMULATED engine (estimator timings), so the numbers compare the methods, not a
GPU. Counted: engine starts, measured probes, engine-seconds under load (the simulated clock), the
wall time here, and the same priced with a real start cost (``--start-cost-s``, default 90 s: a
vLLM server loading a small model and capturing CUDA graphs).

* ours: one server with a generous --max-num-seqs; client concurrency 1, 2, 4, ... until the
  plateau/SLO/preemption stop rule, a refinement near the knee; then replica counts.
* grid: one server per max-num-seqs value (1, 2, 4, ..., max), each driven at that concurrency,
  as arXiv 2503.08311's sweeps did (15 values for OPT-1.3B).

    .venv/bin/python bench/profiling_cost.py [--model facebook/opt-125m --gpu NVIDIA-L4 ...]

Prints a table and writes bench/results/profiling_cost.json. No asserts: numbers, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import pathlib
import time

from slm_operator.profiling.engines.simulated import SimulatedDevice, start_simulated
from slm_operator.profiling.gpus import lookup_gpu
from slm_operator.profiling.loadgen import run_load
from slm_operator.profiling.modelconfig import resolve_model_config
from slm_operator.profiling.results import SweepPoint
from slm_operator.profiling.selection import select_batch
from slm_operator.profiling.sweep import SweepSettings, run_sweep
from slm_operator.profiling.types import ProfileRequest, Slo, Workload

OUT = pathlib.Path(__file__).resolve().parent / "results" / "profiling_cost.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("--gpu", default="NVIDIA-L4")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--warmup-s", type=float, default=2.0, help="engine seconds per probe before measuring")
    parser.add_argument("--duration-s", type=float, default=6.0, help="engine seconds measured per probe")
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--start-cost-s", type=float, default=90.0, help="price of one real vLLM start")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    config = resolve_model_config(model=args.model, inline=None)
    gpu = lookup_gpu(args.gpu)
    workload = Workload(input_tokens=args.input_tokens, output_tokens=args.output_tokens)
    request = ProfileRequest(model=args.model, gpu_product=args.gpu, workload=workload, epsilon=0.1)
    starts = {"ours": 0, "grid": 0}
    device = SimulatedDevice()

    def start(label: str, max_num_seqs: int, kv_bytes: int | None = None):
        starts[label] += 1
        return start_simulated(model_config=config, gpu=gpu, workload=workload, max_num_seqs=max_num_seqs,
                               served_model_name=args.model, kv_cache_memory_bytes=kv_bytes,
                               time_scale=args.time_scale, startup_s=0, device=device)

    settings = SweepSettings(warmup_s=args.warmup_s, duration_s=args.duration_s, max_batch=args.max_batch,
                             metrics_interval_s=0.02, engine_warmup_s=args.warmup_s)
    t0 = time.monotonic()
    ours = run_sweep(request=request, engine_kind="simulated",
                     start_engine=lambda n, i, k, kv: start("ours", n, kv), settings=settings, model_config=config)
    ours_wall = time.monotonic() - t0
    ours_probes = len(ours.points) + len(ours.replication)
    ours_b = select_batch(points=[p.selection_point() for p in ours.points], slo=Slo(), epsilon=0.1)

    grid_sizes = []
    b = 1
    while b <= args.max_batch:
        grid_sizes.append(b)
        b *= 2
    t0 = time.monotonic()
    grid_points = []
    for size in grid_sizes:
        server = start("grid", size)
        try:
            load = asyncio.run(run_load(url=server.url, model=server.model_name, concurrency=size,
                                        input_tokens=workload.input_tokens, output_tokens=workload.output_tokens,
                                        warmup_s=args.warmup_s, duration_s=args.duration_s))
        finally:
            server.stop()
        grid_points.append(SweepPoint(batch_size=size, total_token_throughput_tok_s=load.total_token_throughput_tok_s,
                                      mean_itl_ms=load.mean_itl_ms))
    grid_wall = time.monotonic() - t0
    grid_b = select_batch(points=[p.selection_point() for p in grid_points], slo=Slo(), epsilon=0.1)

    per_probe = args.warmup_s + args.duration_s
    batch_starts = 1  # NB: the batch phase uses one server; every further start is a replica
    rows = {
        "ours-batch": {"engine_starts": batch_starts, "probes": len(ours.points), "batch_size": ours_b.batch_size,
                       "engine_seconds_under_load": round(len(ours.points) * per_probe + args.warmup_s, 1),
                       "wall_s_here": None,
                       "priced_s": round(batch_starts * args.start_cost_s + len(ours.points) * per_probe, 1),
                       "replication_points": 0},
        "ours": {"engine_starts": starts["ours"], "probes": ours_probes, "batch_size": ours_b.batch_size,
                 "engine_seconds_under_load": round(ours_probes * per_probe + args.warmup_s, 1),
                 "wall_s_here": round(ours_wall, 2),
                 "priced_s": round(starts["ours"] * args.start_cost_s + ours_probes * per_probe, 1),
                 "stop_reason": ours.stop_reason, "replication_points": len(ours.replication)},
        "grid": {"engine_starts": starts["grid"], "probes": len(grid_points), "batch_size": grid_b.batch_size,
                 "engine_seconds_under_load": round(len(grid_points) * per_probe, 1),
                 "wall_s_here": round(grid_wall, 2),
                 "priced_s": round(starts["grid"] * args.start_cost_s + len(grid_points) * per_probe, 1),
                 "replication_points": 0},
    }
    print(f"SIMULATED engine: {args.model} on {gpu.name}, {workload.input_tokens} in / {workload.output_tokens} out, "
          f"probe = {args.warmup_s:g}+{args.duration_s:g} engine-s, start priced at {args.start_cost_s:g} s")
    print(f"{'method':<10} {'starts':>6} {'probes':>6} {'B*':>5} {'load s':>8} {'wall s here':>11} {'priced s':>9}")
    for name, r in rows.items():
        print(f"{name:<10} {r['engine_starts']:>6} {r['probes']:>6} {r['batch_size']!s:>5} "
              f"{r['engine_seconds_under_load']:>8} {r['wall_s_here']!s:>11} {r['priced_s']:>9}")
    print(f"'ours' = batch phase + {rows['ours']['replication_points']} replication points (the grid measures "
          f"no packing); 'ours-batch' = the batch phase alone. Stop: {ours.stop_reason}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"settings": {**vars(args)}, "results": rows,
                               "grid_curve": [dataclasses.asdict(p) for p in grid_points]}, indent=2, default=str))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

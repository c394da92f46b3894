"""How well the no-GPU estimator predicts curves it was not fitted on.

* Leave-one-out over the reference's measured curves (``shared/reference``: OPT-1.3B on one
  H100 64 GB, vLLM 0.6.3): the ShareGPT sweep, the four fixed-output-length sweeps and the
  replication table. Each curve is predicted with engine constants refitted without it; mean and
  worst absolute relative error of throughput and ITL, at N (``max_num_seqs`` alone, as the
  estimator is used) and at the run's observed mean batch.
* Published batch-1 vLLM measurements of another model on other GPUs
  (tests/unit/profiling/data/public_vllm.json), leave-one-out.
* The worked example of docs/profiling.md: Llama-2-7B on the H100 64 GB, 250 in / 390 out.

    .venv/bin/python bench/estimator_loo.py [--reference ../shared/reference]

Prints tables and writes bench/results/estimator_loo.json. No asserts: numbers, not a test
(tests/unit/profiling/test_estimator.py bounds them).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from slm_operator.profiling.calibration import calibration_report, cross_gpu_check, fit_calibration, leave_one_out
from slm_operator.profiling.estimator import CALIBRATION, estimate_curve, estimate_profile, parameter_sources
from slm_operator.profiling.gpus import lookup_gpu
from slm_operator.profiling.modelconfig import resolve_model_config
from slm_operator.profiling.types import Slo, Workload

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "estimator_loo.json"
PUBLIC = ROOT / "tests" / "unit" / "profiling" / "data" / "public_vllm.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=str(ROOT.parent / "shared" / "reference"))
    args = parser.parse_args()
    result: dict[str, object] = {"calibration": {
        "shipped": {k: getattr(CALIBRATION, k) for k in ("step_overhead_s", "per_sequence_overhead_s",
                                                          "per_layer_overhead_s")},
        "refit": {k: getattr(fit_calibration(args.reference), k) for k in ("step_overhead_s",
                                                                            "per_sequence_overhead_s",
                                                                            "per_layer_overhead_s")},
    }}

    print("## Leave-one-out over the reference curves (mean / worst absolute error)")
    print("| curve | points | tok/s at N | ITL at N | tok/s at observed batch | ITL at observed batch |"
          " a0 ms | a1 us | t_L us |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    loo = leave_one_out(args.reference)
    for e in loo:
        c = e.calibration
        print(f"| {e.curve} | {e.points} | {e.tok_s_mean:.1%} / {e.tok_s_worst:.1%} | {e.itl_mean:.1%} / "
              f"{e.itl_worst:.1%} | {e.tok_s_mean_at_observed:.1%} | {e.itl_mean_at_observed:.1%} | "
              f"{c.step_overhead_s * 1e3:.3f} | {c.per_sequence_overhead_s * 1e6:.1f} | "
              f"{c.per_layer_overhead_s * 1e6:.1f} |")
    tok_all = statistics.fmean(e.tok_s_mean for e in loo)
    itl_all = statistics.fmean(e.itl_mean for e in loo)
    print(f"| all curves (mean of means) | | {tok_all:.1%} | {itl_all:.1%} | | | | | |")
    result["leave_one_out"] = [e.to_dict() for e in loo]
    result["leave_one_out_mean"] = {"tokS": round(tok_all, 4), "itl": round(itl_all, 4)}

    rows, replication = calibration_report(args.reference)
    print("\n## Shipped constants, replication table (at N, measured per-replica KV pool)")
    print("| replicas x N | measured tok/s | estimate | error | ITL ms measured | ITL error | predicted preemption |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in replication:
        print(f"| {r.replicas}x{r.max_num_seqs} | {r.measured_tok_s:,.0f} | {r.predicted_tok_s:,.0f} | "
              f"{r.tok_s_error:+.1%} | {r.measured_itl_ms:.1f} | {r.itl_error:+.1%} | "
              f"{'yes' if r.predicted_preempts else 'no'}{' (measured: yes)' if r.excluded else ''} |")
    by = {(r.replicas, r.max_num_seqs): r for r in replication}
    gain = by[2, 256].predicted_tok_s / by[1, 768].predicted_tok_s - 1
    print(f"2x256 over 1x768: estimated {gain:+.1%}, measured "
          f"{by[2, 256].measured_tok_s / by[1, 768].measured_tok_s - 1:+.1%}")
    result["replication"] = [{"replicas": r.replicas, "maxNumSeqs": r.max_num_seqs, "measured": r.measured_tok_s,
                              "estimated": round(r.predicted_tok_s, 1), "preempts": r.predicted_preempts}
                             for r in replication]
    result["replication_gain_2x256_over_1x768"] = round(gain, 4)
    result["rows"] = [{"sweep": r.sweep, "n": r.max_num_seqs, "tokSError": round(r.tok_s_error, 4),
                       "itlError": round(r.itl_error, 4), "tokSErrorAtObserved": round(r.tok_s_error_at_observed, 4),
                       "itlErrorAtObserved": round(r.itl_error_at_observed, 4)} for r in rows]

    print("\n## Published vLLM batch-1 decode, leave-one-out (other model, other GPUs, V1 engine)")
    points = json.loads(PUBLIC.read_text())["points"]
    public = cross_gpu_check(points)
    for p in public:
        print(f"{p.id}: measured {p.measured_itl_ms:.2f} ms, predicted {p.predicted_itl_ms:.2f} ms "
              f"({p.error:+.1%}; engine fixed time from the other point {p.engine_fixed_ms:.2f} ms)")
    result["public"] = [{"id": p.id, "measured": p.measured_itl_ms, "predicted": round(p.predicted_itl_ms, 3),
                         "error": round(p.error, 4)} for p in public]

    print("\n## Llama-2-7B on the H100 64 GB, 250 in / 390 out (chunked prefill, 512-token budget)")
    model = resolve_model_config(model="meta-llama/Llama-2-7b-hf", inline=None)
    gpu = lookup_gpu("H100-64GB")
    work = Workload(250, 390)
    for line in parameter_sources(model_config=model, gpu=gpu):
        print(f"# {line}")
    curve = estimate_curve(model_config=model, gpu=gpu, workload=work, max_num_batched_tokens=512,
                           batch_sizes=[1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 256])
    for e in curve:
        print(f"{e.batch_size:>5} {e.total_token_throughput_tok_s:>8,.0f} tok/s  ITL {e.inter_token_latency_ms:6.2f} ms"
              f"  mem {e.memory_gib:5.1f} GiB  roofline {e.roofline_fraction:.0%}  {e.bound}"
              f"{'  PREEMPTS' if e.preempts else ''}")
    profile = estimate_profile(model_config=model, gpu=gpu, workload=work, slo=Slo(), epsilon=0.1,
                               max_num_batched_tokens=512)
    print(profile.explanation)
    result["llama2_7b_h100_64gb"] = {"curve": [e.to_dict() for e in curve], "profile": profile.to_dict()}

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

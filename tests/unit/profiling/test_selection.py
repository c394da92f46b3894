"""B*/k* selection rules on the reference sweeps, on bad input, and under noise (property tests)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm_operator.profiling.results import load_sweep
from slm_operator.profiling.selection import (
    ReplicaPoint,
    SelectionError,
    SelectionPoint,
    advisor_rule_a,
    advisor_rule_b,
    isotonic_increasing,
    pareto_frontier,
    select_batch,
    select_replicas,
)
from slm_operator.profiling.types import Slo

from .test_results import reference_dir


def _sharegpt():
    return [p.selection_point() for p in load_sweep(reference_dir() / "sweep_sharegpt.csv").points]


def _output_len(length: str, *, tpot: bool = False):
    sweep = load_sweep(reference_dir() / "sweep_output_length.csv", where={"output_len": length})
    return [p.selection_point() for p in sweep.points]


def _step_distance(sizes, a, b):
    ordered = sorted(sizes)
    return abs(ordered.index(a) - ordered.index(b))


def test_advisor_rules_reproduce_the_readme():
    points = _sharegpt()
    assert advisor_rule_a(points=points) == 96
    assert advisor_rule_a(points=points, epsilon=0.3, latency_factor=3) == 64
    assert advisor_rule_a(points=points, epsilon=0.1) == 256


@pytest.mark.parametrize("epsilon", [0.1, 0.2])
def test_batch_size_lands_near_advisor_a_on_sharegpt(epsilon):
    points = _sharegpt()
    sel = select_batch(points=points, slo=Slo(), epsilon=epsilon)
    advisor = advisor_rule_a(points=points, epsilon=epsilon)
    assert _step_distance([p.batch_size for p in points], sel.batch_size, advisor) <= 1
    best = max(p.throughput_tok_s for p in points)
    assert sel.point.throughput_tok_s >= (1 - epsilon) * best


def test_batch_size_lands_near_advisor_b_on_the_390_token_sweep():
    sweep = load_sweep(reference_dir() / "sweep_output_length.csv", where={"output_len": "390"})
    points = [p.selection_point() for p in sweep.points]
    # Rule B batches by observed max running requests and uses TPOT; at these sizes they equal N and ITL.
    assert advisor_rule_b(points=points) == 128  # README: B_opt = 128 for 390-token outputs
    sel = select_batch(points=points, slo=Slo(), epsilon=0.1)
    assert _step_distance([p.batch_size for p in points], sel.batch_size, 128) <= 1
    assert sel.point.throughput_tok_s >= 0.9 * max(p.throughput_tok_s for p in points)


def test_slo_caps_the_batch_size_and_explains_rejections():
    sel = select_batch(points=_sharegpt(), slo=Slo(max_inter_token_latency_ms=15), epsilon=0.1)
    feasible = [p for p in _sharegpt() if p.itl_ms <= 15]
    assert sel.point.itl_ms <= 15 and sel.batch_size in {p.batch_size for p in feasible}
    assert sel.best_tok_s == max(p.throughput_tok_s for p in feasible)
    assert sel.point.throughput_tok_s >= 0.9 * sel.best_tok_s
    assert "SLO" in sel.rejected[128] and "within the ITL SLO of 15 ms" in sel.explanation


def test_preemptions_are_infeasible():
    points = [SelectionPoint(1, 100, 5), SelectionPoint(2, 190, 5), SelectionPoint(4, 380, 6, preemptions=3)]
    sel = select_batch(points=points, slo=Slo(), epsilon=0.1)
    assert sel.batch_size == 2 and "preemptions" in sel.rejected[4]


def test_nothing_feasible_keeps_partial_results():
    sel = select_batch(points=_sharegpt(), slo=Slo(max_inter_token_latency_ms=1), epsilon=0.1)
    assert sel.batch_size is None and sel.frontier and len(sel.rejected) == 15
    assert "relax the SLO" in sel.explanation
    with pytest.raises(SelectionError):
        sel.selected_batch_size()


def test_zero_and_nan_throughput_are_set_aside_not_fatal():
    points = [SelectionPoint(1, 0.0, 5), SelectionPoint(2, math.nan, 5), SelectionPoint(4, 400, 6),
              SelectionPoint(8, 420, 9)]
    sel = select_batch(points=points, slo=Slo(), epsilon=0.1)
    assert sel.batch_size == 4 and set(sel.rejected) == {1, 2}
    assert select_batch(points=[SelectionPoint(1, 0.0)], slo=Slo(), epsilon=0.1).batch_size is None


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_malformed_batch_sizes_raise(bad):
    with pytest.raises(SelectionError, match="positive integer"):
        select_batch(points=[SelectionPoint(bad, 10.0)], slo=Slo(), epsilon=0.1)


def test_bad_epsilon_and_empty_input_raise():
    with pytest.raises(SelectionError, match="epsilon"):
        select_batch(points=[SelectionPoint(1, 1.0)], slo=Slo(), epsilon=1.0)
    with pytest.raises(SelectionError, match="no sweep points"):
        select_batch(points=[], slo=Slo(), epsilon=0.1)


def test_a_lone_spike_at_a_small_batch_is_not_picked():
    # 8 reads as good as the plateau, but 16 and 32 fall back: pooled, 8 no longer reaches it.
    values = {1: 100, 2: 200, 4: 380, 8: 900, 16: 700, 32: 760, 64: 950, 128: 1000}
    sel = select_batch(points=[SelectionPoint(b, t, 1.0) for b, t in values.items()], slo=Slo(), epsilon=0.1)
    assert sel.batch_size == 64


def test_repeated_batch_sizes_are_averaged():
    points = [SelectionPoint(1, 100, 5), SelectionPoint(2, 150, 5), SelectionPoint(2, 250, 7),
              SelectionPoint(4, 210, 9)]
    sel = select_batch(points=points, slo=Slo(), epsilon=0.0)
    assert [(p.batch_size, p.throughput_tok_s, p.itl_ms) for p in sel.points] == [(1, 100, 5), (2, 200, 6), (4, 210, 9)]


def test_replicas_pick_the_best_feasible_aggregate_on_the_reference():
    sweep = load_sweep(reference_dir() / "replication.csv", where={"chunked_prefill": "false"})
    options = [p.replica_point() for p in (*sweep.points, *sweep.replication)]
    pick = select_replicas(options=options, slo=Slo())
    assert (pick.replicas, pick.batch_size) == (2, 256)  # 4x256 had preemptions (README Table IV)
    assert "4x256" in pick.rejected
    capped = select_replicas(options=options, slo=Slo(max_inter_token_latency_ms=20))
    assert (capped.replicas, capped.batch_size) == (2, 96)


def test_no_feasible_replica_option_falls_back_to_one():
    pick = select_replicas(options=[ReplicaPoint(2, 100.0, 50.0)], slo=Slo(max_inter_token_latency_ms=10))
    assert pick.replicas == 1 and pick.aggregate_tok_s is None


# ---------------------------------------------------------------- properties
curves = st.lists(st.floats(min_value=1.0, max_value=1e5, allow_nan=False), min_size=2, max_size=14)


@given(curves)
def test_isotonic_fit_is_monotone_and_mean_preserving(values):
    fitted = isotonic_increasing(values)
    assert all(a <= b * (1 + 1e-12) for a, b in zip(fitted, fitted[1:], strict=False))
    assert sum(fitted) == pytest.approx(sum(values), rel=1e-9)


@given(st.lists(st.tuples(st.floats(1, 1e5), st.floats(0.1, 1e3)), min_size=1, max_size=14))
def test_frontier_points_are_undominated_and_cover_the_extremes(pairs):
    points = [SelectionPoint(i + 1, t, itl) for i, (t, itl) in enumerate(pairs)]
    frontier = pareto_frontier(points)
    for p in frontier:
        assert not any(q.throughput_tok_s > p.throughput_tok_s and q.itl_ms < p.itl_ms for q in points)
    best = max(p.throughput_tok_s for p in points)
    fastest = min(p.itl_ms for p in points)
    assert any(p.throughput_tok_s == best for p in frontier)
    assert any(p.itl_ms == fastest for p in frontier)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_frontier_under_5pct_noise_keeps_only_near_frontier_points(data):
    points = _sharegpt()
    noisy = [SelectionPoint(p.batch_size, p.throughput_tok_s * data.draw(st.floats(0.95, 1.05)),
                            p.itl_ms * data.draw(st.floats(0.95, 1.05))) for p in points]
    clean = {p.batch_size: p for p in points}
    for p in pareto_frontier(noisy):
        # A noisy frontier point is never beaten by a clean point by more than the noise allows.
        q = clean[p.batch_size]
        assert not any(o.throughput_tok_s > q.throughput_tok_s * 1.1025 and o.itl_ms < q.itl_ms / 1.1025
                       for o in points)


def _bounds(points, epsilon, delta):
    lo_eps = 1 - (1 - epsilon) * (1 - delta) / (1 + delta)
    hi_eps = 1 - (1 - epsilon) * (1 + delta) / (1 - delta)
    lo = select_batch(points=points, slo=Slo(), epsilon=lo_eps).batch_size
    # NB: when noise can push the threshold above the true best, nothing bounds B* from above.
    hi = (select_batch(points=points, slo=Slo(), epsilon=hi_eps).batch_size if hi_eps >= 0
          else max(p.batch_size for p in points))
    return lo, hi


@pytest.mark.parametrize("sweep", ["sharegpt", "390", "520"])
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_batch_size_under_5pct_noise_stays_within_the_documented_bounds(sweep, data):
    points = _sharegpt() if sweep == "sharegpt" else [p for p in _output_len(sweep) if p.throughput_tok_s > 0]
    delta, epsilon = 0.05, 0.1
    noisy = [SelectionPoint(p.batch_size, p.throughput_tok_s * data.draw(st.floats(1 - delta, 1 + delta)), p.itl_ms)
             for p in points]
    lo, hi = _bounds(points, epsilon, delta)
    batch_size = select_batch(points=noisy, slo=Slo(), epsilon=epsilon).batch_size
    assert lo <= batch_size <= hi
    true = {p.batch_size: p.throughput_tok_s for p in points}
    assert true[batch_size] >= (1 - epsilon) * (1 - delta) / (1 + delta) * max(true.values())

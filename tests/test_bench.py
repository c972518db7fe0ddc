"""The benchmarks' figures stand in the relations they claim (batched ≤ naive, Woodbury = direct, median ≥ min)."""
from __future__ import annotations

import pytest

from diffloc.bench_trace import bench_trace


def test_bench_trace_reports_the_four_figures(pixel_model):
    result = bench_trace(model=pixel_model, rows=4, repeats=1)
    for key in ("sweep_over_plain", "naive_over_sweep", "peak_mem_ratio", "ms_per_image"):
        assert result[key] > 0, key
    assert result["setup"]["images_per_call"] == 6
    assert result["linearity_ms_per_row"]["rows"] == 4


def test_bench_edit_figures_stand_in_their_relations():
    from diffloc.bench_edit import bench_edit_closed_form

    result = bench_edit_closed_form(repeats=3, n_pairs=96, n_edits=12)
    assert result["quickfix_shape"]["K"] == [96, 768]
    # one stacked solve of 12 edits against 12 solves of the same size: the stacked one is cheaper
    assert result["batched_ms"] <= result["naive_ms"], result
    # the pair-space (Woodbury) form computed independently agrees with the direct solve
    assert result["woodbury_max_rel_diff"] < 1e-9
    assert result["quickfix_ms_min"] <= result["quickfix_ms_sd_sized"] and result["rank_one_ms_min"] <= result["rank_one_ms_sd_sized"]
    assert result["n_edits"] == 12


def test_woodbury_check_detects_a_wrong_solve(monkeypatch):
    """The agreement figure is not vacuous: a solve with the wrong λ shows up in it."""
    import diffloc.bench_edit as be

    real = be.least_squares_update
    monkeypatch.setattr(be, "least_squares_update", lambda W0, K, V, lam=0.01, **kw: real(W0, K, V, lam=lam * 100, **kw))
    result = be.bench_edit_closed_form(repeats=1, n_pairs=32, n_edits=4)
    assert result["woodbury_max_rel_diff"] > 1e-6


def test_bench_edit_solves_in_the_smaller_space_and_reuses_cs_factor():
    """96 pairs << 768 dims: the shipped (pair-space) QuickFix solve beats the [768, 768] one; a
    rank-one update from C's cached Cholesky factor (O(d²)) beats solving with C (O(d³))."""
    from diffloc.bench_edit import bench_edit_closed_form

    r = bench_edit_closed_form(repeats=3, n_pairs=96, n_edits=12, d_ff=1024)
    assert r["quickfix_space"] == "pairs"
    assert r["quickfix_ms_min"] < 0.5 * r["quickfix_direct_ms_min"], r
    assert r["rank_one_cached_ms_min"] < 0.2 * r["rank_one_ms_min"] and r["rank_one_cached_ms_min"] < r["cholesky_ms"], r
    assert r["rank_one_shape"]["C"] == [1024, 1024]

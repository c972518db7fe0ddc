"""The benchmarks run and report every figure (no timing assertions: speed lives in `diffloc bench`)."""
from __future__ import annotations

from diffloc.bench_trace import bench_trace


def test_bench_trace_reports_the_four_figures(pixel_model):
    result = bench_trace(model=pixel_model, rows=4, repeats=1)
    for key in ("sweep_over_plain", "naive_over_sweep", "peak_mem_ratio", "ms_per_image"):
        assert result[key] > 0, key
    assert result["setup"]["images_per_call"] == 6
    assert result["linearity_ms_per_row"]["rows"] == 4


def test_bench_edit_closed_form_reports_sd_sized_numbers():
    from diffloc.bench_edit import bench_edit_closed_form

    result = bench_edit_closed_form(repeats=1, n_pairs=32)
    assert result["quickfix_ms_sd_sized"] > 0 and result["rank_one_ms_sd_sized"] > 0
    assert result["quickfix_shape"]["K"] == [32, 768]

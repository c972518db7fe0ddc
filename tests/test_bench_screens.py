"""The screen benchmark's figures stand in the relations they claim (on the tiny pixel model)."""
from __future__ import annotations

from diffloc.bench_screens import bench_screens
from diffloc.tracing.testing import tiny_scorer


def test_bench_screens_figures_are_consistent(pixel_model):
    r = bench_screens(model=pixel_model, scorer=tiny_scorer(), naive_sample=4, heads=True)
    sec = r["seconds"]
    for method in ("atp", "ig"):
        for scope in ("text_encoder", "heads"):
            # each ratio is the two timings of this run, not a constant
            assert abs(r["screen_over_exact"][method][scope] - sec[f"{method}_{scope}"] / sec[f"exact_{scope}"]) < 1e-3
    # ig takes ig_steps backward passes where atp takes one: it cannot be cheaper
    assert sec["ig_text_encoder"] > sec["atp_text_encoder"]
    skip = r["skipped_noop"]
    prompt = r["screen_setup"]["prompt"]
    assert 0 < skip["skipped"] < skip["rows"], (skip, prompt)
    # one call per row re-runs the clean and corrupted rows each time: slower than the batched sweep
    assert r["naive_over_sweep_text"] > 1
    assert r["peak_mem_mb_screen"]["screen"] > 0 and r["peak_mem_ratio_screen"] > 0

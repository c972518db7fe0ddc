"""The benchmarks' figures against hand-computed values from known (injected) timings and peaks.

No test here reads the wall clock: speed targets live in ``diffloc bench``'s JSON (``targets``),
and these tests check that the figures are the right arithmetic of the right measurements.
"""
from __future__ import annotations

import types

import pytest
import torch

import diffloc.bench_edit as be
from diffloc.bench_trace import _time, bench_trace

MiB = 2**20


class ScriptedClock:
    """A clock that returns the given readings in order (and fails loudly if read too often)."""

    def __init__(self, *readings: float):
        self.readings = list(readings)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.readings.pop(0)


def test_time_is_the_median_of_the_timed_calls_after_an_untimed_warm_up():
    calls = []
    clock = ScriptedClock(0.0, 1.0, 10.0, 12.0, 20.0, 23.5)  # intervals 1, 2, 3.5
    assert _time(lambda: calls.append(1), 3, clock=clock) == 2.0
    assert len(calls) == 4 and clock.reads == 6  # one warm-up call, not timed
    assert _time(lambda: None, 2, clock=ScriptedClock(0.0, 1.0, 5.0, 8.0)) == 2.0  # even count: mean of the middle two


SECONDS = {"sweep": 0.2, "plain": 0.16, "naive": 0.9, "sweep_2x": 0.36, "sweep_1_thread": 0.5}
PEAKS = {"sweep": {"tensors": 3 * MiB, "rss": 5 * MiB}, "plain": {"tensors": 2 * MiB, "rss": None}}


def test_bench_trace_figures_are_the_arithmetic_of_known_timings(pixel_model):
    rows, seen, images = 2, [], {}

    def timer(label, fn, repeats):
        seen.append((label, repeats))
        if label in ("sweep", "plain", "sweep_2x"):  # the batch each timing covers, counted from the call itself
            images[label] = fn().shape[0]
        return SECONDS[label]

    threads = torch.get_num_threads()
    r = bench_trace(model=pixel_model, rows=rows, repeats=3, steps=2, timer=timer, peak=lambda label, fn, repeats: PEAKS[label])
    assert torch.get_num_threads() == threads
    # the sweep and plain generation cover the same batch: clean + corrupted + `rows` restored images
    assert images == {"sweep": rows + 2, "plain": rows + 2, "sweep_2x": 2 * rows + 2}
    assert sorted(seen) == sorted([("sweep_1_thread", 1), ("sweep", 3), ("plain", 3), ("naive", 1), ("sweep_2x", 1)])
    # by hand: 0.2 / 0.16, 0.9 / 0.2, 1000 * 0.2 / 4 images, 4 images / 0.16 s, 1000 * 0.36 / 6 images, 3 MiB / 2 MiB
    assert r["sweep_over_plain"] == 1.25
    assert r["naive_over_sweep"] == 4.5
    assert r["ms_per_image"] == 50.0
    assert r["images_per_s_plain"] == 25.0
    assert r["linearity_ms_per_row"] == {"rows": 2, "at_rows": 50.0, "at_2x_rows": 60.0}
    assert r["ms_per_image_threads"] == {"before_1_thread": 125.0, f"after_{threads}_threads": 50.0}
    assert r["peak_mem_ratio"] == 1.5
    assert r["peak_mem_mb"] == {"sweep": 3.0, "plain": 2.0}
    assert r["peak_rss_mb"] == {"sweep": 5.0, "plain": None}
    assert r["setup"]["seconds"] == {"sweep": 0.2, "plain": 0.16, "naive": 0.9}
    assert r["setup"]["steps"] == 2


@pytest.mark.parametrize("spec", ["tiny-sd3", "tiny-flux"])
def test_bench_trace_figures_on_dit_replicas(monkeypatch, spec):
    """The same arithmetic on the MM-DiT replicas (SD3: CFG; FLUX: embedded guidance), and the naive loop is one
    pipeline call per restored denoiser site."""
    import diffloc.bench_trace as bt
    from diffloc.tracing.models import load_model

    model, rows, images, calls = load_model(spec), 3, {}, []
    real = bt.patched_generate
    monkeypatch.setattr(bt, "patched_generate", lambda m, p, rs, *a, **k: calls.append([r.sites for r in rs]) or real(m, p, rs, *a, **k))

    def timer(label, fn, repeats):
        if label in ("sweep", "plain", "sweep_2x", "naive"):
            out = fn()
            images[label] = None if out is None else out.shape[0]
        return SECONDS[label]

    r = bench_trace(model=model, rows=rows, repeats=3, steps=1, timer=timer, peak=lambda label, fn, repeats: PEAKS[label])
    assert images == {"sweep": rows + 2, "plain": rows + 2, "sweep_2x": 2 * rows + 2, "naive": None}
    sites = [(s,) for s in model.sites.denoiser[:rows]]
    naive = [c for c in calls if len(c) == 1]  # the sweeps' calls restore several rows at once
    assert naive == [[s] for s in sites], "one call per restored row, each restoring one denoiser site"
    # by hand: 0.2 / 0.16, 0.9 / 0.2, 1000 * 0.2 / 5 images, 5 images / 0.16 s, 1000 * 0.36 / 8 images, 3 MiB / 2 MiB
    assert (r["sweep_over_plain"], r["naive_over_sweep"], r["ms_per_image"]) == (1.25, 4.5, 40.0)
    assert r["images_per_s_plain"] == 31.25 and r["linearity_ms_per_row"]["at_2x_rows"] == 45.0
    assert r["peak_mem_ratio"] == 1.5
    assert r["targets"] == {"sweep_over_plain": "<= 1.15", "naive_over_sweep": ">= 3", "peak_mem_ratio": "<= 1.3"}
    assert r["setup"]["model"] == spec and r["setup"]["guidance"] == model.defaults["guidance_scale"]


# ---- bench_edit: known per-call times in, medians and minima out -------------------------------------------

# the order bench_edit_closed_form times its blocks in: quickfix shipped, quickfix direct, batched, naive,
# rank-one uncached, rank-one cached
TIMES_MS = [[3.0, 1.0, 2.0], [9.0, 7.0, 8.0], [1.5, 2.5, 0.5], [11.0, 13.0, 12.0], [40.0, 30.0, 50.0], [4.0, 6.0, 5.0]]


def test_bench_edit_figures_are_the_medians_and_minima_of_known_times(monkeypatch):
    script = [list(t) for t in TIMES_MS]
    repeats_seen = []

    def fake_times(fn, repeats):
        repeats_seen.append(repeats)
        return script.pop(0)

    monkeypatch.setattr(be, "_times_ms", fake_times)
    monkeypatch.setattr(be, "time", types.SimpleNamespace(perf_counter=ScriptedClock(10.0, 10.004)))  # the one Cholesky
    r = be.bench_edit_closed_form(repeats=3, n_pairs=48, n_edits=4, d_ff=64)
    assert not script and repeats_seen == [3] * 6
    assert (r["quickfix_ms_sd_sized"], r["quickfix_ms_min"]) == (2.0, 1.0)
    assert (r["quickfix_direct_ms"], r["quickfix_direct_ms_min"]) == (8.0, 7.0)
    assert (r["rank_one_ms_sd_sized"], r["rank_one_ms_min"]) == (40.0, 30.0)
    assert (r["rank_one_cached_ms"], r["rank_one_cached_ms_min"]) == (5.0, 4.0)
    assert r["cholesky_ms"] == 4.0
    assert (r["batched_ms"], r["naive_ms"]) == (1.5, 12.0)
    assert r["quickfix_shape"]["K"] == [48, 768] and r["rank_one_shape"]["C"] == [64, 64]


@pytest.mark.parametrize("n_pairs, space", [(96, "pairs"), (768, "input"), (1000, "input")])
def test_bench_edit_reports_the_space_the_solve_uses(monkeypatch, n_pairs, space):
    """Pair space exactly when the stacked pairs are fewer than the 768 input dims."""
    monkeypatch.setattr(be, "_times_ms", lambda fn, repeats: [1.0])
    r = be.bench_edit_closed_form(repeats=1, n_pairs=n_pairs, n_edits=4, d_ff=64)
    assert r["quickfix_space"] == space


def test_woodbury_agreement_is_at_rounding_for_the_shipped_solve(monkeypatch):
    monkeypatch.setattr(be, "_times_ms", lambda fn, repeats: [1.0])
    assert be.bench_edit_closed_form(repeats=1, n_pairs=32, n_edits=4, d_ff=64)["woodbury_max_rel_diff"] < 1e-9


def test_woodbury_check_detects_a_wrong_solve(monkeypatch):
    """The agreement figure is not vacuous: a solve with the wrong λ shows up in it."""
    real = be.least_squares_update
    monkeypatch.setattr(be, "_times_ms", lambda fn, repeats: [1.0])
    monkeypatch.setattr(be, "least_squares_update", lambda W0, K, V, lam=0.01, **kw: real(W0, K, V, lam=lam * 100, **kw))
    result = be.bench_edit_closed_form(repeats=1, n_pairs=32, n_edits=4, d_ff=64)
    assert result["woodbury_max_rel_diff"] > 1e-6

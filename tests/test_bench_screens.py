"""The screen benchmark's figures against hand-computed values, from known timings, tables and peaks.

The trace methods, the naive pipeline call and the clock are replaced by stand-ins whose numbers
are known, so each figure can be checked against its arithmetic by hand; no wall clock is read.
One slow test runs the real benchmark on the tiny model and checks its row counts against an
independent count from the tokenizer and the site table.
"""
from __future__ import annotations

import types

import pandas as pd
import pytest

import diffloc.bench_screens as bs
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import SamplerConfig
from diffloc.tracing.testing import tiny_scorer

MiB = 2**20
PROMPT = "a photo of two [red] circles at the top on a plain background"


class ScriptedClock:
    def __init__(self, *readings: float):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


class FakeMethod:
    """Plans units of known sizes; each unit's table has known no-op and duplicate flags."""

    def __init__(self, units: list[tuple[list[bool], list[bool]]], bench_scopes: tuple[str, ...] = ()):
        self.units = units  # per unit: (skipped_noop, skipped_duplicate) of its restored rows
        self.bench_scopes = bench_scopes

    def options(self, cfg):
        return types.SimpleNamespace(ig_steps=8)

    def plan(self, cfg, model, prompts, n_steps):
        return [types.SimpleNamespace(rows=[types.SimpleNamespace(restore=f"u{i}r{j}") for j in range(len(noop))])
                for i, (noop, _) in enumerate(self.units)]

    def run_unit(self, unit, ctx, cfg):
        i = int(unit.rows[0].restore[1])
        noop, dup = self.units[i]
        return pd.DataFrame({"skipped_noop": [False, False] + noop, "skipped_duplicate": [False, False] + dup}), {}


# exact: unit 0 has 3 restored rows (2 no-ops), unit 1 has 2 (1 duplicate): 5 rows, 3 skipped
EXACT = FakeMethod([([True, True, False], [False, False, False]), ([False, False], [False, True])])
SCREEN = FakeMethod([([False] * 5, [False] * 5)], ("text_encoder", "denoiser", "heads"))
CONTRIB = FakeMethod([([False] * 5, [False] * 5)], ("denoiser",))  # attn-contrib: timed on a DiT's block states only


@pytest.fixture
def faked(monkeypatch, pixel_model):
    methods = {"exact": EXACT, "atp": SCREEN, "ig": SCREEN, "attn-contrib": CONTRIB}
    monkeypatch.setattr(bs, "TRACE_METHODS", types.SimpleNamespace(get=methods.__getitem__, names=lambda: tuple(methods)))
    naive_calls: list = []
    monkeypatch.setattr(bs, "patched_generate", lambda model, text, restores, *a, **k: naive_calls.append(restores))
    monkeypatch.setattr(bs, "make_corruption", lambda *a, **k: None)
    ctx = types.SimpleNamespace(model=pixel_model, prompts=[MarkedPrompt.parse(PROMPT)],
                                scfg=SamplerConfig(num_inference_steps=2, guidance_scale=2.0))
    monkeypatch.setattr(bs, "screen_context", lambda base, model=None, scorer=None: ctx)
    return naive_calls


def test_bench_screens_figures_are_the_arithmetic_of_known_timings(faked):
    # clock reads, in order: text exact 4 s, atp 0.2 s, ig 1 s; heads exact 8 s, atp 0.1 s, ig 2 s; 3 naive rows 3 s
    clock = ScriptedClock(0, 4, 10, 10.2, 20, 21, 30, 38, 40, 40.1, 50, 52, 60, 63)
    peaks = iter([{"tensors": 6 * MiB, "rss": 8 * MiB}, {"tensors": 2 * MiB, "rss": 4 * MiB}])  # atp screen, then plain
    r = bs.bench_screens(model=object(), scorer=object(), naive_sample=3, heads=True, steps=2, clock=clock,
                         peak=lambda fn, repeats: next(peaks))
    assert not clock.readings, "every timed block read the clock twice"
    assert r["seconds"] == {"exact_text_encoder": 4.0, "atp_text_encoder": 0.2, "ig_text_encoder": 1.0,
                            "exact_heads": 8.0, "atp_heads": 0.1, "ig_heads": 2.0}
    # 0.2 / 4, 1 / 4, 0.1 / 8, 2 / 8
    assert r["screen_over_exact"] == {"atp": {"text_encoder": 0.05, "heads": 0.0125}, "ig": {"text_encoder": 0.25, "heads": 0.25}}
    assert r["rows_text_encoder"] == r["rows_heads"] == 5
    assert r["skipped_noop"] == {"rows": 5, "skipped": 3, "noop": 2, "duplicate": 1}
    # 3 naive calls in 3 s: 1 s a row, times 5 rows = 5 s, over the exact sweep's 4 s
    assert r["naive_text_estimated_s"] == 5.0 and r["naive_over_sweep_text"] == 1.25
    # the naive rows are spread over the table (first, middle, last), one pipeline call each
    assert faked == [["u0r0"], ["u0r2"], ["u1r1"]]
    assert r["peak_mem_ratio_screen"] == 3.0 and r["peak_mem_mb_screen"] == {"screen": 6.0, "plain": 2.0}
    assert r["peak_rss_mb_screen"] == {"screen": 8.0, "plain": 4.0}
    assert r["screen_setup"]["ig_steps"] == 8 and r["screen_setup"]["naive_sample"] == 3


def test_without_heads_only_the_text_encoder_is_timed(faked):
    clock = ScriptedClock(0, 2, 3, 3.5, 4, 5, 6, 6.5)  # exact 2 s, atp 0.5 s, ig 1 s, one naive row 0.5 s
    r = bs.bench_screens(model=object(), scorer=object(), naive_sample=1, heads=False, steps=2, clock=clock,
                         peak=lambda fn, repeats: {"tensors": MiB, "rss": None})
    assert set(r["seconds"]) == {"exact_text_encoder", "atp_text_encoder", "ig_text_encoder"} and "rows_heads" not in r
    assert r["screen_over_exact"] == {"atp": {"text_encoder": 0.25}, "ig": {"text_encoder": 0.5}}
    assert r["naive_over_sweep_text"] == 1.25  # 0.5 s a row x 5 rows / 2 s
    assert faked == [["u0r0"]]


@pytest.mark.slow
def test_bench_screens_counts_rows_as_the_site_table_and_tokenizer_say(pixel_model):
    """The real benchmark on the tiny model: rows = kinds x layers x tokens (BOS..EOS), counted independently."""
    r = bs.bench_screens(model=pixel_model, scorer=tiny_scorer(), naive_sample=2, heads=False, steps=2, text_kinds=("hidden", "mlp"))
    text = MarkedPrompt.parse(r["screen_setup"]["prompt"]).text
    n_tokens = len(pixel_model.tokenizer(text).input_ids)
    layers = pixel_model.sites.text_layers["text_encoder"]
    assert r["rows_text_encoder"] == 2 * layers * n_tokens
    # rule (a): a restored token before the first corrupted one cannot change the image; "a photo of two" precede "red"
    first = min(MarkedPrompt.parse(r["screen_setup"]["prompt"]).positions(pixel_model.tokenizer))
    assert first == 5 and r["skipped_noop"]["noop"] >= 2 * layers * first
    assert set(r["seconds"]) == {"exact_text_encoder", "atp_text_encoder", "ig_text_encoder"}


@pytest.fixture
def faked_dit(monkeypatch, faked):
    """The same stand-ins around tiny-sd3: its scopes are the denoiser's sites, then those and every head."""
    from diffloc.tracing.models import load_model

    model = load_model("tiny-sd3")
    ctx = types.SimpleNamespace(model=model, prompts=[MarkedPrompt.parse("a [red] car")],
                                scfg=SamplerConfig(num_inference_steps=2, guidance_scale=7.0))
    monkeypatch.setattr(bs, "screen_context", lambda base, model=None, scorer=None: ctx)
    return faked


def test_dit_screens_time_every_block_state(faked_dit):
    # clock reads: denoiser exact 5 s, atp 0.25 s, ig 2 s, attn-contrib 0.05 s; heads exact 10 s, atp 0.4 s, ig 3 s;
    # no naive text rows
    clock = ScriptedClock(0, 5, 10, 10.25, 20, 22, 25, 25.05, 30, 40, 50, 50.4, 60, 63)
    peaks = iter([{"tensors": 9 * MiB, "rss": None}, {"tensors": 4 * MiB, "rss": None}])  # atp screen, then plain
    r = bs.bench_screens(model=object(), scorer=object(), heads=True, steps=2, clock=clock, peak=lambda fn, repeats: next(peaks))
    assert not clock.readings and faked_dit == [], "every timed block read the clock twice; no naive call"
    assert r["screen_scopes"] == ["denoiser", "heads"]
    # 0.25 / 5, 2 / 5, 0.05 / 5, 0.4 / 10, 3 / 10
    assert r["screen_over_exact"] == {"atp": {"denoiser": 0.05, "heads": 0.04}, "ig": {"denoiser": 0.4, "heads": 0.3},
                                      "attn-contrib": {"denoiser": 0.01}}
    assert r["rows_denoiser"] == r["rows_heads"] == 5 and "naive_over_sweep_text" not in r
    assert r["peak_mem_ratio_screen"] == 2.25 and r["peak_mem_mb_screen"] == {"screen": 9.0, "plain": 4.0}
    assert r["screen_targets"]["atp denoiser"] == "<= 0.1" and r["screen_targets"]["attn-contrib denoiser"] == "<= 0.02"


def test_dit_scopes_are_the_denoisers_sites_and_heads(pixel_model):
    """Which sites each scope's exact sweep covers, counted from the site table (no timing)."""
    from dataclasses import replace

    from diffloc.tracing.models import load_model
    from diffloc.tracing.trace_config import TraceConfig, plan_units

    model = load_model("tiny-flux")
    scopes = bs.screen_scopes(model)
    base = TraceConfig(model="tiny-flux", component="text_encoder", seeds=(0,), batch_size=1000)
    rows = {k: [r.site for u in plan_units(replace(base, **v), model, [MarkedPrompt.parse("a [red] car")], 2) for r in u.rows]
            for k, v in scopes.items()}
    den = [str(s) for s in model.sites.denoiser]
    assert rows["denoiser"] == den
    assert rows["heads"] == den + [str(h) for h in model.sites.heads("transformer")]
    assert list(bs.screen_scopes(pixel_model)) == ["text_encoder", "heads"]
    assert list(bs.screen_scopes(model, heads=False)) == ["denoiser"]


def test_gpu_bench_plans_the_dit_stages(pixel_model):
    """experiments/gpu_bench.py: a DiT's screen stages are its denoiser's block states and heads; a UNet's the text encoder's."""
    from diffloc.tracing.models import load_model
    from diffloc.tracing.trace_config import TraceConfig
    from experiments import gpu_bench

    base = TraceConfig(model="tiny-sd3", component="text_encoder", seeds=(0,))
    sd3 = load_model("tiny-sd3")
    stages = gpu_bench._screen_stages(base, sd3, gpu_bench.STAGES)
    assert [(n, c.component, c.heads) for n, c in stages] == [("screens_denoiser", "denoiser", False), ("screens_heads", "denoiser", True)]
    assert [n for n, _ in gpu_bench._screen_stages(base, pixel_model, gpu_bench.STAGES)] == ["screens_text", "screens_heads"]
    assert [n for n, _ in gpu_bench._screen_stages(base, sd3, ("trace", "screens_denoiser"))] == ["screens_denoiser"]
    n_params = sum(p.numel() for m in [*sd3.modules.values(), sd3.vae] for p in m.parameters())
    assert gpu_bench._weights_mb(sd3) == round(n_params * 4 / 2**20, 1)  # float32
    assert {"random-sd3", "random-flux"} <= set(gpu_bench.STEPS) and {"random-sd3", "random-flux"} <= set(gpu_bench.ROWS)

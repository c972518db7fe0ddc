"""Screens as trace methods: same sites as exact patching, confirmation of the best, honest errors."""
from __future__ import annotations

import numpy as np
import pytest

from diffloc.tracing.errors import DifflocInputError
from diffloc.tracing.io import read_json_format
from diffloc.tracing.metrics import CallableMetric
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig

PROMPTS = ("a photo of two [red] circles at the top on a plain background",)


OPTIONS = ("ig_steps", "confirm_top", "window", "swap")  # a method's own options: TraceConfig.method_options


def _cfg(**kw):
    opts = {k: kw.pop(k) for k in OPTIONS if k in kw}
    base = dict(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0,), num_inference_steps=3, batch_size=256)
    return TraceConfig(**{**base, **kw}, method_options=opts)


@pytest.fixture(scope="module")
def exact(tmp_path_factory, pixel_model, scorer):
    return run_sweep(_cfg(), tmp_path_factory.mktemp("exact"), model=pixel_model, scorer=scorer)


KEYS = ["component", "kind", "site", "layer", "token", "window_start", "window_end"]


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_screen_covers_exactly_the_exact_sweeps_sites(tmp_path, pixel_model, scorer, exact, method):
    table = run_sweep(_cfg(method=method, **({"ig_steps": 2} if method == "ig" else {})), tmp_path / method, model=pixel_model, scorer=scorer)
    screened = table[table.method == method]
    ref = exact[~exact.kind.isin(["clean", "corrupted"])]
    got = screened[~screened.kind.isin(["clean", "corrupted"])]
    assert sorted(map(tuple, got[KEYS].values.tolist())) == sorted(map(tuple, ref[KEYS].values.tolist()))
    clean = screened[screened.kind == "clean"].clip_score.iloc[0]
    assert clean == pytest.approx(exact[exact.kind == "clean"].clip_score.iloc[0], abs=1e-3), "same clean run"
    assert got.gt_score.isna().all() if "gt_score" in got else True, "no gradient for ground truth: left empty"
    est = got.clip_corrupted + got.effect_clip * (got.clip_clean - got.clip_corrupted)
    np.testing.assert_allclose(got.clip_score, est, rtol=1e-9, atol=1e-9)
    den = got[got.component != "text_encoder"]
    assert len(den) and (got[got.component == "text_encoder"].screen_steps == "").all(), "per-step output: denoiser rows only"
    per_step = den.screen_steps.map(lambda t: sum(float(v) for v in t.split(";")))
    np.testing.assert_allclose(per_step, den.effect_clip, rtol=1e-3, atol=1e-6)  # the steps sum to the effect (4 digits kept)


def test_confirm_top_traces_the_best_screened_sites_exactly(tmp_path, pixel_model, scorer, exact):
    table = run_sweep(_cfg(method="atp", confirm_top=5), tmp_path / "c", model=pixel_model, scorer=scorer)
    conf = table[(table.method == "exact") & ~table.kind.isin(["clean", "corrupted"])]
    screened = table[(table.method == "atp") & ~table.kind.isin(["clean", "corrupted"])]
    best = screened.groupby(["site", "token_role", "window_start"]).effect_clip.mean().sort_values(ascending=False)
    want = set(best.index[:5])
    assert set(conf.groupby(["site", "token_role", "window_start"]).groups) == want
    merged = conf.merge(exact, on=KEYS, suffixes=("", "_ref"))
    assert len(merged) == len(conf)
    np.testing.assert_allclose(merged.clip_score, merged.clip_score_ref, atol=1e-3)  # same restorations, other batch
    data = read_json_format("causal_sites", tmp_path / "c" / "causal_sites.json")
    named = {e["site"] for e in data["clip"]["causal"]}
    assert named <= set(conf.site), "causal_sites.json names only confirmed sites"


def test_screen_errors_are_input_errors(tmp_path, pixel_model, scorer):
    with pytest.raises(DifflocInputError, match="--ig-steps must be an integer >= 1, got 0"):
        run_sweep(_cfg(method="ig", ig_steps=0), tmp_path / "a", model=pixel_model, scorer=scorer)
    with pytest.raises(DifflocInputError, match=r"--confirm-top 100000 outside 0\.\."):
        run_sweep(_cfg(method="atp", confirm_top=100000), tmp_path / "b", model=pixel_model, scorer=scorer)
    flat = CallableMetric("redness", lambda imgs, texts: imgs[:, 0].mean((1, 2)).detach(), role="scorer")
    with pytest.raises(DifflocInputError, match="needs a differentiable scorer; redness"):
        run_sweep(_cfg(method="atp"), tmp_path / "c", model=pixel_model, scorer=scorer, metrics=[flat])
    with pytest.raises(DifflocInputError, match="unknown trace method 'gradcam'"):
        run_sweep(_cfg(method="gradcam"), tmp_path / "d", model=pixel_model, scorer=scorer)

"""``--noise-scale auto``: the rule on known answers, meta.json, resume, the real measurement, and bad input through the CLI."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

import diffloc.tracing.auto_noise as auto_noise
import diffloc.tracing.sweep as sweep
from diffloc.tracing.auto_noise import LADDER, choose, measure_scale, resolve
from diffloc.tracing.corruption import CORRUPTIONS
from diffloc.tracing.errors import ConfigError, OutputExistsError
from diffloc.tracing.exact import score_rows
from diffloc.tracing.io import read_meta
from diffloc.tracing.metrics import ClipMetric
from diffloc.tracing.sampler import Restore, patched_generate
from diffloc.tracing.sweep import run_sweep, unit_context
from diffloc.tracing.trace_config import TraceConfig

PROMPTS = ("a photo of two [red] circles at the top on a plain background",)


def _cfg(**kw):
    base = dict(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0, 1), num_inference_steps=2, component="unet",
                bootstrap=50, noise_scale="auto")
    return TraceConfig(**{**base, **kw})


def flips_from(first: dict[int, float]):
    """A stub pair_flips: seed s flips at every scale >= first[s]; records the pairs it was asked about."""
    calls = []

    def stub(cfg, ctx, pi, seed, ni, ladder):
        calls.append((pi, seed, ni))
        return [s >= first[seed] for s in ladder]

    stub.calls = calls
    return stub


def test_choose_known_answers():
    assert choose(LADDER, [0, 0, 0, 0.8, 0.9, 1, 1, 1]) == (4.0, True)  # the smallest scale at >= 80 %
    assert choose(LADDER, [0, 0.79, 0.8, 1, 1, 1, 1, 1]) == (3.0, True)
    assert choose(LADDER, [0, 0.2, 0.5, 0.5, 0.4, 0.5, 0.1, 0]) == (3.0, False)  # none: the highest, smallest of ties
    assert choose(LADDER, [0.0] * 8) == (1.0, False)


@pytest.fixture(scope="module")
def auto_runs(tmp_path_factory, pixel_model, scorer):
    """An auto run whose stub flips seed 0 from 4σ and seed 1 from 8σ (fractions 0, 0, 0, .5, .5, 1, 1, 1: chooses 8),
    and the same sweep at a fixed 8σ."""
    root = tmp_path_factory.mktemp("auto")
    stub = flips_from({0: 4.0, 1: 8.0})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auto_noise, "pair_flips", stub)
        auto = run_sweep(_cfg(), root / "auto", model=pixel_model, scorer=scorer)
    fixed = run_sweep(_cfg(noise_scale=8.0), root / "fixed", model=pixel_model, scorer=scorer)
    return root, auto, fixed, stub.calls


def test_auto_chooses_the_smallest_scale_flipping_80_percent_and_sweeps_at_it(auto_runs):
    root, auto, fixed, calls = auto_runs
    assert calls == [(0, 0, 0), (0, 1, 0)]  # the run's own pairs: prompt x seed x noise sample, measured once each
    pd.testing.assert_frame_equal(auto, fixed)  # every unit ran at the chosen 8σ


def test_meta_json_records_the_choice(auto_runs):
    root = auto_runs[0]
    meta = read_meta(root / "auto" / "meta.json")
    rec = meta["noise"]["auto"]
    assert meta["config"]["noise_scale"] == "auto" and meta["noise"]["scale"] == 8.0
    assert rec["chosen"] == 8.0 and rec["reached_target"] is True and "note" not in rec
    assert rec["ladder"] == [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0] and rec["target"] == 0.8
    assert rec["flip_fraction"] == [0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0] and rec["flips"] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert rec["n_pairs"] == 2 and rec["flip_by"] == "gt"  # the toy world has exact readers
    assert "auto" not in read_meta(root / "fixed" / "meta.json")["noise"]


def test_a_resumed_run_reuses_the_recorded_scale(auto_runs, pixel_model, scorer, monkeypatch):
    """Resumed with a new seed, an auto run measures nothing (a stub that would choose 1σ is never called) and
    corrupts the new seed's units at the recorded 8σ: the table equals the fixed run's resumed the same way."""
    root = auto_runs[0]
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "auto" / "shards").glob("*.parquet")}
    before = read_meta(root / "auto" / "meta.json")["noise"]
    stub = flips_from({0: 1.0, 1: 1.0, 2: 1.0})
    monkeypatch.setattr(auto_noise, "pair_flips", stub)
    again = run_sweep(_cfg(seeds=(0, 1, 2)), root / "auto", model=pixel_model, scorer=scorer)
    assert stub.calls == []
    assert read_meta(root / "auto" / "meta.json")["noise"] == before
    assert all((root / "auto" / "shards" / k).stat().st_mtime_ns == v for k, v in stamps.items()), "a finished unit was recomputed"
    fixed = run_sweep(_cfg(noise_scale=8.0, seeds=(0, 1, 2)), root / "fixed", model=pixel_model, scorer=scorer)
    pd.testing.assert_frame_equal(again, fixed)
    with pytest.raises(OutputExistsError, match="another config"):  # auto and a number are different configs
        run_sweep(_cfg(noise_scale=8.0), root / "auto", model=pixel_model, scorer=scorer)


def test_no_scale_reaching_80_percent_takes_the_highest_and_says_so(pixel_model, scorer, monkeypatch, capsys):
    monkeypatch.delenv("DIFFLOC_QUIET", raising=False)
    stub = flips_from({0: 3.0, 1: 99.0})  # seed 1 never flips: 0.5 from 3σ on
    monkeypatch.setattr(auto_noise, "pair_flips", stub)
    cfg = _cfg()
    scale, rec = resolve(cfg, unit_context(cfg, pixel_model, scorer), None)
    assert scale == rec["chosen"] == 3.0 and rec["reached_target"] is False
    assert rec["flip_fraction"] == [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert "no scale on the ladder flips 80% of the 2 pairs; using 3σ" in rec["note"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and rec["note"] in lines[0]


def test_the_real_measurement_matches_images_made_one_scale_at_a_time(pixel_model, scorer):
    """No stub: a world without readers is simulated by scoring with CLIP alone, so a pair flips when CLIP drops by
    >= min_drop. The ladder call's images equal patched_generate's clean and corrupted images at each scale, and the
    flip fractions equal those counted from the separately made images."""
    cfg = _cfg(seeds=(2, 3), num_inference_steps=3, min_drop=0.0)
    ctx = unit_context(cfg, pixel_model, scorer, metrics=[ClipMetric(scorer)])
    prompt = ctx.prompts[0]
    expected = [0] * len(LADDER)
    for seed in cfg.seeds:
        batch = auto_noise.ladder_images(cfg, ctx, 0, seed, 0, LADDER)
        for j, s in enumerate(LADDER):
            corr = CORRUPTIONS.get("gaussian").make(TraceConfig(attribute="colour", noise_scale=s), pixel_model, prompt, seed, 0)
            alone = patched_generate(pixel_model, prompt.text, [Restore()], corr, torch.Generator().manual_seed(seed), ctx.scfg)
            torch.testing.assert_close(batch[[0, 1 + j]], alone, atol=1e-5, rtol=0)
            clip = score_rows(alone, [prompt.text] * 2, ctx)["clip"]
            expected[j] += bool(clip[0] - clip[1] >= 0.0)
    rec = measure_scale(cfg, ctx)
    assert rec["flip_by"] == "clip drop >= 0 points" and rec["n_pairs"] == 2
    assert rec["flips"] == expected
    assert (rec["chosen"], rec["reached_target"]) == choose(LADDER, [f / 2 for f in expected])


def test_the_config_takes_a_positive_number_or_auto():
    assert TraceConfig(noise_scale="auto").noise_scale == "auto" and TraceConfig(noise_scale=4).noise_scale == 4
    for bad in ("Auto", "3", 0, -1.0, float("inf"), True, None):
        with pytest.raises(ConfigError, match=r"--noise-scale must be a finite number > 0 \(a multiple of σ, e.g. 3\) or auto"):
            TraceConfig(noise_scale=bad)
    with pytest.raises(ConfigError, match="--noise-scale auto needs --corrupt gaussian"):
        TraceConfig(noise_scale="auto", corrupt="replace")


# ---- through the CLI ----------------------------------------------------------------------------------------


def _trace(tmp_path, monkeypatch, *extra):
    """``diffloc trace`` in process, the sweep replaced by a recorder: the TraceConfig the options build."""
    from diffloc.cli.app import main

    got = []
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg, out, **kw: got.append(cfg) or pd.DataFrame())
    main(["trace", "--attribute", "colour", "--no-plot", "--out", str(tmp_path / "out"), *extra])
    return got[0]


@pytest.mark.parametrize("given, parsed", [([], 3.0), (["--noise-scale", "3"], 3.0), (["--noise-scale", "2.5"], 2.5),
                                           (["--noise-scale", "auto"], "auto")])
def test_the_cli_parses_numbers_and_auto(tmp_path, monkeypatch, given, parsed):
    assert _trace(tmp_path, monkeypatch, *given).noise_scale == parsed


@pytest.mark.parametrize("given, msg", [
    (["--noise-scale", "loud"], "--noise-scale must be a finite number > 0 (a multiple of σ, e.g. 3) or auto, got 'loud'"),
    (["--noise-scale", "0"], "or auto, got 0.0"),
    (["--noise-scale", "-2"], "or auto, got -2.0"),
    (["--noise-scale", "nan"], "or auto, got nan"),
    (["--noise-scale", "inf"], "or auto, got inf"),
    (["--noise-scale", "auto", "--corrupt", "replace"], "--noise-scale auto needs --corrupt gaussian"),
])
def test_bad_noise_scales_are_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, given, msg):
    with pytest.raises(SystemExit) as stop:
        _trace(tmp_path, monkeypatch, *given)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_auto_with_replace_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "diffloc", "trace", "--attribute", "colour", "--noise-scale", "auto",
                        "--corrupt", "replace", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--noise-scale auto needs --corrupt gaussian" in lines[0], r.stderr[-2000:]

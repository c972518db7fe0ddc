"""run_until_stable on the tiny model: stops at the target or at max_seeds, and resumes without recomputing."""
from __future__ import annotations

import pandas as pd
import pytest

import diffloc.tracing.stable as stable
from diffloc.tracing.errors import ConfigError
from diffloc.tracing.io import read_json_format
from diffloc.tracing.stable import run_until_stable
from diffloc.tracing.stats import bootstrap_effects, real_effects, split_half
from diffloc.tracing.trace_config import TraceConfig

PROMPTS = ("a photo of two [red] circles at the top on a plain background",)


from test_sweep import Interrupt, cut_after  # noqa: E402  (the sweep tests' interrupting bar)


def _cfg(**kw):
    base = dict(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0, 1), num_inference_steps=3, batch_size=64,
                component="unet", bootstrap=400)
    return TraceConfig(**{**base, **kw})


def _stamps(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}


@pytest.fixture(scope="module")
def stable_run(tmp_path_factory, pixel_model, scorer):
    out = tmp_path_factory.mktemp("stable")
    table, history = run_until_stable(_cfg(), out, target=0.9, max_seeds=8, model=pixel_model, scorer=scorer,
                                      stability_metrics=["clip"])
    return out, table, history


def test_stops_when_the_target_is_met(stable_run):
    out, table, history = stable_run
    assert len(history) >= 2, "the tiny model needs more than the first two seeds: the test must add a round"
    assert [h["n_seeds"] for h in history] == [2 + 2 * i for i in range(len(history))]
    assert sorted(table.seed.unique()) == list(range(history[-1]["n_seeds"]))
    # each round's numbers, recomputed independently from that round's seeds
    for h in history:
        part = table[table.seed.isin(h["seeds"])]
        ref = split_half(part, "clip", sites=real_effects(bootstrap_effects(part, "clip", n=400, seed=0)))
        assert h["spearman"]["clip"] == ref["spearman"] and h["n_pairs"] == ref["n_pairs"] == len(h["seeds"])
        assert h["met"] == (ref["spearman"]["unet"] is not None and ref["spearman"]["unet"] >= 0.9)
    assert [h["met"] for h in history] == [False] * (len(history) - 1) + [True]
    saved = read_json_format("stability", out / "stability.json")
    assert saved["schema"] == "stability/1" and saved["stable"] and saved["finished"] and saved["history"] == history


def test_stops_at_max_seeds_when_never_stable(tmp_path, pixel_model, scorer, monkeypatch):
    real = stable.judge
    monkeypatch.setattr(stable, "judge", lambda *a, **k: {**real(*a, **k), "met": False})
    table, history = run_until_stable(_cfg(), tmp_path / "never", target=0.9, max_seeds=5, round_seeds=2,
                                      model=pixel_model, scorer=scorer)
    assert [h["n_seeds"] for h in history] == [2, 4, 5]  # the last round adds only what max_seeds allows
    assert sorted(table.seed.unique()) == [0, 1, 2, 3, 4]
    saved = read_json_format("stability", tmp_path / "never" / "stability.json")
    assert not saved["stable"] and saved["finished"] and set(saved["history"][0]["spearman"]) == {"clip", "gt"}


def test_a_rerun_recomputes_no_unit(stable_run, pixel_model, scorer):
    out, table, history = stable_run
    stamps = _stamps(out)
    again, history2 = run_until_stable(_cfg(), out, target=0.9, max_seeds=8, model=pixel_model, scorer=scorer,
                                       stability_metrics=["clip"])
    assert _stamps(out) == stamps, "a finished unit was recomputed"
    assert history2 == history
    pd.testing.assert_frame_equal(again, table)


def test_an_interrupted_run_resumes_to_the_same_table(tmp_path, stable_run, pixel_model, scorer):
    out = tmp_path / "cut"
    kw = dict(target=0.9, max_seeds=8, model=pixel_model, scorer=scorer, stability_metrics=["clip"])
    with pytest.raises(Interrupt):
        run_until_stable(_cfg(), out, progress=cut_after(1), **kw)
    stamps = _stamps(out)
    assert len(stamps) == 1
    table, history = run_until_stable(_cfg(), out, **kw)
    assert all(_stamps(out)[k] == v for k, v in stamps.items()), "a finished unit was recomputed"
    pd.testing.assert_frame_equal(table, stable_run[1])
    assert history == stable_run[2]


@pytest.mark.parametrize("kw, msg", [
    (dict(target=0.0), r"--until-stable must be a rank correlation in \(0, 1\], got 0.0"),
    (dict(target=1.5), r"in \(0, 1\], got 1.5"),
    (dict(max_seeds=1), "--max-seeds must be >= the 2 starting seed"),
    (dict(round_seeds=0), "seeds per round must be >= 1"),
])
def test_bad_options_are_one_line_config_errors(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg) as err:
        run_until_stable(_cfg(), tmp_path / "bad", **{"target": 0.9, "max_seeds": 4, **kw})
    assert "\n" not in str(err.value) and not (tmp_path / "bad").exists()

"""run_until_stable on the tiny model: stops at the target (with enough informative pairs) or at max_seeds, and resumes
without recomputing.

The tiny random model's corruption moves CLIP by hundredths of a point and never flips ground truth, so these runs use
``min_drop=0``: a pair is informative when CLIP does not rise (seeds 3, 4 and 5 of this prompt rise: not informative)."""
from __future__ import annotations

import pandas as pd
import pytest

import diffloc.tracing.stable as stable
from diffloc.tracing.causal import informative_rows
from diffloc.tracing.errors import ConfigError
from diffloc.tracing.io import read_json_format
from diffloc.tracing.stable import run_until_stable
from diffloc.tracing.stats import bootstrap_effects, real_effects, split_half
from diffloc.tracing.trace_config import TraceConfig

PROMPTS = ("a photo of two [red] circles at the top on a plain background",)


from test_sweep import Interrupt, cut_after  # noqa: E402  (the sweep tests' interrupting bar)


def _cfg(**kw):
    base = dict(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0, 1), num_inference_steps=3, batch_size=64,
                component="unet", bootstrap=400, min_drop=0.0, min_informative=4)
    return TraceConfig(**{**base, **kw})


TARGET, MAX_SEEDS = 0.5, 10


def _counts(part) -> tuple[int, int]:
    """(pairs, informative pairs) of a table, by hand from its clean rows: CLIP does not rise, or gt flips 1 -> 0."""
    clean = part[part.kind == "clean"].drop_duplicates(["prompt_index", "seed", "noise_index"])
    informative = (clean.clip_clean - clean.clip_corrupted >= 0) | ((clean.gt_clean == 1) & (clean.gt_corrupted == 0))
    return len(clean), int(informative.sum())


def _stamps(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}


@pytest.fixture(scope="module")
def stable_run(tmp_path_factory, pixel_model, scorer):
    out = tmp_path_factory.mktemp("stable")
    table, history = run_until_stable(_cfg(), out, target=TARGET, max_seeds=MAX_SEEDS, model=pixel_model, scorer=scorer,
                                      stability_metrics=["clip"])
    return out, table, history


def test_stops_when_the_target_is_met(stable_run):
    out, table, history = stable_run
    assert len(history) >= 2, "the tiny model needs more than the first two seeds: the test must add a round"
    assert [h["n_seeds"] for h in history] == [2 + 2 * i for i in range(len(history))]
    assert history[-1]["n_seeds"] < MAX_SEEDS, "stopped by the target, not by --max-seeds"
    assert sorted(table.seed.unique()) == list(range(history[-1]["n_seeds"]))
    # each round's numbers, recomputed independently from that round's seeds, over its informative pairs only
    for h in history:
        part = table[table.seed.isin(h["seeds"])]
        assert (h["n_pairs"], h["n_informative"]) == _counts(part) and h["n_pairs"] == len(h["seeds"])
        used = informative_rows(part, "clip", 0.0)
        ref = split_half(used, "clip", sites=real_effects(bootstrap_effects(used, "clip", n=400, seed=0)))
        assert h["spearman"]["clip"] == ref["spearman"] and ref["n_pairs"] == h["n_informative"]
        rho = ref["spearman"]["unet"]
        assert h["met"] == (h["n_informative"] >= 4 and rho is not None and rho >= TARGET)
    assert [h["met"] for h in history] == [False] * (len(history) - 1) + [True]
    first = history[0]
    assert first["n_informative"] < 4 and first["spearman"]["clip"]["unet"] >= TARGET, \
        "the first round ranks the sites well enough on too few informative pairs: the minimum, not the ranking, holds it"
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
    again, history2 = run_until_stable(_cfg(), out, target=TARGET, max_seeds=MAX_SEEDS, model=pixel_model, scorer=scorer,
                                       stability_metrics=["clip"])
    assert _stamps(out) == stamps, "a finished unit was recomputed"
    assert history2 == history
    pd.testing.assert_frame_equal(again, table)


def test_an_interrupted_run_resumes_to_the_same_table(tmp_path, stable_run, pixel_model, scorer):
    out = tmp_path / "cut"
    kw = dict(target=TARGET, max_seeds=MAX_SEEDS, model=pixel_model, scorer=scorer, stability_metrics=["clip"])
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

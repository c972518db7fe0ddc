"""Sweeps: tidy rows, effects, causal sites, resume after a real kill, figures."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig

PROMPTS = ("a photo of two [red] circles at the top on a plain background",
           "three [blue] squares in the middle, striped background")


class Interrupt(Exception):
    """Raised by a progress bar to cut a sweep after some units (as a kill would)."""


def cut_after(n: int):
    """A ``progress`` factory whose bar stops the sweep once ``n`` new units have finished."""
    class Bar:
        def __init__(self, total, initial=0):
            self.done = 0

        def update(self, k):
            self.done += k
            if self.done >= n:
                raise Interrupt

        def close(self):
            pass

    return Bar


def _cfg(**kw):
    base = dict(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0, 1), num_inference_steps=3, batch_size=48)
    base.update(kw)
    return TraceConfig(**base)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, pixel_model, scorer):
    out = tmp_path_factory.mktemp("full")
    return out, run_sweep(_cfg(), out, model=pixel_model, scorer=scorer)


def test_table_is_tidy_and_complete(full_run, pixel_model):
    out, table = full_run
    n_text = len(pixel_model.sites.text_sites())  # 3 layers x 3 kinds
    n_unet = len(pixel_model.sites.denoiser)
    text_rows = table[table.component == "text_encoder"]
    # every (site, token) once per prompt x seed; tokens run BOS..EOS of each prompt
    for (p, s), g in text_rows.groupby(["prompt_index", "seed"]):
        n_tok = g.token.nunique()
        assert len(g) == n_text * n_tok
        assert g.token.min() == 0 and g.token_role.isin(["last_subject"]).any()
    assert (table[table.component == "unet"].groupby(["prompt_index", "seed"]).size() == n_unet).all()
    assert set(table.scorer) == {"test-random-openclip"} and table.formula.str.contains("100").all()
    # indirect effect recomputed independently from the scores
    t = table[~table.kind.isin(["clean", "corrupted"])]
    ok = (t.clip_clean - t.clip_corrupted).abs() > 1e-9
    ref = (t.clip_score - t.clip_corrupted) / (t.clip_clean - t.clip_corrupted)
    assert np.allclose(t.effect_clip[ok], ref[ok])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["noise"]["sigma"]["text_encoder"] > 0 and meta["config"]["seeds"] == [0, 1]
    assert json.loads((out / "causal_sites.json").read_text())["threshold"] == 0.5


def test_clean_and_corrupted_rows_agree_across_units(full_run):
    """Every unit of a (prompt, seed) re-runs the same clean and corrupted images in its batch."""
    _, table = full_run
    for kind in ("clean", "corrupted"):
        rows = table[table.kind == kind]
        spread = rows.groupby(["prompt_index", "seed"]).clip_score.agg(lambda x: x.max() - x.min())
        assert (spread < 1e-3).all(), spread
        assert rows.groupby(["prompt_index", "seed"]).size().min() >= 2  # text chunks + UNet unit
    clean = table[table.kind == "clean"].groupby(["prompt_index", "seed"]).clip_score.first()
    corrupted = table[table.kind == "corrupted"].groupby(["prompt_index", "seed"]).clip_score.first()
    assert (clean != corrupted).any(), "corruption must change some scores"


def _child(out, model, scorer):
    run_sweep(_cfg(), out, model=model, scorer=scorer)


def test_killed_sweep_resumes_to_the_same_table(tmp_path, full_run, pixel_model, scorer):
    out = tmp_path / "killed"
    proc = mp.get_context("fork").Process(target=_child, args=(out, pixel_model, scorer))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.parquet"))) < 2 if (out / "shards").exists() else time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill, mid-run
    proc.join()
    done_before = len(list((out / "shards").glob("*.parquet")))
    assert done_before >= 2 and not (out / "trace.parquet").exists(), "the kill must land mid-sweep"
    resumed = run_sweep(_cfg(), out, model=pixel_model, scorer=scorer)
    pd.testing.assert_frame_equal(resumed, full_run[1])
    assert not list((out / "shards").glob(".*")), "no temporary files left behind"


def test_resume_skips_finished_units(tmp_path, pixel_model, scorer):
    out = tmp_path / "partial"
    with pytest.raises(Interrupt):
        run_sweep(_cfg(), out, model=pixel_model, scorer=scorer, progress=cut_after(1))
    first = next((out / "shards").glob("*.parquet"))
    stamp = first.stat().st_mtime_ns
    run_sweep(_cfg(), out, model=pixel_model, scorer=scorer)
    assert first.stat().st_mtime_ns == stamp, "a finished unit was recomputed"


def test_other_config_in_same_folder_is_refused(tmp_path, pixel_model, scorer):
    out = tmp_path / "x"
    run_sweep(_cfg(component="unet", seeds=(0,)), out, model=pixel_model, scorer=scorer)
    with pytest.raises(FileExistsError, match="another config"):
        run_sweep(_cfg(component="unet", seeds=(0,), noise_scale=2.0), out, model=pixel_model, scorer=scorer)


def test_more_seeds_extend_a_sweep_and_keep_finished_units(tmp_path, pixel_model, scorer):
    out = tmp_path / "grow"
    run_sweep(_cfg(component="unet", seeds=(0,)), out, model=pixel_model, scorer=scorer)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    grown = run_sweep(_cfg(component="unet", seeds=(0, 5)), out, model=pixel_model, scorer=scorer)
    assert all((out / "shards" / k).stat().st_mtime_ns == v for k, v in stamps.items()), "a finished unit was redone"
    fresh = run_sweep(_cfg(component="unet", seeds=(0, 5)), tmp_path / "fresh", model=pixel_model, scorer=scorer)
    pd.testing.assert_frame_equal(grown, fresh, check_exact=True)


def test_step_windows_and_layer_windows(tmp_path, pixel_model, scorer):
    cfg = _cfg(component="all", seeds=(0,), prompts=PROMPTS[:1], step_windows=((0, 1), (1, 3)), layer_window=3)
    table = run_sweep(cfg, tmp_path / "w", model=pixel_model, scorer=scorer)
    unet = table[table.component == "unet"]
    assert set(zip(unet.window_start, unet.window_end)) == {(0, 1), (1, 3)}
    with pytest.raises(ValueError, match="outside the step range"):
        run_sweep(_cfg(step_windows=((0, 9),)), tmp_path / "bad", model=pixel_model, scorer=scorer)


@pytest.mark.parametrize("kw, msg", [
    (dict(attribute="no such"), "bad attribute"),
    (dict(component="vae"), "unknown component"),
    (dict(prompts=("no marks here",)), "marked spans"),
    (dict(seeds=()), "seeds"),
    (dict(executor="spark"), "unknown executor"),
])
def test_bad_config_one_line_errors(kw, msg):
    with pytest.raises(ValueError, match=msg) as err:
        _cfg(**kw)
    assert "\n" not in str(err.value)


def test_an_attribute_outside_the_models_world_is_refused_before_any_work(tmp_path, pixel_model, scorer):
    """The world owns its vocabulary: the toy world has no 'action' (the sd world does)."""
    with pytest.raises(ValueError, match="unknown attribute 'action' for world 'toy'; allowed: object, colour") as err:
        run_sweep(_cfg(attribute="action"), tmp_path / "a", model=pixel_model, scorer=scorer)
    assert "\n" not in str(err.value) and not (tmp_path / "a" / "shards").exists()


def test_figures_from_table_alone(full_run):
    from diffloc.plots import plot_run

    out, _ = full_run
    paths = plot_run(out)
    names = {p.name for p in paths}
    assert {"text_encoder_heatmap.png", "unet_effects.png", "image_strip.png", "text_encoder_heatmap_roles.png"} <= names
    assert all(p.stat().st_size > 5000 for p in paths)


def test_stability_is_spearman_between_seed_halves(full_run):
    from diffloc.tracing.causal import site_effects, stability

    out, table = full_run
    st = json.loads((out / "causal_sites.json").read_text())["clip"]["stability_spearman"]
    assert st["seeds_a"] == [0] and st["seeds_b"] == [1]
    a = site_effects(table[table.seed == 0]).set_index(["site", "token_role"]).effect
    b = site_effects(table[table.seed == 1]).set_index(["site", "token_role"]).effect
    unet = [i for i in a.index if i[0].startswith("unet:")]
    assert st["unet"] == pytest.approx(round(a[unet].rank().corr(b[unet].rank()), 4))
    # a table whose second seed copies the first is perfectly stable
    twin = pd.concat([table[table.seed == 0], table[table.seed == 0].assign(seed=1)])
    assert stability(twin)["unet"] == pytest.approx(1.0)

"""``diffloc trace`` end to end on every DiT replica (tiny-sd3, tiny-flux, tiny-pixart), through the CLI.

Usage::

    pytest tests/test_dit_cli.py -x -q                 # ~5 CPU-minutes; 15 min wall on 2 cores shared with other jobs (slow)
    pytest tests/test_dit_cli.py -k pixart -x -q       # one replica

Every run goes through ``diffloc.cli.app.main`` (in process, as ``diffloc`` parses it) or ``python -m
diffloc`` (where the run must be killed), with the smallest settings that keep the properties
visible: one marked prompt, seed 0, one denoising step, attention states of the text encoders only,
the replicas' own toy scorer (offline). Each replica's prompt was picked so that the corruption
lowers the toy scorer (``n_informative == 1``: effects and intervals are defined). Each test
asserts a property of the outputs against an independent count or computation: rows per site,
the screens covering exact's sites, confirmation rows being the top K screened sites, intervals as
the arithmetic of the table, a killed run resuming to the uninterrupted table, Ray's table equal
to the local one. The swaps (crossattn-swap, text streams) are tested elsewhere.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffloc.cli.app import main
from diffloc.tracing.io import read_trace
from diffloc.tracing.models import load_model
from diffloc.tracing.prompts import MarkedPrompt

pytestmark = pytest.mark.slow

FAMS = ("sd3", "flux", "pixart")
# one prompt per replica whose corruption (seed 0, noise 0) lowers the toy scorer at one step (scanned:
# sd3 14.4 points, flux 0.6, pixart 24); if a change to the corruption flips one, pick another
PROMPTS = {"sd3": "a [black] bird", "flux": "a [white] apple", "pixart": "a [blue] hat"}
COMMON = ("--attribute", "colour", "--scorer", "toy", "--seed", "0", "--steps", "1", "--text-kind", "attn",
          "--batch-size", "32", "--bootstrap", "20", "--min-drop", "0.1", "--min-informative", "1", "--threshold", "-1000", "--no-plot")
TOP = 3  # --confirm-top
ALL = ("--component", "all")
# a short sweep for the kill: text encoders only, each layer's attention over the span 'word .. token 3'
SPAN = ("--component", "text_encoder", "--restore", "span", "--span-end", "3", "--batch-size", "6")


def argv(fam: str, out: Path, *extra: str) -> list[str]:
    """``trace`` arguments of one replica's run into ``out`` (the prompt file is written beside it)."""
    prompt_file = out.parent / f"{out.name}.prompts.txt"
    prompt_file.write_text(PROMPTS[fam] + "\n")
    return ["trace", "--model", f"tiny-{fam}", *COMMON, "--prompt-file", str(prompt_file), "--out", str(out), *extra]


def trace(fam: str, out: Path, *extra: str) -> tuple[pd.DataFrame, dict]:
    """Run ``diffloc --quiet trace`` in this process; the table and causal_sites.json it wrote."""
    main(["--quiet", *argv(fam, out, *extra)])
    return read_trace(out / "trace.parquet"), json.loads((out / "causal_sites.json").read_text())


_models: dict = {}


def model(fam: str):
    if fam not in _models:
        _models[fam] = load_model(f"tiny-{fam}")
    return _models[fam]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each (fam, method, extra) run once per module: {key: (out, table, causal_sites)}."""
    done: dict = {}

    def get(fam: str, *extra: str):
        key = (fam, *extra)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{fam}_{len(done)}") / "run"
            done[key] = (out, *trace(fam, out, *extra))
        return done[key]

    return get


def restored(table: pd.DataFrame) -> pd.DataFrame:
    return table[~table.kind.isin(["clean", "corrupted"])]


@pytest.mark.parametrize("fam", FAMS)
def test_exact_rows_are_one_per_site_and_token(runs, fam):
    """Each text encoder: layers x its own tokens (BOS..EOS) of attention states, each (site, token) once;
    the denoiser: every site once, in the site table's order."""
    _, table, _ = runs(fam, *ALL)
    m, rows = model(fam), restored(table)
    assert set(table.method) == {"exact"} and table.unit.nunique() == int((table.kind == "clean").sum())
    text = MarkedPrompt.parse(PROMPTS[fam]).text
    texts = [c for c in rows.component.unique() if c.startswith("text_encoder")]
    assert texts == list(m.text_components)
    for comp in texts:
        part = rows[rows.component == comp]
        n_tok = len(m.tokenizer_for(comp)(text).input_ids)
        assert sorted(part.token.unique()) == list(range(n_tok)) and not part.duplicated(["site", "token"]).any()
        assert len(part) == m.sites.text_layers[comp] * n_tok and set(part.kind) == {"attn"}
    denoiser = rows[rows.component == "transformer"]
    assert list(denoiser.site) == [str(s) for s in m.sites.denoiser]


@pytest.mark.parametrize("fam", FAMS)
def test_causal_sites_intervals_are_the_tables_arithmetic(runs, fam):
    """One informative pair: every site (x token role) is listed with the ratio of means of its rows and the
    degenerate interval [effect, effect] that one pair's bootstrap gives; strongest first."""
    _, table, sites = runs(fam, *ALL)
    assert sites["n_pairs"] == 1 and sites["n_informative"] == 1, "the prompt no longer lowers the scorer: pick another"
    clean, corrupted = table.clip_clean.iloc[0], table.clip_corrupted.iloc[0]
    assert clean - corrupted >= 0.1
    groups = restored(table).groupby(["component", "site", "token_role"], sort=False).clip_score.mean()
    entries = sites["clip"]["causal"]
    assert len(entries) == len(groups) == sites["clip"]["n_sites_scored"]
    got = {(e["component"], e["site"], e.get("token_role", "")): e for e in entries}
    for key, score in groups.items():
        e = got[key]
        assert e["effect"] == pytest.approx((score - corrupted) / (clean - corrupted), abs=1e-4)
        assert e["interval"] == pytest.approx([e["effect"], e["effect"]], abs=1e-4)
        assert e["n_pairs"] == 1 and e["n_informative"] == 1
    effects = [e["effect"] for e in entries]
    assert effects == sorted(effects, reverse=True)


@pytest.mark.parametrize("method", ["atp", "ig"])
@pytest.mark.parametrize("fam", FAMS)
def test_screens_estimate_exactly_the_exact_sites(runs, fam, method):
    """atp / ig: one row per exact row (same component, site, token), on the same clean and corrupted pair."""
    _, exact, _ = runs(fam, *ALL)
    extra = ("--ig-steps", "2") if method == "ig" else ()
    _, screen, _ = runs(fam, *ALL, "--method", method, *extra)
    keys = ["component", "site", "token"]
    assert set(screen.method) == {method} and screen.unit.nunique() == 1  # one backward-pass unit covers every row
    a, b = restored(screen)[keys], restored(exact)[keys]
    assert len(a) == len(b) and set(map(tuple, a.values)) == set(map(tuple, b.values))
    assert screen.clip_clean.iloc[0] == pytest.approx(exact.clip_clean.iloc[0], abs=1e-2)
    assert screen.clip_corrupted.iloc[0] == pytest.approx(exact.clip_corrupted.iloc[0], abs=1e-2)
    assert np.isfinite(restored(screen).effect_clip).all()


def _head_index(site: str) -> tuple[str, int]:
    path, n = re.fullmatch(r"(.*)\.heads\.(\d+)", site).groups()
    return path, int(n)


# tiny-sd3 without CFG (--guidance 1): under CFG its joint-attention head probes fail, see the xfail below
HEADS = {"sd3": ("--guidance", "1"), "flux": (), "pixart": ()}


@pytest.mark.parametrize("fam", FAMS)
def test_heads_screen_and_confirm_top(runs, fam):
    """--heads: every denoiser site, then every head of the model's denoiser (each index below its attention's
    heads); --confirm-top K: the exact rows are the K best-screened sites, and the only ones causal_sites.json names."""
    _, table, sites = runs(fam, "--component", "transformer", "--heads", "--method", "atp", "--confirm-top", str(TOP), *HEADS[fam])
    m = model(fam)
    screen = restored(table[table.method == "atp"])
    heads = [str(h) for s in m.sites.denoiser for h in m.sites.heads_of(s)]
    assert sorted(heads) == sorted(str(h) for h in m.sites.heads("transformer")), "every head of the denoiser"
    assert list(screen.site) == [str(s) for s in m.sites.denoiser] + heads
    for h in heads:
        path, n = _head_index(h.split(":", 1)[1])
        assert 0 <= n < m.modules["transformer"].get_submodule(path).heads
    # the top K by mean screened effect, recomputed from the screen rows alone
    clean, corrupted = screen.clip_clean.iloc[0], screen.clip_corrupted.iloc[0]
    est = ((screen.clip_score - corrupted) / (clean - corrupted)).to_numpy()
    top = set(screen.site.to_numpy()[np.argsort(-est, kind="stable")[:TOP]])
    confirmed = restored(table[table.method == "exact"])
    assert len(confirmed) == TOP and set(confirmed.site) == top
    assert confirmed.unit.str.contains("+confirm", regex=False).all()
    assert {e["site"] for e in sites["clip"]["causal"]} == top, "causal_sites.json names only the confirmed (exact) sites"


def test_heads_screen_under_cfg_on_joint_attention(tmp_path):
    """Under CFG a joint attention's to_out.0 input is a strided slice; with head probes the sampler turns diffusers'
    per-block checkpointing off (it would recompute the block after the probes have exited): the screen gives a
    finite estimate for every head of the denoiser."""
    table, _ = trace("sd3", tmp_path / "cfg", "--component", "transformer", "--heads", "--method", "atp")
    heads = [str(h) for h in model("sd3").sites.heads("transformer")]
    rows = restored(table)
    est = rows[rows.site.isin(heads)]
    assert sorted(est.site.unique()) == sorted(heads)
    assert np.isfinite(est.effect_clip).all()


@pytest.mark.parametrize("fam", FAMS)
def test_killed_cli_run_resumes_to_the_uninterrupted_table(runs, tmp_path, fam):
    """`python -m diffloc trace` SIGKILLed after two shards; the same command again finishes the same table,
    without redoing the finished units."""
    _, full, _ = runs(fam, *SPAN)
    assert full.unit.nunique() >= 4 and len(restored(full)) == sum(model(fam).sites.text_layers.values())  # one row per layer
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the in-process runs use one torch thread
    proc = subprocess.Popen([sys.executable, "-m", "diffloc", "--quiet", *argv(fam, out, *SPAN)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(_shards(out)) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _shards(out)
    assert len(before) >= 2 and not (out / "trace.parquet").exists(), "the kill must land mid-sweep"
    resumed, _ = trace(fam, out, *SPAN)
    pd.testing.assert_frame_equal(resumed, full, check_exact=True)
    after = _shards(out)
    assert all(after[k] == v for k, v in before.items()) and len(after) > len(before), "finished units were not redone"


def _shards(out: Path) -> dict:
    folder = out / "shards"
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} if folder.exists() else {}


def test_ray_executor_gives_the_local_table(runs, ray, tmp_path):
    """--executor ray --workers 2 on tiny-pixart's denoiser: the workers rebuild the replica and the toy scorer, and the
    table equals the local run's units of the same component (same chunks) bit for bit."""
    _, local, _ = runs("pixart", *ALL)
    table, _ = trace("pixart", tmp_path / "ray", "--component", "transformer", "--executor", "ray", "--workers", "2")
    same = local[local.unit.str.contains("-transformer-")].reset_index(drop=True)
    assert table.unit.nunique() == 3
    pd.testing.assert_frame_equal(table, same, check_exact=True)

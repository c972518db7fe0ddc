"""What until-stable reports, recomputed independently on small synthetic tables with known answers.

tests/test_stable.py runs the real loop on the tiny model; here the numbers are checked against
values worked out by hand (ranks, the Spearman formula, percentiles of a two-valued resample
distribution) and against a plain numpy recomputation that shares no code with
``tracing.stats`` / ``tracing.stable``. Every table below has ``clean = 1`` and ``corrupted = 0``
in every row, so a site's ratio-of-means effect over some pairs is just the mean of its scores
over those pairs. Their drop of 1 point is informative under ``min_drop=1`` (:data:`EVERY_PAIR`); the last tests
make some pairs uninformative and check that only the informative ones count.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import diffloc.tracing.sweep as sweep
from diffloc.tracing.io import read_json_format
from diffloc.tracing.stable import judge, run_until_stable
from diffloc.tracing.stats import bootstrap_effects, spearman, split_half
from diffloc.tracing.trace_config import TraceConfig


def table_of(scores: dict[tuple[int, int], dict[tuple[str, str], float]], method: str = "exact") -> pd.DataFrame:
    """A trace table: per (prompt, seed) pair a clean row, a corrupted row and one row per (component, site)."""
    recs = []
    for (p, s), sites in scores.items():
        base = dict(prompt_index=p, seed=s, noise_index=0, method=method, clip_clean=1.0, clip_corrupted=0.0,
                    layer=-1, token=-1, token_role="", window_start=-1, window_end=-1)
        recs.append(dict(base, component="clean", kind="clean", site="", clip_score=1.0))
        recs.append(dict(base, component="corrupted", kind="corrupted", site="", clip_score=0.0))
        for (comp, site), v in sites.items():
            text = comp.startswith("text_encoder")
            recs.append(dict(base, component=comp, kind="hidden" if text else "attn", site=site, clip_score=v,
                             layer=int(site[-1]) if text else -1, token_role="subject" if text else ""))
    return pd.DataFrame(recs)


EVERY_PAIR = dict(min_drop=1.0, min_informative=2)  # clean 1, corrupted 0: every pair of table_of is informative


def ranks(x) -> np.ndarray:
    """Average ranks (1-based), by hand: tied values share the mean of their positions."""
    x = np.asarray(x, dtype=float)
    out = np.empty(len(x))
    for i, v in enumerate(x):
        below, equal = (x < v).sum(), (x == v).sum()
        out[i] = below + (equal + 1) / 2
    return out


def spearman_ref(a, b) -> float:
    ra, rb = ranks(a) - ranks(a).mean(), ranks(b) - ranks(b).mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


# 2 prompts x 2 seeds. Pairs sorted: (0,0), (0,1), (1,0), (1,1); halves alternate: A = (0,0), (1,0); B = (0,1), (1,1).
A = [0.1, 0.2, 0.3, 0.4, 0.5]
B = [0.1, 0.3, 0.2, 0.4, 0.5]  # one adjacent swap of A's order: rho = 1 - 6 * 2 / (5 * (25 - 1)) = 0.9
NOISE = {(0, 0): 1.0, (0, 1): -1.0, (1, 0): 1.0, (1, 1): -1.0}  # effect +1 in half A, -1 in half B: mean 0
TEXT = {(0, 0): (0.9, 0.2), (0, 1): (0.2, 0.9), (1, 0): (0.9, 0.2), (1, 1): (0.2, 0.9)}  # two text sites only


def _pairs_table(with_noise: bool = True, with_text: bool = True) -> pd.DataFrame:
    scores = {}
    for p in (0, 1):
        for s in (0, 1):
            vals = A if s == 0 else B
            row = {("unet", f"unet.site{j}"): v for j, v in enumerate(vals)}
            if with_noise:
                row[("unet", "unet.noise")] = NOISE[(p, s)]
            if with_text:
                row.update({("text_encoder", f"text_encoder.layer{k}"): TEXT[(p, s)][k] for k in (0, 1)})
            scores[(p, s)] = row
    return table_of(scores)


def test_the_reference_spearman_is_the_textbook_formula():
    assert spearman_ref(A, B) == pytest.approx(1 - 6 * 2 / (5 * 24)) == pytest.approx(0.9)
    # ties take average ranks: ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4] give 4.5 / sqrt(4.5 * 5)
    assert spearman_ref([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == round(4.5 / np.sqrt(22.5), 4) == 0.9487
    assert spearman([1, 2], [2, 1]) is None  # fewer than 3 values: undefined


def test_split_half_by_hand():
    half = split_half(_pairs_table(with_noise=False, with_text=False), "clip", threshold=0.3)
    assert half["n_pairs"] == 4 and half["halves"] == [2, 2]
    assert half["spearman"] == {"unet": 0.9} and half["n_sites"] == {"unet": 5}
    a, b = np.array(A), np.array(B)
    agree = half["agreement"]["unet"]
    assert agree["mean_abs_diff"] == round(float(np.abs(a - b).mean()), 4) == 0.04
    assert agree["spread"] == round(float(((a + b) / 2).std()), 4)
    assert agree["causal_jaccard"] == 0.5  # at or above 0.3: A {2, 3, 4}, B {1, 3, 4}: 2 shared of 4


def test_bootstrap_intervals_of_two_valued_sites_are_their_two_values():
    """A site whose pairs take two values, half each: a resample of 4 pairs draws only the low (or only the
    high) value with probability 1/16 > 2.5 %, so the 95 % interval is exactly [low, high]."""
    boot = bootstrap_effects(_pairs_table(), "clip", n=2000, seed=0).set_index("site")
    for j, (x, y) in enumerate(zip(A, B)):
        r = boot.loc[f"unet.site{j}"]
        assert r.effect == pytest.approx((x + y) / 2)
        assert (r.lower, r.upper) == (pytest.approx(min(x, y)), pytest.approx(max(x, y)))
        assert r.n_pairs == 4
    noise = boot.loc["unet.noise"]
    assert noise.effect == pytest.approx(0.0) and (noise.lower, noise.upper) == (pytest.approx(-1.0), pytest.approx(1.0))


def test_judge_ranks_only_sites_with_a_real_effect():
    """unet: the noise site's interval [-1, 1] holds 0, so only the 5 real sites are ranked: rho 0.9 as by hand
    (with the noise site, +1 in half A and -1 in half B, the reference rho would be lower). The text encoder
    has 2 sites: no ranking (None), and it does not hold the loop."""
    table = _pairs_table()
    with_noise = spearman_ref(A + [1.0], B + [-1.0])
    assert with_noise < 0.9
    got = judge(table, target=0.9, bootstrap=2000, **EVERY_PAIR)
    assert got["n_pairs"] == got["n_informative"] == 4
    assert got["spearman"] == {"clip": {"text_encoder": None, "unet": 0.9}}
    assert got["n_sites"] == {"clip": {"text_encoder": 2, "unet": 5}}
    assert got["met"] is True
    assert judge(table, target=0.95, bootstrap=2000, **EVERY_PAIR)["met"] is False


def test_judge_reads_measured_rows_not_screen_estimates():
    """Screen rows (estimates) of the reversed order beside the exact rows change nothing."""
    exact = _pairs_table()
    estimates = table_of({(p, s): {("unet", f"unet.site{j}"): v for j, v in enumerate(reversed(A))} for p in (0, 1) for s in (0, 1)},
                         method="atp")
    mixed = pd.concat([exact, estimates], ignore_index=True)
    assert judge(mixed, target=0.9, bootstrap=2000, **EVERY_PAIR)["spearman"]["clip"]["unet"] == 0.9


# ---- the loop: a fake sweep whose tables are known, rounds checked against hand values -----------------------

PER_SEED = {0: [0.2, 0.4, 0.6, 0.8], 1: [0.8, 0.6, 0.4, 0.2], 2: [0.2, 0.4, 0.6, 0.8], 3: [0.1, 0.5, 0.9, 1.3]}


def _seed_table(seeds) -> pd.DataFrame:
    return table_of({(0, s): {("unet", f"unet.site{j}"): v for j, v in enumerate(PER_SEED.get(s, PER_SEED[0]))} for s in seeds})


def test_run_until_stable_adds_seeds_until_the_halves_agree(tmp_path, monkeypatch):
    """Seeds 0, 1: half A = seed 0 (ascending), half B = seed 1 (descending): rho = -1, not stable. Seeds 0-3:
    A = mean(seed 0, seed 2) ascending, B = mean(seed 1, seed 3) = [0.45, 0.55, 0.65, 0.75] ascending: rho = 1."""
    assert spearman_ref(PER_SEED[0], PER_SEED[1]) == pytest.approx(-1.0)
    b = (np.array(PER_SEED[1]) + np.array(PER_SEED[3])) / 2
    assert np.allclose(b, [0.45, 0.55, 0.65, 0.75]) and spearman_ref(PER_SEED[0], b) == pytest.approx(1.0)

    calls = []

    def fake_run_sweep(cfg, out, **kw):
        calls.append(tuple(cfg.seeds))
        return _seed_table(cfg.seeds)

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    cfg = TraceConfig(model="tiny", attribute="colour", seeds=(0, 1), bootstrap=500, **EVERY_PAIR)
    table, history = run_until_stable(cfg, tmp_path / "run", target=0.9, max_seeds=8, round_seeds=2,
                                      model=object(), scorer=object(), stability_metrics=["clip"])
    assert calls == [(0, 1), (0, 1, 2, 3)]
    assert [(h["n_seeds"], h["seeds"], h["n_pairs"]) for h in history] == [(2, [0, 1], 2), (4, [0, 1, 2, 3], 4)]
    assert [h["spearman"] for h in history] == [{"clip": {"unet": -1.0}}, {"clip": {"unet": 1.0}}]
    assert [h["met"] for h in history] == [False, True]
    assert sorted(table.seed.unique()) == [0, 1, 2, 3]
    saved = read_json_format("stability", tmp_path / "run" / "stability.json")
    assert saved["stable"] and saved["finished"] and [h["met"] for h in saved["history"]] == [False, True]


def test_run_until_stable_stops_at_max_seeds_with_the_last_round_cut_short(tmp_path, monkeypatch):
    """Seeds that always disagree (odd seeds descending): never stable; rounds of 2 from 2 seeds up to 5."""
    calls = []

    def fake_run_sweep(cfg, out, **kw):
        calls.append(tuple(cfg.seeds))
        return table_of({(0, s): {("unet", f"unet.site{j}"): v for j, v in enumerate(PER_SEED[s % 2])} for s in cfg.seeds})

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    cfg = TraceConfig(model="tiny", attribute="colour", seeds=(0, 1), bootstrap=200, **EVERY_PAIR)
    _, history = run_until_stable(cfg, tmp_path / "never", target=0.9, max_seeds=5, round_seeds=2,
                                  model=object(), scorer=object(), stability_metrics=["clip"])
    assert calls == [(0, 1), (0, 1, 2, 3), (0, 1, 2, 3, 4)]
    # halves: even seeds (ascending) against odd seeds (descending) in every round: rho = -1
    assert [h["spearman"]["clip"]["unet"] for h in history] == [-1.0, -1.0, -1.0]
    saved = read_json_format("stability", tmp_path / "never" / "stability.json")
    assert not saved["stable"] and saved["finished"]


# ---- only informative pairs count: toward --min-informative and in the rankings -------------------------------

ASCENDING, DESCENDING = [0.2, 0.4, 0.6, 0.8], [0.8, 0.6, 0.4, 0.2]


def _mixed_table(seeds) -> pd.DataFrame:
    """Even seeds informative (clean 1, corrupted 0: a drop of 1 point) ranking the sites ascending; odd seeds
    uninformative (corrupted 0.5: a drop of 0.5 < min_drop 1) ranking them the other way round."""
    t = table_of({(0, s): {("unet", f"unet.site{j}"): v for j, v in enumerate(DESCENDING if s % 2 else ASCENDING)} for s in seeds})
    t.loc[t.seed % 2 == 1, "clip_corrupted"] = 0.5
    return t


def count_pairs(table: pd.DataFrame, min_drop: float) -> tuple[int, int]:
    """(pairs, informative pairs), counted from the clean rows by hand (no gt column here: the CLIP drop alone decides)."""
    seen = {}
    for r in table[table.kind == "clean"].itertuples():
        seen[(r.prompt_index, r.seed, r.noise_index)] = r.clip_clean - r.clip_corrupted >= min_drop
    return len(seen), sum(seen.values())


def test_judge_counts_and_ranks_informative_pairs_only():
    table = _mixed_table(range(4))  # informative: seeds 0, 2 (ascending); with seeds 1, 3 the halves would be reversed
    got = judge(table, target=0.9, bootstrap=500, min_drop=1.0, min_informative=2)
    assert (got["n_pairs"], got["n_informative"]) == count_pairs(table, 1.0) == (4, 2)
    assert got["spearman"] == {"clip": {"unet": 1.0}} and got["met"] is True
    assert judge(table, target=0.9, bootstrap=500, min_drop=1.0, min_informative=3)["met"] is False  # 4 pairs, 2 count
    none = judge(table, target=0.9, bootstrap=500, min_drop=2.0, min_informative=1)
    assert (none["n_informative"], none["spearman"], none["met"]) == (0, {"clip": {}}, False)


def test_run_until_stable_adds_seeds_until_enough_informative_pairs(tmp_path, monkeypatch):
    """min_informative 3, half the pairs uninformative. Seeds 0-1: 1 informative pair. Seeds 0-3: 4 pairs (>= 3) and the
    2 informative ones rank the sites alike (rho 1), yet only 2 count: not stable. Seeds 0-5: 3 informative, rho 1: stable."""
    tables = {}

    def fake_run_sweep(cfg, out, **kw):
        tables[tuple(cfg.seeds)] = _mixed_table(cfg.seeds)
        return tables[tuple(cfg.seeds)]

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    cfg = TraceConfig(model="tiny", attribute="colour", seeds=(0, 1), bootstrap=300, min_drop=1.0, min_informative=3)
    lines = []
    _, history = run_until_stable(cfg, tmp_path / "run", target=0.9, max_seeds=10, round_seeds=2, model=object(), scorer=object(),
                                  report=lines.append)
    assert list(tables) == [(0, 1), (0, 1, 2, 3), (0, 1, 2, 3, 4, 5)]
    counts = [count_pairs(tables[tuple(h["seeds"])], 1.0) for h in history]
    assert [(h["n_pairs"], h["n_informative"]) for h in history] == counts == [(2, 1), (4, 2), (6, 3)]
    assert history[1]["spearman"] == {"clip": {"unet": 1.0}} and [h["met"] for h in history] == [False, False, True]
    assert len(lines) == 3
    for line, (n, k) in zip(lines, counts):
        assert f"n_pairs {n}, n_informative {k} (need 3)" in line and "\n" not in line
    assert lines[-1].endswith("-> stable") and lines[0].endswith("-> add 2 seed(s)")
    saved = read_json_format("stability", tmp_path / "run" / "stability.json")
    assert [(h["n_pairs"], h["n_informative"]) for h in saved["history"]] == counts
    assert (saved["min_informative"], saved["min_drop"], saved["stable"]) == (3, 1.0, True)

"""Screen validation's statistics (experiments.screen_stats) against hand-computed answers."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.screen_stats import recall_at


def test_recall_counts_the_causal_sites_in_the_top_k():
    est = np.array([0.9, 0.8, 0.1, 0.7, 0.0])
    causal = np.array([True, False, True, True, False])
    assert recall_at(est, causal, 2) == pytest.approx(1 / 3)   # top 2: sites 0, 1
    assert recall_at(est, causal, 3) == pytest.approx(2 / 3)   # + site 3
    assert recall_at(est, causal, 5) == pytest.approx(1.0)


def test_ties_at_the_cut_share_the_places_left_whatever_the_site_order():
    # top 2 of [1, .5, .5, .5]: site 0, then 1 place shared by 3 tied sites, 1 of them causal: 1/3 of a hit
    est = np.array([1.0, 0.5, 0.5, 0.5])
    for causal in (np.array([False, True, False, False]), np.array([False, False, False, True])):
        assert recall_at(est, causal, 2) == pytest.approx(1 / 3)
    assert recall_at(est, np.array([True, True, True, False]), 2) == pytest.approx((1 + 2 / 3) / 3)  # 2 causal among the tied


def test_no_causal_site_has_no_recall_and_nan_ranks_last():
    assert recall_at(np.array([1.0, 0.0]), np.array([False, False]), 1) is None
    assert recall_at(np.array([np.nan, 0.1, 0.2]), np.array([True, False, False]), 2) == 0.0


def _table(effects: dict[str, list[float]], method: str, noop: tuple[str, ...] = (), steps: dict | None = None):
    """A trace table: 10 prompts × seed 0, clean 1 / corrupted 0 (CLIP 100 / 0), one row per site and pair."""
    import pandas as pd

    rows = []
    for p in range(10):
        base = dict(prompt_index=p, seed=0, noise_index=0, component="unet", layer=-1, token_role="", window_start=-1,
                    window_end=-1, clip_clean=100.0, clip_corrupted=0.0, gt_clean=1.0, gt_corrupted=0.0, method=method)
        for kind in ("clean", "corrupted"):
            rows.append({**base, "kind": kind, "component": kind, "site": kind, "clip_score": 100.0 * (kind == "clean"),
                         "gt_score": float(kind == "clean"), "skipped_noop": False})
        for site, eff in effects.items():
            e = eff[p % len(eff)]
            rows.append({**base, "kind": "resnet", "site": site, "clip_score": 100.0 * e, "gt_score": e if method == "exact" else np.nan,
                         "effect_clip": e, "skipped_noop": site in noop, "screen_abs_effect": abs(e),
                         "screen_steps": ";".join(str(v) for v in (steps or {}).get(site, []))})
    return pd.DataFrame(rows)


def test_compare_against_hand_computed_ranks_recall_and_structural_zeros():
    from experiments.screen_stats import compare

    sites = [f"unet:s{i}" for i in range(12)]
    exact = {s: [1.0 - 0.08 * i] for i, s in enumerate(sites)}   # s0 1.00, s1 0.92, ... s11 0.12
    exact[sites[11]] = [0.0]                                      # s11: a no-op by construction
    screen = {s: [0.9 - 0.07 * i] for i, s in enumerate(sites)}   # the same order ...
    screen[sites[1]] = [0.5, -0.5]                                 # ... but s1 cancels across pairs: mean 0, ranked last
    screen[sites[11]] = [0.0]
    res = compare(_table(screen, "atp", steps={sites[1]: [0.5, -0.5]}), _table(exact, "exact", noop=(sites[11],)))
    assert res["n_pairs"] == 10 and res["n_sites"] == 12 and res["structural_zeros"] == 1
    # causal by GT (lower bound >= 0.5): s0..s6 (effects 1.00 .. 0.52); k = max(10, 7) = 10
    assert res["n_causal"] == 7 and res["k"] == 10
    # top 10 of the screen: s0, s2..s10; s1 (mean 0) ties with s11 below the cut: 6 of the 7 causal sites
    assert res["recall"] == pytest.approx(6 / 7, abs=1e-3)
    (miss,) = res["misses"]
    assert miss["site"] == sites[1] and miss["reason"] == "cancellation" and miss["per_step"] == [0.5, -0.5]
    assert miss["cancelled_share"] == 1.0 and not res["recommended"]
    # Spearman without the structural zero: s0, s2..s10 in the same order, s1 moved from 2nd to last of 11
    a = np.array([1.0 - 0.08 * i for i in range(11)])
    b = np.array([0.9 - 0.07 * i for i in range(11)])
    b[1] = 0.0
    ra, rb = np.argsort(np.argsort(-a)), np.argsort(np.argsort(-b))
    assert res["spearman"] == pytest.approx(float(np.corrcoef(ra, rb)[0, 1]), abs=1e-3)
    assert res["spearman_ci"][0] <= res["spearman"] <= res["spearman_ci"][1]

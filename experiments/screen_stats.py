"""A gradient screen against exact patching, on the same informative pairs: the statistics screen validation reports.

Usage::

    res = compare(screen_table, exact_table)   # both restricted to one component
    res["recall"], res["recall_ci"], res["spearman"], res["recommended"]

Pure functions of two trace tables (rows of the same prompts, seeds and counterfactuals):

- pairs: the exact table's informative pairs (ground truth flips or CLIP drops ≥ 5 points) that
  the screen also ran;
- site effects: ratio of means over those pairs (:class:`tracing.stats.PairSums`), CLIP for
  both (a screen has no gradient of ground truth); text sites per token role;
- structural zeros: sites exact patching skipped as no-ops by construction in every pair
  (``skipped_noop``: tokens a causal encoder reads before the word, BOS) or whose screen estimate
  is exactly 0 in every pair. They agree by construction, so they are left out of the correlations
  and counted apart;
- the exact causal set C: sites whose ground-truth effect has a 95 % lower bound ≥ 0.5
  (1000 bootstrap resamples, ≥ 8 informative pairs); ``recall_clip`` uses the set by CLIP instead,
  the score the screen differentiates (the two sets differ where CLIP misreads the attribute);
- recall: the share of C in the screen's top k = max(10, |C|). **Tie rule**: sites tied with the
  k-th estimate share the remaining places, each counting (places left) / (sites tied), which is
  the expected recall over a random order of the ties; no ordering of the site table decides;
- intervals: 95 % percentile bootstrap over prompt × seed (:data:`N_BOOT` resamples; a prompt's counterfactuals
  are resampled together, as :class:`tracing.stats.PairSums` groups them), C held fixed;
- misses: each site of C outside the top k, with its exact and screened effect, the screen's
  sum of |contributions|, the mean contribution per denoising step (denoiser sites) and the
  measured reason: ``not causal by CLIP`` when exact patching's own CLIP effect is below 0.5 (the
  screens differentiate CLIP, which does not see the site); ``cancellation`` when
  |Σ contributions| < ½ Σ |contributions| (steps for a
  denoiser site, tokens and pairs for a text site); else ``outranked`` when the screen estimates
  at least half its exact effect (other sites' estimates overshoot above it); else
  ``first-order`` (the linear estimate falls short without cancelling);
- ``recommended``: recall ≥ 0.9 and its interval's lower bound ≥ 0.7.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diffloc.tracing.causal import PAIR_KEYS, informative_rows, pair_signal
from diffloc.tracing.stats import PairSums, bootstrap_effects, restored_rows

KEYS = ["site", "token_role", "window_start", "window_end"]
N_BOOT = 200
THRESHOLD, MIN_INFORMATIVE = 0.5, 8
RECOMMEND_RECALL, RECOMMEND_LOWER = 0.9, 0.7


def recall_at(est: np.ndarray, causal: np.ndarray, k: int) -> float | None:
    """Share of ``causal`` (bool [sites]) in the top ``k`` of ``est``, ties at the cut shared (see module docstring)."""
    if causal.sum() == 0:
        return None
    e = np.nan_to_num(est, nan=-np.inf)
    k = min(k, len(e))
    cut = np.sort(e)[::-1][k - 1]
    above, tied = e > cut, e == cut
    left = k - int(above.sum())
    hits = causal[above].sum() + (left / tied.sum()) * causal[tied].sum()
    return float(hits / causal.sum())


def _corr(a: np.ndarray, b: np.ndarray, rank: bool) -> float | None:
    ok = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    if rank:
        a, b = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(a, b)[0, 1])


def _ci(values: list) -> list | None:
    v = [x for x in values if x is not None and x == x]
    return [round(float(np.percentile(v, 2.5)), 3), round(float(np.percentile(v, 97.5)), 3)] if v else None


def _steps(series: pd.Series) -> list[float] | None:
    parsed = [np.array([float(x) for x in t.split(";")]) for t in series if isinstance(t, str) and t]
    return [round(float(x), 4) for x in np.mean(parsed, axis=0)] if parsed else None


def _miss(site: dict, screen_rows: pd.DataFrame) -> dict:
    steps = _steps(screen_rows.screen_steps) if "screen_steps" in screen_rows else None
    if steps is not None:
        total, absolute = abs(sum(steps)), sum(abs(x) for x in steps)
    else:  # text site: its tokens and pairs
        total, absolute = abs(float(screen_rows.effect_clip.sum())), float(screen_rows.screen_abs_effect.abs().sum())
    if site["exact_clip"] < THRESHOLD:
        reason = "not causal by CLIP"  # exact patching's CLIP effect is below the rule: the screened score cannot see it
    elif absolute > 0 and total < 0.5 * absolute:
        reason = "cancellation"
    elif site["screen_clip"] >= 0.5 * site["exact_clip"]:
        reason = "outranked"      # estimated near its effect; other sites' estimates overshoot above it
    else:
        reason = "first-order"    # the linear estimate falls short without cancelling
    return {**site, "per_step": steps, "reason": reason,
            "cancelled_share": round(1 - total / absolute, 3) if absolute > 0 else None}


def _causal(exact: pd.DataFrame, sites: pd.DataFrame, metric: str, n_informative: int) -> np.ndarray:
    """[sites]: exact patching's causal set by ``metric`` (lower bound ≥ 0.5 over the informative pairs; none below 8)."""
    if n_informative < MIN_INFORMATIVE:
        return np.zeros(len(sites), dtype=bool)
    boot = bootstrap_effects(informative_rows(exact, "clip"), metric, n=1000, seed=0, keys=KEYS)
    hit = sites[KEYS].merge(boot.loc[boot.lower >= THRESHOLD, KEYS].assign(c=True), on=KEYS, how="left").c
    return hit.fillna(False).to_numpy(dtype=bool)


def compare(screen: pd.DataFrame, exact: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The screen against exact patching on their common informative pairs (see the module docstring)."""
    inf = pair_signal(exact, "clip").loc[lambda p: p.informative, PAIR_KEYS]
    inf = inf.merge(screen[PAIR_KEYS].drop_duplicates())
    ex, sc = exact.merge(inf), screen.merge(inf)
    out: dict = {"n_pairs": int(len(inf))}
    if len(inf) < 2:
        return {**out, "recommended": False}
    pe, ps = PairSums(ex, "clip", KEYS), PairSums(sc, "clip", KEYS)
    sites = pe.sites.reset_index(names="i").merge(ps.sites.reset_index(names="j"), on=KEYS)
    ie, js = sites.i.to_numpy(), sites.j.to_numpy()
    if not pe.pairs.equals(ps.pairs):
        raise ValueError("screen and exact tables hold different prompt x seed pairs")
    n_clusters = len(pe.pairs)  # PairSums' pairs: prompt x seed (a prompt's counterfactuals resample together)
    ones = np.ones(n_clusters)
    flags = restored_rows(sc).assign(zero=lambda t: t.effect_clip.fillna(0) == 0).groupby(KEYS, dropna=False).zero.all()
    if "skipped_noop" in ex:
        flags = flags.to_frame().join(restored_rows(ex).groupby(KEYS, dropna=False).skipped_noop.all(), how="left")
        flags = flags.zero | flags.skipped_noop.fillna(False).astype(bool)
    structural = sites[KEYS].merge(flags.rename("s").reset_index(), on=KEYS, how="left").s.fillna(False).to_numpy(dtype=bool)
    keys = [tuple(r) for r in sites[KEYS].itertuples(index=False)]
    causal = _causal(ex, sites, "gt" if "gt_score" in ex else "clip", len(inf))
    causal_clip = _causal(ex, sites, "clip", len(inf))
    k = max(10, int(causal.sum()))
    k_clip = max(10, int(causal_clip.sum()))

    def stats(w: np.ndarray) -> tuple:
        e, s = pe.effect(w)[ie], ps.effect(w)[js]
        m = ~structural
        return _corr(s[m], e[m], True), _corr(s[m], e[m], False), recall_at(s, causal, k), recall_at(s, causal_clip, k_clip)

    rho, r, rec, rec_clip = stats(ones)
    rng = np.random.default_rng(seed)
    draws = [stats(np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters).astype(float)) for _ in range(n_boot)]
    est = ps.effect(ones)[js]
    top = set(np.argsort(-np.nan_to_num(est, nan=-np.inf), kind="stable")[:k])
    misses = []
    for i in np.flatnonzero(causal):
        if i in top:
            continue
        rows = restored_rows(sc).merge(sites[KEYS].iloc[[i]], on=KEYS)
        misses.append(_miss({"site": keys[i][0], "token_role": keys[i][1], "exact_clip": round(float(pe.effect(ones)[ie][i]), 3),
                             "screen_clip": round(float(est[i]), 3)}, rows))
    rec_ci = _ci([d[2] for d in draws])
    out.update({"n_prompt_seeds": int(n_clusters), "n_sites": int(len(keys)), "structural_zeros": int(structural.sum()), "n_causal": int(causal.sum()), "k": k,
                "spearman": None if rho is None else round(rho, 3), "spearman_ci": _ci([d[0] for d in draws]),
                "pearson": None if r is None else round(r, 3), "pearson_ci": _ci([d[1] for d in draws]),
                "recall": None if rec is None else round(rec, 3), "recall_ci": rec_ci, "n_causal_clip": int(causal_clip.sum()),
                "recall_clip": None if rec_clip is None else round(rec_clip, 3), "recall_clip_ci": _ci([d[3] for d in draws]),
                "n_bootstrap": n_boot, "misses": misses,
                "recommended": bool(rec is not None and rec >= RECOMMEND_RECALL and rec_ci is not None and rec_ci[0] >= RECOMMEND_LOWER)})
    return out

"""Uncertainty of site effects: bootstrap intervals and split-half rank stability. Pure functions.

Usage::

    boot = bootstrap_effects(table, "clip", n=1000, seed=0)   # site keys, effect, lower, upper, n_pairs
    real = real_effects(boot)                                  # sites whose 95% interval excludes 0
    split_half(table, "clip", sites=real)                      # {'n_pairs': 8, 'spearman': {'text_encoder': 0.93}, ...}

The resampling unit is a *prompt × seed pair*: all noise samples and all rows of a pair go
together, because they share the pair's clean and corrupted images. A resample draws as many
pairs as the table holds, with replacement, and recomputes each site's ratio-of-means effect
``(mean restored − mean corrupted) / (mean clean − mean corrupted)`` over the drawn rows (a
pair drawn twice counts twice). The interval is the 2.5th and 97.5th percentile over the
resamples. It is vectorised: per-pair sums and counts of each site are computed once, and a
resample is a vector of pair multiplicities, so all resamples are a few matrix products.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .rows import REFERENCE_KINDS, TEXT_PREFIX

#: the keys of one site effect (:func:`tracing.causal.site_effects`): UNet sites by window, text sites by token role
SITE_KEYS = ["component", "kind", "site", "layer", "token_role", "window_start", "window_end"]
PAIR = ["prompt_index", "seed"]
LEVEL = 0.95
_EPS = 1e-9  # |clean − corrupted| at or below this: no effect defined (as in site_effects)


def restored_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The restored rows of a trace table (no clean / corrupted references); denoiser rows get token_role ''."""
    rows = table[~table.kind.isin(REFERENCE_KINDS)].copy()
    rows.loc[~rows.component.astype(str).str.startswith(TEXT_PREFIX), "token_role"] = ""
    return rows


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.abs(den) > _EPS, num / np.where(np.abs(den) > _EPS, den, 1.0), np.nan)


class PairSums:
    """Per prompt × seed pair and per site: sums and counts of score, clean and corrupted.

    ``sites`` is one row per site (its keys, in the order of :func:`site_effects`); ``pairs``
    one row per pair, sorted. ``effect(weights)`` gives every site's ratio-of-means effect for
    pair multiplicities ``weights`` [..., n_pairs].
    """

    def __init__(self, table: pd.DataFrame, metric: str, keys: Sequence[str] = SITE_KEYS):
        rows = restored_rows(table)
        sg = rows.groupby(list(keys), sort=False, dropna=False)
        site = sg.ngroup().to_numpy()
        first = np.unique(site, return_index=True)[1]  # first row of each site, in group order
        self.sites = rows[list(keys)].iloc[first].reset_index(drop=True)
        pg = rows.groupby(PAIR, sort=True)
        pair = pg.ngroup().to_numpy()
        self.pairs = pg.size().index.to_frame(index=False)  # in ngroup order
        n_p, n_s = len(self.pairs), len(self.sites)
        idx = pair * n_s + site
        self.sums, self.counts = [], []
        for col in (f"{metric}_score", f"{metric}_clean", f"{metric}_corrupted"):
            v = rows[col].to_numpy(dtype=float)
            ok = ~np.isnan(v)
            self.sums.append(np.bincount(idx[ok], weights=v[ok], minlength=n_p * n_s).reshape(n_p, n_s))
            self.counts.append(np.bincount(idx[ok], minlength=n_p * n_s).reshape(n_p, n_s).astype(float))
        # no missing values (the usual case): the three means share one count
        self.shared = all(np.array_equal(self.counts[0], c) for c in self.counts[1:])
        self.present = self.counts[0] > 0  # [pairs, sites]: the pair holds scored rows of the site

    def effect(self, weights: np.ndarray) -> np.ndarray:
        """Effects [..., n_sites] for pair multiplicities ``weights`` [..., n_pairs]."""
        w = np.asarray(weights, dtype=float)
        if self.shared:
            s, k, c = self.sums
            with np.errstate(invalid="ignore", divide="ignore"):
                n = w @ self.counts[0]
                return _ratio((w @ (s - c)) / n, (w @ (k - c)) / n)
        m = []
        for s, n in zip(self.sums, self.counts):
            with np.errstate(invalid="ignore", divide="ignore"):
                m.append((w @ s) / (w @ n))
        return _ratio(m[0] - m[2], m[1] - m[2])


def bootstrap_effects(table: pd.DataFrame, metric: str = "clip", n: int = 1000, seed: int = 0,
                      keys: Sequence[str] = SITE_KEYS) -> pd.DataFrame:
    """Per site: ``effect`` (all pairs), the 95% percentile interval ``lower`` / ``upper`` over
    ``n`` resamples of prompt × seed pairs (``numpy.random.default_rng(seed)``), and ``n_pairs``
    (pairs holding the site). A site in one pair only has the degenerate interval [effect, effect].
    ``keys`` defaults to :data:`SITE_KEYS`; add ``"token"`` for one interval per token position.
    """
    ps = PairSums(table, metric, keys)
    out = ps.sites.copy()
    n_p = len(ps.pairs)
    out["effect"] = ps.effect(np.ones(n_p)) if n_p else np.full(len(out), np.nan)
    out["lower"], out["upper"] = out.effect, out.effect
    out["n_pairs"] = ps.present.sum(axis=0).astype(int)
    if n_p == 0 or out.empty:
        return out
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_p, size=(n, n_p))
    weights = np.bincount((draws + n_p * np.arange(n)[:, None]).ravel(), minlength=n * n_p).reshape(n, n_p)
    boot = ps.effect(weights)  # [n, sites]; NaN where a resample drew no pair of the site
    q = 100 * (1 - LEVEL) / 2
    lower, upper, spread = (np.full(boot.shape[1], np.nan) for _ in range(3))
    ok = ~np.isnan(boot).all(axis=0)  # sites with a defined effect in some resample
    part = boot[:, ok]
    pct = np.nanpercentile if np.isnan(part).any() else np.percentile
    lower[ok], upper[ok] = pct(part, [q, 100 - q], axis=0)
    spread[ok] = np.nanmax(part, axis=0) - np.nanmin(part, axis=0)
    # every resample gives the same effect (one pair, or identical pairs): the interval is the point, not rounding noise
    flat = spread <= 1e-9 * np.maximum(1.0, np.abs(out.effect.to_numpy()))
    out["lower"] = np.where(flat, out.effect, lower)
    out["upper"] = np.where(flat, out.effect, upper)
    return out


def real_effects(boot: pd.DataFrame) -> pd.DataFrame:
    """The sites of a :func:`bootstrap_effects` frame whose interval excludes 0."""
    return boot[(boot.lower > 0) | (boot.upper < 0)]


def spearman(a, b) -> float | None:
    """Spearman rank correlation (average ranks) of two equal-length sequences; None when undefined."""
    a, b = pd.Series(np.asarray(a, dtype=float)), pd.Series(np.asarray(b, dtype=float))
    ok = a.notna().to_numpy() & b.notna().to_numpy()
    if ok.sum() < 3:
        return None
    rho = a[ok].rank().corr(b[ok].rank())
    return None if pd.isna(rho) else round(float(rho), 4)


def split_half(table: pd.DataFrame, metric: str = "clip", sites: pd.DataFrame | None = None, threshold: float = 0.5) -> dict:
    """Split-half stability of site effects, per component: Spearman and absolute agreement.

    The prompt × seed pairs, sorted, are split alternately (1st, 3rd, … against 2nd, 4th, …),
    so each half holds every prompt when each prompt has two seeds or more. Each half's
    ratio-of-means effects are ranked against the other's over the sites of ``sites`` (a frame
    with the site keys, e.g. :func:`real_effects`) or over every site. Returns ``n_pairs`` (pairs
    used, both halves), ``halves`` (pairs per half), ``spearman`` {component: rho, None with
    fewer than 3 sites or 2 pairs}, ``n_sites`` {component: sites ranked} and ``agreement``
    {component: {"mean_abs_diff", "spread", "causal_jaccard"}}: the halves' mean |effect
    difference| over the same sites, the sites' own spread (std of the two halves' mean effect),
    and the Jaccard overlap of the sites each half puts at or above ``threshold`` (None when
    neither half has one). A rank correlation is the wrong reading among tied effects: where
    many sites saturate at ≈ 1 their order is noise, yet the halves agree to ``mean_abs_diff``
    and on which sites are causal.
    """
    ps = PairSums(table, metric)
    n_p = len(ps.pairs)
    keep = np.ones(len(ps.sites), dtype=bool)
    if sites is not None:
        hit = ps.sites.merge(sites[SITE_KEYS].drop_duplicates(), on=SITE_KEYS, how="left", indicator=True)
        keep = (hit["_merge"] == "both").to_numpy()
    wa = (np.arange(n_p) % 2 == 0).astype(float)
    a, b = (ps.effect(wa), ps.effect(1 - wa)) if n_p >= 2 else (np.full(len(keep), np.nan),) * 2
    out: dict = {"n_pairs": n_p, "halves": [int(wa.sum()), int(n_p - wa.sum())], "spearman": {}, "n_sites": {}}
    comps = ps.sites.component.to_numpy()
    for comp in sorted(set(comps)):
        m = keep & (comps == comp) & ~np.isnan(a) & ~np.isnan(b)
        out["spearman"][comp] = spearman(a[m], b[m])
        out["n_sites"][comp] = int(m.sum())
        out.setdefault("agreement", {})[comp] = _agreement(a[m], b[m], threshold)
    return out


def _agreement(a: np.ndarray, b: np.ndarray, threshold: float) -> dict:
    """Absolute split-half agreement of effects ``a``, ``b`` of the same sites (see :func:`split_half`)."""
    if len(a) == 0:
        return {"mean_abs_diff": None, "spread": None, "causal_jaccard": None}
    ca, cb = a >= threshold, b >= threshold
    union = int((ca | cb).sum())
    return {"mean_abs_diff": round(float(np.abs(a - b).mean()), 4), "spread": round(float(((a + b) / 2).std()), 4),
            "causal_jaccard": round(float((ca & cb).sum()) / union, 4) if union else None}

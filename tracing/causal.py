"""Summarise a trace table into site effects, and name the causal states editors read.

Usage::

    effects = site_effects(table, metric="clip")           # one row per site (× token role / window)
    write_causal_sites(table, "results/colour/causal_sites.json", threshold=0.5, bootstrap=1000, bootstrap_seed=0)
    best = read_causal_sites("results/colour", component="text_encoder", kind="attn")

The aggregate effect of a group of rows is a ratio of means,
``(mean restored − mean corrupted) / (mean clean − mean corrupted)``, which is stabler than the
mean of per-row ratios when a row's clean and corrupted scores are close. Its 95% interval is a
bootstrap over prompt × seed pairs (:mod:`tracing.stats`). A site is *causal* when the interval's
lower bound reaches the threshold: restoring it brings the score most of the way back (the
binarised-CLIP-score idea of the seed paper), and not by the luck of a few prompts and seeds.

Only *informative* pairs carry signal: a clean/corrupted pair (prompt × seed × corruption
sample) is informative when the corruption flips the ground truth (``gt`` clean 1, corrupted
below it) or lowers the scorer by at least ``min_drop`` points. Effects, intervals and causal
calls use the informative pairs only, and a site is called causal only when at least
``min_informative`` of them carry it; otherwise its entry goes to ``not_enough_signal`` with
its counts. Every entry carries ``n_pairs`` (all pairs) and ``n_informative``.

``causal_sites.json`` (version 3) holds, per metric, the causal entries with their intervals,
the split-half Spearman of the sites with a real effect (interval excludes 0) per component,
and how many prompt × seed pairs and resamples it used. Version 2 files (no intervals, rule
``effect >= threshold``) still read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DifflocInputError
from .io import read_json_format, write_json_format
from .rows import is_text
from .stats import LEVEL, SITE_KEYS, bootstrap_effects, real_effects, restored_rows, split_half

RULE = ("effect = (mean restored - mean corrupted) / (mean clean - mean corrupted) over the informative pairs "
        "(corruption flips gt, or lowers the scorer by >= min_drop points); "
        "interval = 95% percentile bootstrap over prompt x seed pairs (each pair's corruption samples and rows resampled together); "
        "causal if the interval's lower bound >= threshold and n_informative >= min_informative")
PAIR_KEYS = ["prompt_index", "seed", "noise_index"]  # one clean/corrupted pair


def pair_keys(table: pd.DataFrame) -> list[str]:
    """The columns that name one clean/corrupted pair: prompt × seed × corruption sample, and, in a table whose
    references carry an altered value (LocoGen's swap: the original prompt against each altered one), that value."""
    return PAIR_KEYS + ["alt_value"] if "alt_value" in table.columns and table.alt_value.notna().any() else PAIR_KEYS


def pair_signal(table: pd.DataFrame, scorer: str = "clip", min_drop: float = 5.0) -> pd.DataFrame:
    """One row per clean/corrupted pair (:func:`pair_keys`): the scorer's clean and corrupted scores, its drop, whether
    ground truth flipped (NaN without a gt metric), and ``informative``.

    A corruption pair flips when ground truth reads the clean image above the corrupted one and informs when it
    flips or the scorer drops by ``min_drop``. A swap pair (altered value set) informs when its two references
    differ, either way: the altered prompt's image shows another value than the original's."""
    keys = pair_keys(table)
    refs = table[table.kind == "clean"] if "kind" in table.columns else table
    cols = [c for c in (f"{scorer}_clean", f"{scorer}_corrupted", "gt_clean", "gt_corrupted") if c in table.columns]
    pairs = refs.groupby(keys, sort=True)[cols].first().reset_index()
    drop = pairs[f"{scorer}_clean"] - pairs[f"{scorer}_corrupted"]
    swap = len(keys) > len(PAIR_KEYS)
    pairs["drop"] = drop
    has_gt = "gt_clean" in pairs
    flip = (pairs.gt_clean != pairs.gt_corrupted if swap else pairs.gt_clean > pairs.gt_corrupted) if has_gt \
        else pd.Series(False, index=pairs.index)
    pairs["gt_flip"] = flip if has_gt else np.nan
    pairs["informative"] = flip.fillna(False).astype(bool) | ((drop.abs() if swap else drop) >= min_drop)
    return pairs


def informative_rows(table: pd.DataFrame, scorer: str = "clip", min_drop: float = 5.0) -> pd.DataFrame:
    """The rows of the informative pairs only."""
    pairs, keys = pair_signal(table, scorer, min_drop), pair_keys(table)
    keep = pairs.loc[pairs.informative, keys]
    return table.merge(keep, on=keys, how="inner")


def site_effects(table: pd.DataFrame, metric: str = "clip") -> pd.DataFrame:
    """Aggregate effect per (component, kind, site, layer, token_role, window)."""
    g = restored_rows(table).groupby(SITE_KEYS, sort=False, dropna=False)
    out = g.agg(score=(f"{metric}_score", "mean"), clean=(f"{metric}_clean", "mean"), corrupted=(f"{metric}_corrupted", "mean"), n=(f"{metric}_score", "size")).reset_index()
    denom = out.clean - out.corrupted
    out["effect"] = np.where(denom.abs() > 1e-9, (out.score - out.corrupted) / denom.where(denom.abs() > 1e-9, 1.0), np.nan)
    return out


def stability(table: pd.DataFrame, metric: str = "clip") -> dict:
    """Spearman rank correlation of site effects between two disjoint halves of the seeds.

    Per component: denoiser sites, and text-encoder (site, token role) pairs. None where fewer
    than two seeds or fewer than three sites.
    """
    seeds = sorted(table.seed.unique())
    if len(seeds) < 2:
        return {}
    half = len(seeds) // 2
    a = site_effects(table[table.seed.isin(seeds[:half])], metric)
    b = site_effects(table[table.seed.isin(seeds[half:])], metric)
    keys = ["component", "site", "token_role", "window_start", "window_end"]
    both = a.merge(b, on=keys, suffixes=("_a", "_b"))
    out = {"seeds_a": [int(s) for s in seeds[:half]], "seeds_b": [int(s) for s in seeds[half:]]}
    for comp, g in both.groupby("component"):
        g = g.dropna(subset=["effect_a", "effect_b"])
        out[comp] = round(float(g.effect_a.rank().corr(g.effect_b.rank())), 4) if len(g) >= 3 else None
    return out


def metric_names(table: pd.DataFrame) -> list[str]:
    """Metrics a table holds scores for (``<name>_score`` columns with any value), clip first."""
    names = [c[: -len("_score")] for c in table.columns if c.endswith("_score") and table[c].notna().any()]
    return sorted(names, key=lambda n: (n != "clip", n != "gt", n))


def uncertainty(table: pd.DataFrame, metric: str = "clip", bootstrap: int = 1000, bootstrap_seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Bootstrap intervals of every site (:func:`tracing.stats.bootstrap_effects`) and the split-half
    Spearman of the sites with a real effect (:func:`tracing.stats.split_half`)."""
    boot = bootstrap_effects(table, metric, n=bootstrap, seed=bootstrap_seed)
    real = real_effects(boot)
    half = split_half(table, metric, sites=real)
    half["sites"] = "interval excludes 0"
    half["n_real_effect"] = {str(c): int(k) for c, k in real.component.value_counts().sort_index().items()}
    return boot, half


def _entry(r, n_pairs: int, n_informative: int) -> dict:
    e = {"site": r.site, "component": r.component, "kind": r.kind, "effect": round(float(r.effect), 4),
         "interval": [round(float(r.lower), 4), round(float(r.upper), 4)], "n_pairs": n_pairs, "n_informative": n_informative}
    if is_text(r.component):
        e.update(layer=int(r.layer), token_role=r.token_role)
    if r.window_start >= 0:
        e["window"] = [int(r.window_start), int(r.window_end)]
    return e


def write_causal_sites(table: pd.DataFrame, path: str | Path, threshold: float = 0.5, bootstrap: int = 1000, bootstrap_seed: int = 0,
                       min_drop: float = 5.0, min_informative: int = 8, scorer: str | None = None) -> dict:
    """Write ``causal_sites.json``: per metric, the sites whose interval's lower bound reaches ``threshold``
    on the informative pairs (at least ``min_informative`` of them; module docstring)."""
    metrics = metric_names(table)
    scorer = scorer or metrics[0]
    pairs = pair_signal(table, scorer, min_drop)
    n_pairs, n_inf = int(len(pairs)), int(pairs.informative.sum())
    used = informative_rows(table, scorer, min_drop)
    result: dict = {"threshold": threshold, "rule": RULE, "metrics": metrics,
                    "clean": {m: float(table[f"{m}_clean"].mean()) for m in metrics},
                    "corrupted": {m: float(table[f"{m}_corrupted"].mean()) for m in metrics},
                    "bootstrap": {"n": int(bootstrap), "seed": int(bootstrap_seed), "unit": "prompt x seed pair",
                                  "level": LEVEL, "interval": "percentile"},
                    "n_pairs": n_pairs, "n_informative": n_inf, "min_drop": float(min_drop), "min_informative": int(min_informative),
                    "informative_by": f"gt flips, or {scorer} drops by >= {min_drop:g} points",
                    "n_gt_flips": int(pairs.gt_flip.fillna(False).astype(bool).sum()) if "gt_clean" in pairs else None}
    for metric in metrics:
        entry: dict = {"causal": [], "not_enough_signal": [], "n_sites_scored": 0, "pairs_used": "informative"}
        rows = used if n_inf else table  # no informative pair: agreement is still reported, over all pairs, and said
        boot, half = uncertainty(rows, metric, bootstrap, bootstrap_seed)
        entry.update({"split_half": half, "stability_spearman": stability(rows, metric)})
        if not n_inf:
            entry["pairs_used"] = "all (no informative pair; no site is called causal)"
        else:
            boot = boot.sort_values("effect", ascending=False, kind="stable")
            passed = [_entry(r, n_pairs, n_inf) for r in boot.itertuples() if r.lower >= threshold]
            key = "causal" if n_inf >= min_informative else "not_enough_signal"
            entry.update({key: passed, "n_sites_scored": int(len(boot))})
        if n_inf < min_informative:
            entry["note"] = f"not enough signal: {n_inf} informative of {n_pairs} pairs (< {min_informative}); no site is called causal"
        result[metric] = entry
    write_json_format("causal_sites", result, path)
    return result


def read_causal_sites(trace_dir: str | Path, component: str = "text_encoder", kind: str | None = None, metric: str = "clip") -> list[dict]:
    """Causal entries of one component (and kind), strongest first."""
    path = Path(trace_dir) / "causal_sites.json"
    if not path.exists():
        raise DifflocInputError(f"no causal_sites.json in {trace_dir}; run `diffloc trace ... --out {trace_dir}` first")
    data = read_json_format("causal_sites", path)
    if metric not in data:
        raise DifflocInputError(f"metric {metric!r} not in {path}; it has {', '.join(data['metrics'])}")
    return [{"interval": None, **e} for e in data[metric]["causal"]  # version 2: no interval
            if e["component"] == component and (kind is None or e["kind"] == kind)]

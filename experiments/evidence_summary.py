"""Findings and screen validation from the evidence runs, counted in informative pairs and with intervals.

Usage::

    python -m experiments.evidence_summary --out results/reference/evidence_v1

Reads ``OUT/<attribute>_<protocol>`` (:mod:`experiments.evidence`, counterfactual replacement on fresh
prompts) and, for the Gaussian side, ``results/reference/findings_v4/<attribute>_<protocol>`` (3σ
noise on the shipped prompts). Writes ``OUT/summary.json``:

- ``findings[attribute][protocol][corruption]``: pairs, informative pairs (ground truth flips or
  the CLIP score drops ≥ 5 points), ground-truth flips, the strongest sites by ground truth with
  95 % bootstrap intervals over the informative pairs, the causal set (lower bound ≥ 0.5, named
  only with ≥ 8 informative pairs), the top-3 share of the positive effect, and split-half
  agreement (causal-set Jaccard, mean |Δ effect| beside the sites' spread, Spearman);
- ``screens[attribute][component][screen]``: a screen (atp, ig with 8 points, ig32) against exact
  patching on the same informative pairs (:mod:`experiments.screen_stats`): Spearman and Pearson
  of the site effects without the structural zeros (reported apart), recall of the exact causal
  set (by ground truth) in the screen's top max(10, |C|), each with a 95 % bootstrap interval
  over pairs; misses with their measured reason and per-step contributions; ``recommended`` when
  recall ≥ 0.9 and its interval's lower bound ≥ 0.7.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from diffloc.tracing.causal import PAIR_KEYS, informative_rows, pair_signal
from diffloc.tracing.io import read_trace, write_plain_json
from diffloc.tracing.stats import bootstrap_effects, split_half
from experiments.screen_stats import compare

ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count")
EXACT = ("unet", "text", "text_suffix", "swap")
SCREENS = ("atp", "ig", "ig32")
GAUSSIAN = Path("results/reference/findings_v4")
THRESHOLD, MIN_INFORMATIVE = 0.5, 8


def _label(r) -> str:
    site = r.site.split(":", 1)[1]
    role = f" @{r.token_role}" if isinstance(r.token_role, str) and r.token_role else ""
    window = f" (window {int(r.window_start)}-{int(r.window_end)})" if r.window_start == r.window_start and r.window_start >= 0 else ""
    return f"{site}{role}{window}"


def _pairs(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per pair with ``informative`` and ``gt_flip``, the informative pairs' rows). A swap table (``alt_value``
    set) pairs each prompt × seed with its altered value, informative when the two references differ by ground truth
    (:func:`experiments.dit_swaps.summarise_run`'s rule); any other table uses the trace's rule (:func:`pair_signal`)."""
    if "alt_value" in table and table.alt_value.notna().any():
        keys = [*PAIR_KEYS, "alt_value"]
        pairs = table[table.kind == "clean"].groupby(keys)[["gt_clean", "gt_corrupted"]].first().reset_index()
        pairs["gt_flip"] = pairs["informative"] = pairs.gt_clean != pairs.gt_corrupted
        return pairs, table.merge(pairs.loc[pairs.informative, keys], on=keys, how="inner")
    return pair_signal(table, "clip"), informative_rows(table, "clip")


#: text-encoder states every text summary names: (label, kind, layer, token role)
STATES = (("L0 attn @last_subject", "attn", 0, "last_subject"), ("L0 hidden @last_subject", "hidden", 0, "last_subject"),
          ("L0 hidden @after", "hidden", 0, "after"), ("L0 hidden @eos", "hidden", 0, "eos"))


def _states(boot: pd.DataFrame) -> dict:
    out = {}
    for label, kind, layer, role in STATES:
        r = boot[(boot.kind == kind) & (boot.layer == layer) & (boot.token_role == role)]
        if len(r):
            out[label] = {"effect": round(float(r.effect.iloc[0]), 3), "ci": [round(float(r.lower.iloc[0]), 3), round(float(r.upper.iloc[0]), 3)]}
    return out


def protocol_summary(table: pd.DataFrame, metric: str = "gt") -> dict:
    """Counts, strongest sites, causal set, top-3 share and split-half agreement over the informative pairs."""
    pairs, used = _pairs(table)
    n_inf = int(pairs.informative.sum())
    out = {"n_pairs": int(len(pairs)), "n_informative": n_inf, "n_gt_flips": int(pairs.gt_flip.fillna(False).sum())}
    if n_inf == 0:
        return {**out, "top": [], "causal": [], "enough": False}
    boot = bootstrap_effects(used, metric, n=1000, seed=0).sort_values("effect", ascending=False, kind="stable")
    pos = boot.effect.clip(lower=0)
    enough = n_inf >= MIN_INFORMATIVE
    half = split_half(used, metric, threshold=THRESHOLD)
    comp = next(iter(half["agreement"]), None)
    return {**out, "enough": enough,
            "top": [{"site": _label(r), "effect": round(float(r.effect), 3), "ci": [round(float(r.lower), 3), round(float(r.upper), 3)]}
                    for r in boot.head(5).itertuples()],
            "causal": [_label(r) for r in boot.itertuples() if r.lower >= THRESHOLD] if enough else [],
            "top3_share": round(float(pos.head(3).sum() / pos.sum()), 3) if pos.sum() > 0 else None,
            "n_sites": int(len(boot)), "states": _states(boot),
            "split_half": {"halves": half["halves"], "spearman": half["spearman"].get(comp), **(half["agreement"].get(comp) or {})}}


def findings(root: Path, gaussian: Path = GAUSSIAN) -> dict:
    out: dict = {}
    for attr in ATTRIBUTES:
        for proto in EXACT:
            for corruption, folder in (("replace", root), ("gaussian", gaussian)):
                path = folder / f"{attr}_{proto}" / "trace.parquet"
                if path.exists():
                    out.setdefault(attr, {}).setdefault(proto, {})[corruption] = protocol_summary(read_trace(path))
    return out


def screens(root: Path) -> dict:
    out: dict = {}
    for attr in ATTRIBUTES:
        exact = [root / f"{attr}_{p}" / "trace.parquet" for p in ("unet", "text")]
        if not all(p.exists() for p in exact):
            continue
        ex = pd.concat([read_trace(p) for p in exact], ignore_index=True)
        for name in SCREENS:
            path = root / f"{attr}_{name}" / "trace.parquet"
            if not path.exists():
                continue
            sc = read_trace(path)
            for component in ("unet", "text_encoder"):
                res = compare(sc[sc.component.isin([component, "reference"]) | sc.kind.isin(["clean", "corrupted"])],
                              ex[(ex.component == component) | ex.kind.isin(["clean", "corrupted"])])
                out.setdefault(attr, {}).setdefault(component, {})[name] = res
    return out


def summarise(root: Path) -> dict:
    result = {"findings": findings(root), "screens": screens(root)}
    write_plain_json(result, root / "summary.json")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/reference/evidence_v1"))
    p.add_argument("--figures", action="store_true", help="also draw every run's figures by ground truth (figures/)")
    a = p.parse_args(argv)
    res = summarise(a.out)
    if a.figures:
        from diffloc.plots import plot_run

        for run in sorted(a.out.glob("*_*/trace.parquet")):
            plot_run(run.parent, metric="gt" if "gt_clean" in read_trace(run).columns else "clip")  # screens: no GT
    np.set_printoptions(precision=3)
    for attr, protos in res["findings"].items():
        for proto, by in protos.items():
            for corr, s in by.items():
                print(f"{attr:9s} {proto:11s} {corr:8s} {s['n_informative']:3d}/{s['n_pairs']:3d} causal {len(s['causal']):2d} "
                      f"top {s['top'][0] if s['top'] else '-'}")
    for attr, comps in res["screens"].items():
        for comp, by in comps.items():
            for name, s in by.items():
                print(attr, comp, name, {k: s.get(k) for k in ("n_pairs", "spearman", "spearman_ci", "recall", "recall_ci", "recommended")})


if __name__ == "__main__":
    main()

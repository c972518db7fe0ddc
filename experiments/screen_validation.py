"""Gradient screens (atp, ig) against exact patching on the toy world, per attribute and component.

Usage::

    python -m experiments.screen_validation --exact results/findings_v4 --out results/reference/screen_validation
    python -m experiments.screen_validation --summarise-only --out results/reference/screen_validation

For each attribute, the screens run on the prompts and seeds of the exact text-encoder sweep
``EXACT/<attribute>_text`` (component all: one screen covers text and UNet sites), and are
compared with the exact sweeps ``EXACT/<attribute>_text`` and ``EXACT/<attribute>_unet`` on the
prompt × seed pairs both have, site by site (text: site × token role; UNet: site):

- ``spearman``: rank correlation of the screen's and exact patching's mean effects (CLIP);
- ``top5_recall``: the share of exact patching's 5 strongest sites among the screen's 5;
- ``misses``: exact top-5 sites the screen ranks outside its top 10, each with a reason:
  ``cancellation`` when the per-token / per-step contributions cancel (|Σ| < ½ Σ|·|; a UNet
  site restored at every step also overrides its own downstream effect, which a sum of
  first-order terms counts again), ``saturation`` when ig's estimate is at least twice atp's
  (the gradient at the corrupted run understates a change that the path integral sees), else
  ``nonlinear``.

A second table keeps only the pairs whose corruption lowers the CLIP score by ``--min-drop``
points (default 5): elsewhere an effect divides by a near-zero clean − corrupted.

Writes ``OUT/<attribute>_<method>/`` (the screen sweeps), ``OUT/summary.json`` and ``OUT/summary.md``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from diffloc.tracing.causal import site_effects
from diffloc.tracing.io import atomic_write_bytes, read_trace, write_plain_json
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig
from experiments.findings import PROTOCOLS

ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count")
METHODS = ("atp", "ig")
KEYS = ["site", "token_role", "window_start", "window_end"]


def run_screens(out: Path, attribute: str, model=None, seeds: tuple[int, ...] | None = None,
                methods: tuple[str, ...] = METHODS) -> None:
    """The screens on the prompts and seeds of the findings' exact text-encoder protocol."""
    c = PROTOCOLS["text"]
    for method in methods:
        cfg = TraceConfig(model="toy", attribute=attribute, component="all", method=method, max_prompts=c["max_prompts"],
                          seeds=seeds or c["seeds"], batch_size=128)
        run_sweep(cfg, out / f"{attribute}_{method}", model=model)


def _pairs(table: pd.DataFrame) -> set:
    return set(zip(table.prompt_index, table.seed))


def _effects(table: pd.DataFrame, pairs: set, component: str) -> pd.DataFrame:
    keep = table[[p in pairs for p in zip(table.prompt_index, table.seed)]]
    keep = keep[(keep.component == component) | keep.kind.isin(["clean", "corrupted"])]
    return site_effects(keep, "clip")[KEYS + ["effect"]]


def informative(exact: pd.DataFrame, min_drop: float | None) -> set:
    """Prompt × seed pairs whose corruption lowers the CLIP score by at least ``min_drop`` points.

    Where clean ≈ corrupted, an indirect effect (restored − corrupted) / (clean − corrupted) is a
    ratio of two small numbers: in half the validation pairs the drop is under 1 point.
    """
    drop = (exact.clip_clean - exact.clip_corrupted).groupby([exact.prompt_index, exact.seed]).mean()
    return {k for k, v in drop.items() if min_drop is None or v >= min_drop}


def compare(exact: pd.DataFrame, screens: dict[str, pd.DataFrame], component: str, min_drop: float | None = None) -> dict:
    """Spearman, top-5 recall and misses of each screen against exact effects of one component."""
    pairs = _pairs(exact) & set.intersection(*(_pairs(t) for t in screens.values())) & informative(exact, min_drop)
    if not pairs:
        return {"pairs": 0, "sites": 0, **{m: {"spearman": None, "top5_recall": None, "misses": []} for m in screens}}
    ex = _effects(exact, pairs, component)
    top5 = ex.sort_values("effect", ascending=False).head(5)
    est = {m: _effects(t, pairs, component).merge(_abs(t, pairs, component), on=KEYS) for m, t in screens.items()}
    out = {"pairs": len(pairs), "sites": len(ex)}
    for m, e in est.items():
        both = ex.merge(e, on=KEYS, suffixes=("_exact", "_screen")).dropna(subset=["effect_exact", "effect_screen"])
        rank = both.effect_screen.rank(ascending=False)
        both = both.assign(rank=rank)
        top_screen = set(map(tuple, both.sort_values("effect_screen", ascending=False).head(5)[KEYS].values))
        misses = []
        for r in top5.itertuples():
            row = both[(both.site == r.site) & (both.token_role == r.token_role) & (both.window_start == r.window_start)]
            if row.empty or row["rank"].iloc[0] > 10:
                misses.append(_miss(r, row, est))
        out[m] = {"spearman": round(float(both.effect_exact.rank().corr(both.effect_screen.rank())), 3),
                  "top5_recall": round(sum(tuple(k) in top_screen for k in top5[KEYS].values) / max(len(top5), 1), 2),
                  "misses": misses}
    return out


def _abs(table: pd.DataFrame, pairs: set, component: str) -> pd.DataFrame:
    in_pairs = pd.Series([p in pairs for p in zip(table.prompt_index, table.seed)], index=table.index)
    keep = table[in_pairs & (table.component == component)].copy()
    keep.loc[~keep.component.astype(str).str.startswith("text_encoder"), "token_role"] = ""  # denoiser rows have no token
    return keep.groupby(KEYS, dropna=False).screen_abs_effect.mean().reset_index()


def _miss(r, row, est: dict) -> dict:
    eff = {m: e[(e.site == r.site) & (e.token_role == r.token_role) & (e.window_start == r.window_start)] for m, e in est.items()}
    atp, ig = (float(eff[m].effect.iloc[0]) if len(eff[m]) else float("nan") for m in METHODS)
    absolute = abs(float(eff["ig"].screen_abs_effect.iloc[0])) if len(eff["ig"]) else float("nan")
    if abs(ig) < 0.5 * absolute:
        reason = "cancellation"  # per-token / per-step contributions of opposite sign
    elif ig >= 2 * max(atp, 1e-9):
        reason = "saturation"
    else:
        reason = "nonlinear"
    return {"site": r.site.split(":", 1)[1], "token_role": r.token_role, "exact": round(float(r.effect), 3),
            "atp": round(atp, 3), "ig": round(ig, 3), "ig_abs": round(absolute, 3),
            "screen_rank": None if row.empty else int(row["rank"].iloc[0]), "reason": reason}


def summarise(exact: Path, out: Path, attributes, min_drop: float | None = None) -> list[dict]:
    """One row per attribute × component; ``ig<N>`` runs found beside ``ig`` (``experiments.ig_path``) join them."""
    rows = []
    for a in attributes:
        screens = {m: read_trace(out / f"{a}_{m}" / "trace.parquet") for m in METHODS}
        for extra in sorted(out.glob(f"{a}_ig[0-9]*/trace.parquet")):
            screens[extra.parent.name.removeprefix(f"{a}_")] = read_trace(extra)
        for comp, run in (("text_encoder", "text"), ("unet", "unet")):
            res = compare(read_trace(exact / f"{a}_{run}" / "trace.parquet"), screens, comp, min_drop)
            rows.append({"attribute": a, "component": comp, "min_drop": min_drop, **res})
    return rows


def markdown(rows: list[dict]) -> str:
    extras = sorted({k for r in rows for k in r if k.startswith("ig") and k != "ig"})
    head = "| attribute | component | pairs | sites | atp Spearman | atp top-5 | ig Spearman | ig top-5 | "
    head += "".join(f"{e} Spearman | {e} top-5 | " for e in extras) + "ig misses (reason) |"
    lines = [head, "|" + "---|" * (9 + 2 * len(extras))]
    for r in rows:
        miss = "; ".join(f"{m['site']}@{m['token_role'] or '-'} ({m['reason']})" for m in r["ig"]["misses"]) or "none"
        more = "".join(f"{r[e]['spearman']} | {r[e]['top5_recall']} | " if e in r else "— | — | " for e in extras)
        lines.append(f"| {r['attribute']} | {r['component']} | {r['pairs']} | {r['sites']} | {r['atp']['spearman']} | "
                     f"{r['atp']['top5_recall']} | {r['ig']['spearman']} | {r['ig']['top5_recall']} | {more}{miss} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exact", default="results/findings_v4")
    p.add_argument("--out", default="results/reference/screen_validation")
    p.add_argument("--attributes", default=",".join(ATTRIBUTES))
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the protocol's own")
    p.add_argument("--methods", default=",".join(METHODS), help="screens to run, in this order")
    p.add_argument("--summarise-only", action="store_true")
    p.add_argument("--min-drop", type=float, default=5.0, help="second table: pairs whose clean − corrupted CLIP is at least this")
    a = p.parse_args(argv)
    exact, out, attributes = Path(a.exact), Path(a.out), a.attributes.split(",")
    if not a.summarise_only:
        from diffloc.tracing.models import load_model

        model = load_model("toy")
        seeds = tuple(int(x) for x in a.seeds.split(",")) if a.seeds else None
        for method in a.methods.split(","):  # every attribute's atp before any ig: the cheap screen lands first
            for attr in attributes:
                run_screens(out, attr, model, seeds, (method,))
    rows = summarise(exact, out, attributes)
    strict = summarise(exact, out, attributes, a.min_drop)
    write_plain_json({"all_pairs": rows, f"drop_ge_{a.min_drop:g}": strict}, out / "summary.json")
    text = (f"All prompt × seed pairs:\n\n{markdown(rows)}\nPairs whose corruption lowers the CLIP score by "
            f"≥ {a.min_drop:g} points:\n\n{markdown(strict)}")
    atomic_write_bytes(out / "summary.md", text.encode())
    print(text)
    print(json.dumps(rows)[:2000])


if __name__ == "__main__":
    main()

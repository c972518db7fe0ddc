"""Where toy-dit keeps each attribute: exact tracing, attention contribution and AtP on the MM-DiT, by ground truth.

Usage::

    python -m experiments.dit_findings --out results/reference/dit_findings --attributes colour,style,viewpoint
    python -m experiments.dit_findings --out results/reference/dit_findings --attributes object,count --fresh 10 --screens
    python -m experiments.dit_findings --out results/reference/dit_findings --summarise-only

``--fresh N`` traces N fresh prompts (not in the shipped set) chosen by a clean/corrupted pre-pass
to hold at least one informative counterfactual (:func:`informative_prompts`; the pre-pass is kept
in ``<attr>_prefilter.json``): toy-dit draws object and count unreliably (30-42 % of replace pairs
flip), and style loses every 'checkered' pair, so the shipped prompts give too few informative pairs.

Per attribute, three sweeps on the same pairs (counterfactual corruption, ``--corrupt replace``:
each prompt against every other value of its attribute), denoiser only:

- ``<attr>_exact``: every toy-dit site restored at every step (exact causal tracing);
- ``<attr>_contrib``: Zarei et al.'s attention contribution per block (``attn-contrib``);
- ``<attr>_atp``: attribution patching over the same sites (when ``--screens``).

``summary.json`` then answers, with counts of informative pairs and 95 % bootstrap intervals:
which blocks and streams carry the attribute and how concentrated the effect is (share of the
total positive effect held by the top 3 sites); whether attention contribution's top-K blocks
are the blocks whose text->image slice is causal (precision, recall, Spearman of the block
ranking against the slices' exact effects); and how AtP's ranking agrees with exact patching
(:func:`experiments.screen_stats.compare`, the evidence protocol: Spearman and Pearson without
structural zeros, recall of the exact causal set in its top max(10, |C|), bootstrap intervals).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from diffloc.tracing.causal import pair_signal
from diffloc.tracing.io import read_trace
from diffloc.tracing.stats import bootstrap_effects
from experiments.screen_stats import compare

METRIC = "gt"          # ground truth of the clean value (the exact readers)
THRESHOLD = 0.5
MIN_INFORMATIVE = 8    # as tracing's default: fewer informative pairs name no causal site
TOP_K = (2, 3)         # toy-dit has 6 blocks; Zarei et al. keep 6 of 28 (PixArt) / 57 (FLUX)


def _block(site: str) -> int | None:
    m = re.search(r"transformer_blocks\.(\d+)", site)
    return int(m.group(1)) if m else None


def exact_summary(table: pd.DataFrame, metric: str = METRIC) -> dict:
    """Top sites with intervals, the causal set, and the top-3 share, over the informative pairs."""
    pairs = pair_signal(table, "clip")
    used = table.merge(pairs.loc[pairs.informative, ["prompt_index", "seed", "noise_index"]])
    boot = bootstrap_effects(used, metric, n=1000, seed=0).sort_values("effect", ascending=False, kind="stable")
    pos = boot.effect.clip(lower=0)
    share = float(pos.head(3).sum() / pos.sum()) if pos.sum() > 0 else float("nan")
    top = [{"site": r.site, "kind": r.kind, "effect": round(float(r.effect), 3), "interval": [round(float(r.lower), 3), round(float(r.upper), 3)]}
           for r in boot.head(8).itertuples()]
    enough = int(pairs.informative.sum()) >= MIN_INFORMATIVE
    causal = [r.site for r in boot.itertuples() if r.lower >= THRESHOLD] if enough else []
    return {"n_pairs": int(len(pairs)), "n_informative": int(pairs.informative.sum()), "n_gt_flips": int(pairs.gt_flip.fillna(False).sum()),
            "top_sites": top, "causal": causal, "top3_share": round(share, 3), "n_sites": int(len(boot)), "_boot": boot}


def _spearman(a: pd.Series, b: pd.Series) -> float | None:
    both = pd.concat([a, b], axis=1).dropna()
    if len(both) < 3 or both.iloc[:, 0].nunique() < 2 or both.iloc[:, 1].nunique() < 2:
        return None
    return round(float(both.iloc[:, 0].rank().corr(both.iloc[:, 1].rank())), 3)


def contrib_vs_exact(contrib: pd.DataFrame, boot: pd.DataFrame) -> dict:
    """Attention contribution's block ranking against the exact effects of each block's text->image slice."""
    rows = contrib[contrib.kind == "attn_contrib"]
    per_block = rows.groupby(rows.site.map(_block)).attn_contrib.mean()
    slices = boot[boot.site.str.endswith(".attn.txt2img")]
    exact = pd.Series(slices.effect.values, index=slices.site.map(_block))
    causal_blocks = set(slices.loc[slices.lower >= THRESHOLD, "site"].map(_block))
    out = {"blocks_by_contribution": [int(b) for b in per_block.sort_values(ascending=False).index],
           "contribution": {int(b): round(float(v), 4) for b, v in per_block.items()},
           "slice_effect": {int(b): round(float(v), 3) for b, v in exact.items()},
           "causal_slice_blocks": sorted(int(b) for b in causal_blocks), "spearman": _spearman(per_block, exact)}
    for k in TOP_K:
        top = set(per_block.sort_values(ascending=False).index[:k])
        hit = len(top & causal_blocks)
        out[f"top{k}"] = {"precision": round(hit / k, 3), "recall": round(hit / len(causal_blocks), 3) if causal_blocks else None}
    return out


def summarise(root: Path, attributes: list[str]) -> dict:
    out = {}
    for attr in attributes:
        ex = root / f"{attr}_exact" / "trace.parquet"
        if not ex.exists():
            continue
        res = exact_summary(read_trace(ex))
        boot = res.pop("_boot")
        if (root / f"{attr}_contrib" / "trace.parquet").exists():
            res["attn_contrib"] = contrib_vs_exact(read_trace(root / f"{attr}_contrib" / "trace.parquet"), boot)
        if (root / f"{attr}_atp" / "trace.parquet").exists():
            atp = read_trace(root / f"{attr}_atp" / "trace.parquet")
            res["atp"] = compare(atp, read_trace(ex))
        out[attr] = res
    (root / "summary.json").write_text(json.dumps(out, indent=2, default=lambda v: None if v != v else v))
    return out


def run(root: Path, attributes: list[str], prompts: int, seeds: int, screens: bool, fresh: int = 0) -> None:
    from diffloc.tracing.models import load_model
    from diffloc.tracing.sweep import run_sweep
    from diffloc.tracing.trace_config import TraceConfig

    model = load_model("toy-dit")
    common = dict(model="toy-dit", component="denoiser", corrupt="replace", seeds=tuple(range(seeds)), batch_size=64)
    for attr in attributes:
        chosen = dict(max_prompts=prompts)
        if fresh:
            chosen = dict(prompts=informative_prompts(model, attr, fresh, root / f"{attr}_prefilter.json"))
        run_sweep(TraceConfig(attribute=attr, **chosen, **common), root / f"{attr}_exact", model=model)
        run_sweep(TraceConfig(attribute=attr, method="attn-contrib", **chosen, **common), root / f"{attr}_contrib", model=model)
        if screens:
            run_sweep(TraceConfig(attribute=attr, method="atp", **chosen, **common), root / f"{attr}_atp", model=model)
        summarise(root, attributes)


def informative_prompts(model, attribute: str, n: int, record: Path) -> tuple[str, ...]:
    """The first ``n`` fresh prompts (:func:`experiments.evidence.fresh_prompts`, 6·n drawn) with at least one informative
    counterfactual at seed 0, by a clean/corrupted pre-pass (nothing restored). For attributes toy-dit draws
    unreliably (object, count: 30-42 % of replace pairs flip) this spends the exact sweep on prompts whose pairs
    carry signal; the kept prompts' other counterfactuals stay in the sweep and count as uninformative pairs.
    The pre-pass (every candidate, its flips) is written to ``record``; a rerun reads it."""
    import json

    from diffloc.tracing.scoring import default_scorer, load_scorer
    from diffloc.tracing.sweep import unit_context
    from diffloc.tracing.trace_config import TraceConfig
    from experiments.evidence import fresh_prompts
    from experiments.informative_pairs import prompt_flips

    if record.exists():
        return tuple(json.loads(record.read_text())["chosen"])
    pool = fresh_prompts(attribute, 6 * n)
    cfg = TraceConfig(model=model.name, attribute=attribute, prompts=pool, seeds=(0,), corrupt="replace")
    ctx = unit_context(cfg, model, load_scorer(default_scorer("auto", model)))
    seen, chosen = [], []
    for i, prompt in enumerate(pool):
        flips = prompt_flips(cfg, ctx, i, seed=0)
        seen.append({"prompt": prompt, "flips": flips})
        if any(flips.values()):
            chosen.append(prompt)
        if len(chosen) == n:
            break
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"seed": 0, "candidates": seen, "chosen": chosen}, indent=1))
    return tuple(chosen)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--attributes", default="colour,style,viewpoint,object,count")
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--screens", action="store_true")
    p.add_argument("--fresh", type=int, default=0, help="instead of the shipped prompts: N fresh prompts with an informative pair")
    p.add_argument("--summarise-only", action="store_true")
    a = p.parse_args(argv)
    attrs = a.attributes.split(",")
    if not a.summarise_only:
        run(a.out, attrs, a.prompts, a.seeds, a.screens, a.fresh)
    print(json.dumps(summarise(a.out, attrs), indent=1))


if __name__ == "__main__":
    main()

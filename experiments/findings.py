"""Trace every toy-world attribute and summarise the findings (the README's tables).

Usage::

    python -m experiments.findings --out results/findings --attributes colour,object
    python -m experiments.findings --out results/findings --summarise-only

For each attribute: a text-encoder sweep (``<attribute>_text``: fewer prompts and seeds, it has
~190 rows per prompt) and a UNet sweep (``<attribute>_unet``: one row per UNet site, 32 on the toy model), then
one summary row: clean and corrupted scores (CLIP and ground truth), the strongest
text-encoder state (site and token role), the UNet sites past the threshold, and the
stability of site effects between two disjoint seed halves (Spearman, and the halves' absolute
agreement: mean |effect difference| beside the sites' spread, and the causal sets' overlap). Writes
``OUT/findings.json`` (the rows) and ``OUT/findings.md`` (the README table), for the
attributes of this call.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffloc.plots import plot_run
from diffloc.tracing.causal import uncertainty
from diffloc.tracing.io import atomic_write_bytes, read_trace, write_plain_json
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig

ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count")


def _fmt(r) -> str:
    return f"{r.effect:.2f} [{r.lower:.2f}, {r.upper:.2f}]"


def _short(site: str) -> str:
    return site.split(":", 1)[1].replace("transformer_blocks.0.", "").replace("attentions.", "att")


def _unet(run: Path, metric: str, threshold: float) -> dict:
    table = read_trace(run / "trace.parquet")
    boot, half = uncertainty(table, metric)
    boot = boot.sort_values("effect", ascending=False)
    causal = boot[boot.lower >= threshold]
    attn2 = boot[boot.kind == "attn2"].head(1)
    return {"pairs": half["n_pairs"], "split_half": half["spearman"].get("unet"), "agreement": half["agreement"].get("unet"),
            "n_causal": len(causal),
            "causal": [f"{_short(r.site)} {_fmt(r)}" for r in causal.itertuples()],
            "top_attn2": [f"{_short(r.site)} {_fmt(r)}" for r in attn2.itertuples()],
            "clean": float(table[f"{metric}_clean"].mean()), "corrupted": float(table[f"{metric}_corrupted"].mean())}


def _text(run: Path, metric: str, threshold: float) -> dict:
    table = read_trace(run / "trace.parquet")
    boot, half = uncertainty(table, metric)
    boot = boot.sort_values("effect", ascending=False)
    paper = boot[(boot.kind == "attn") & (boot.layer == 0) & (boot.token_role == "last_subject")]
    best = boot.head(1)
    layer0 = boot[(boot.kind == "hidden") & (boot.layer == 0)].set_index("token_role")
    return {"pairs": half["n_pairs"], "split_half": half["spearman"].get("text_encoder"),
            "agreement": half["agreement"].get("text_encoder"), "n_real": half["n_real_effect"].get("text_encoder", 0),
            "paper_state": _fmt(paper.iloc[0]) if len(paper) else None,
            "best": f"{best.kind.iloc[0]} L{int(best.layer.iloc[0])} @ {best.token_role.iloc[0]} {_fmt(best.iloc[0])}",
            "n_causal": int((boot.lower >= threshold).sum()),
            "layer0_hidden_by_role": {role: _fmt(r) for role, r in layer0.iterrows()}}


def _swap(run: Path, metric: str) -> dict:
    table = read_trace(run / "trace.parquet")
    boot, half = uncertainty(table, metric)
    boot = boot.sort_values("effect", ascending=False)
    top = boot.head(2)
    return {"pairs": half["n_pairs"], "split_half": half["spearman"].get("unet"), "n_windows": len(boot),
            "controlling": [f"{_short(r.site)} (window {int(r.layer)}) {_fmt(r)}" for r in top.itertuples()]}


def summarise(out: Path, attribute: str, threshold: float = 0.5) -> dict:
    """One attribute's findings over every protocol run that exists, CLIP and ground truth."""
    row: dict = {"attribute": attribute}
    for name, fn in (("unet", _unet), ("text", _text), ("text_suffix", _text), ("swap", _swap)):
        run = out / f"{attribute}_{name}"
        if not (run / "trace.parquet").exists():
            continue
        for metric in ("clip", "gt"):
            row[f"{name}_{metric}"] = fn(run, metric) if name == "swap" else fn(run, metric, threshold)
    return row


def _agree(a: dict | None) -> str:
    """'|Δ| 0.03 of 0.40, J 1.00': split-half mean |effect difference|, the sites' spread, causal-set overlap."""
    if not a or a.get("mean_abs_diff") is None:
        return "—"
    j = "—" if a["causal_jaccard"] is None else f"{a['causal_jaccard']:.2f}"
    return f"\\|Δ\\| {a['mean_abs_diff']:.2f} of {a['spread']:.2f}, J {j}"


def markdown(rows: list[dict]) -> str:
    """The README's findings tables: UNet, text encoder (token and suffix), LocoGen windows."""
    lines = ["| attribute | pairs | UNet sites with lower bound ≥ 0.5, CLIP / GT | strongest attn2 (GT) [95% CI] | split-half Spearman, CLIP / GT "
             "| split-half agreement (CLIP) |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "unet_clip" in r:
            c, g = r["unet_clip"], r["unet_gt"]
            lines.append(f"| {r['attribute']} | {c['pairs']} | {c['n_causal']} / {g['n_causal']} | {', '.join(g['top_attn2'])} | "
                         f"{c['split_half']} / {g['split_half']} | {_agree(c.get('agreement'))} |")
    lines += ["", "| attribute | pairs | paper's state: L0 attn @ last subject, CLIP / GT | strongest state (CLIP) | "
              "suffix from EOS at L0 (GT) | suffix from after-subject at L0 (GT) | split-half Spearman token / suffix (CLIP) | "
              "agreement token; suffix (CLIP) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "text_clip" in r:
            t, tg = r["text_clip"], r["text_gt"]
            sg = r.get("text_suffix_gt", {}).get("layer0_hidden_by_role", {})
            sc = r.get("text_suffix_clip", {})
            lines.append(f"| {r['attribute']} | {t['pairs']} | {t['paper_state']} / {tg['paper_state']} | {t['best']} | "
                         f"{sg.get('eos', '—')} | {sg.get('after', '—')} | {t['split_half']} / {sc.get('split_half', '—')} | "
                         f"{_agree(t.get('agreement'))}; {_agree(sc.get('agreement'))} |")
    lines += ["", "| attribute | pairs | controlling windows, CLIP | controlling windows, GT | split-half, GT |", "|---|---|---|---|---|"]
    for r in rows:
        if "swap_clip" in r:
            lines.append(f"| {r['attribute']} | {r['swap_clip']['pairs']} | {'; '.join(r['swap_clip']['controlling'])} | "
                         f"{'; '.join(r['swap_gt']['controlling'])} | {r['swap_gt']['split_half']} |")
    return "\n".join(lines) + "\n"


# The protocols each attribute is traced with: run name -> TraceConfig overrides.
PROTOCOLS = {
    "unet": dict(component="unet", max_prompts=4, seeds=(0, 1, 2)),
    "text": dict(component="text_encoder", max_prompts=2, seeds=(0, 1)),
    "text_suffix": dict(component="text_encoder", restore="suffix", text_kinds=("hidden",), max_prompts=2, seeds=(0, 1)),
    "swap": dict(component="unet", method="crossattn-swap", max_prompts=4, seeds=(0, 1, 2)),
}


def run_protocols(out: Path, attributes, protocols, model=None, seeds: tuple[int, ...] | None = None) -> None:
    """Run (or resume) every protocol sweep of every attribute into ``out/<attribute>_<protocol>``."""
    from diffloc.tracing.models import load_model

    model = model or load_model("toy")
    for name in protocols:
        for attribute in attributes:
            run = out / f"{attribute}_{name}"
            over = dict(PROTOCOLS[name], **({"seeds": seeds} if seeds else {}))  # fewer seeds first; a resume adds the rest
            cfg = TraceConfig(model="toy", attribute=attribute, batch_size=128, **over)
            run_sweep(cfg, run, model=model)
            print(f"done {run}", flush=True)  # figures: drawn by --summarise-only, once every run is in


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/findings")
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--attributes", default=",".join(ATTRIBUTES))
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of each protocol's own")
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    out, attributes = Path(args.out), args.attributes.split(",")
    if not args.summarise_only:
        seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else None
        run_protocols(out, attributes, args.protocols.split(","), seeds=seeds)
    rows = []
    for attribute in attributes:
        rows.append(summarise(out, attribute))
        print(json.dumps(rows[-1]), flush=True)
        for run in sorted(out.glob(f"{attribute}_*/")):
            if (run / "trace.parquet").exists() and args.summarise_only:
                plot_run(run, uncertainty=True)
    write_plain_json(rows, out / "findings.json")
    atomic_write_bytes(out / "findings.md", markdown(rows).encode())
    print(markdown(rows))


if __name__ == "__main__":
    main()

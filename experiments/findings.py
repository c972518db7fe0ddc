"""Trace every toy-world attribute and summarise the findings (the README's tables).

Usage::

    python -m experiments.findings --out results/findings --attributes colour,object
    python -m experiments.findings --out results/findings --summarise-only

For each attribute: a text-encoder sweep (``<attribute>_text``: fewer prompts and seeds, it has
~190 rows per prompt) and a UNet sweep (``<attribute>_unet``: one row per UNet site, 32 on the toy model), then
one summary row: clean and corrupted scores (CLIP and ground truth), the strongest
text-encoder state (site and token role), the UNet sites past the threshold, and the
stability of site effects between two disjoint seed halves (Spearman). Writes
``OUT/findings.json`` (the rows) and ``OUT/findings.md`` (the README table), for the
attributes of this call.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffloc.plots import plot_run
from tracing.causal import site_effects
from tracing.io import atomic_write_bytes, read_json_format, read_trace, write_plain_json
from tracing.sweep import run_sweep
from tracing.trace_config import TraceConfig

ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count")


def summarise(text_run: Path, unet_run: Path, attribute: str) -> dict:
    """One row of findings from an attribute's text-encoder run and its UNet run."""
    text_table = read_trace(text_run / "trace.parquet")
    unet_table = read_trace(unet_run / "trace.parquet")
    tc = read_json_format("causal_sites", text_run / "causal_sites.json")
    uc = read_json_format("causal_sites", unet_run / "causal_sites.json")
    row = {"attribute": attribute, "text_prompts_x_seeds": f"{text_table.prompt_index.nunique()}x{text_table.seed.nunique()}",
           "unet_prompts_x_seeds": f"{unet_table.prompt_index.nunique()}x{unet_table.seed.nunique()}"}
    for metric in tc["metrics"]:
        row[f"{metric}_clean"] = round(uc["clean"][metric], 3)
        row[f"{metric}_corrupted"] = round(uc["corrupted"][metric], 3)
    for metric in tc["metrics"]:
        eff = site_effects(text_table, metric).sort_values("effect", ascending=False)
        best = eff.iloc[0]
        row[f"text_best_{metric}"] = f"{best.site.split(':', 1)[1]} @ {best.token_role}"
        row[f"text_best_effect_{metric}"] = round(float(best.effect), 3)
        row[f"text_causal_{metric}"] = [f"{r.site.split(':', 1)[1]} @ {r.token_role} ({r.effect:.2f})"
                                       for r in eff.itertuples() if r.effect >= tc["threshold"]]
        ueff = site_effects(unet_table, metric).sort_values("effect", ascending=False)
        row[f"unet_causal_{metric}"] = [f"{r.site.split(':', 1)[1]} ({r.effect:.2f})" for r in ueff.itertuples() if r.effect >= uc["threshold"]]
        row[f"unet_top3_{metric}"] = [f"{r.site.split(':', 1)[1]} ({r.effect:.2f})" for r in ueff.head(3).itertuples()]
    row["stability_text"] = tc["clip"].get("stability_spearman", {}).get("text_encoder")
    row["stability_unet"] = uc["clip"].get("stability_spearman", {}).get("unet")
    row["stability_unet_gt"] = uc.get("gt", {}).get("stability_spearman", {}).get("unet")
    return row


def markdown(rows: list[dict]) -> str:
    """Text-encoder columns by CLIP effect (the paper's metric), UNet columns by CLIP and ground truth."""
    lines = ["| attribute | CLIP clean → corrupted | GT clean → corrupted | strongest text state (CLIP effect) | text states ≥ 0.5 | UNet sites ≥ 0.5, CLIP / GT | top UNet sites (GT effect) | Spearman text / UNet |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gt_top = r.get("unet_top3_gt", [])
        lines.append(
            f"| {r['attribute']} | {r['clip_clean']:.1f} → {r['clip_corrupted']:.1f} | "
            f"{r.get('gt_clean', float('nan')):.2f} → {r.get('gt_corrupted', float('nan')):.2f} | "
            f"`{r['text_best_clip']}` ({r['text_best_effect_clip']:.2f}) | {len(r['text_causal_clip'])} | "
            f"{len(r['unet_causal_clip'])} / {len(r.get('unet_causal_gt', []))} | {', '.join(gt_top)} | "
            f"{r['stability_text']} / {r['stability_unet']} |")
    return "\n".join(lines) + "\n"


# The protocols each attribute is traced with: run name -> TraceConfig overrides.
PROTOCOLS = {
    "unet": dict(component="unet", max_prompts=4, seeds=(0, 1, 2)),
    "text": dict(component="text_encoder", max_prompts=2, seeds=(0, 1)),
    "text_suffix": dict(component="text_encoder", restore="suffix", text_kinds=("hidden",), max_prompts=2, seeds=(0, 1)),
    "swap": dict(component="unet", method="crossattn-swap", max_prompts=4, seeds=(0, 1, 2)),
}


def run_protocols(out: Path, attributes, protocols, model=None) -> None:
    """Run (or resume) every protocol sweep of every attribute into ``out/<attribute>_<protocol>``."""
    from tracing.models import load_model

    model = model or load_model("toy")
    for name in protocols:
        for attribute in attributes:
            run = out / f"{attribute}_{name}"
            cfg = TraceConfig(model="toy", attribute=attribute, batch_size=128, **PROTOCOLS[name])
            run_sweep(cfg, run, model=model)
            print(f"done {run}", flush=True)  # figures: drawn by --summarise-only, once every run is in


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/findings")
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--attributes", default=",".join(ATTRIBUTES))
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    out, attributes = Path(args.out), args.attributes.split(",")
    if not args.summarise_only:
        run_protocols(out, attributes, args.protocols.split(","))
    rows = []
    for attribute in attributes:
        text_run, unet_run = out / f"{attribute}_text", out / f"{attribute}_unet"
        if (text_run / "trace.parquet").exists() and (unet_run / "trace.parquet").exists():
            rows.append(summarise(text_run, unet_run, attribute))
            print(json.dumps(rows[-1]))
    write_plain_json(rows, out / "findings.json")
    atomic_write_bytes(out / "findings.md", markdown(rows).encode())
    print(markdown(rows))


if __name__ == "__main__":
    main()

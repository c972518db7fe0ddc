"""Trace every toy-world attribute and summarise the findings (the README's tables).

Usage::

    python -m experiments.findings --out results/findings --prompts 4 --seeds 4
    python -m experiments.findings --out results/findings --summarise-only

For each attribute: a sweep over both components (``results/findings/<attribute>``), then
one summary row: clean and corrupted scores (CLIP and ground truth), the strongest
text-encoder state (site and token role), the UNet sites past the threshold, and the
stability of site effects between two disjoint seed halves (Spearman). Writes
``findings.json`` and ``findings.md``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from tracing.causal import site_effects
from tracing.plots import plot_run
from tracing.sweep import run_sweep
from tracing.trace_config import TraceConfig

ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count")


def summarise(run: Path, attribute: str) -> dict:
    table = pd.read_parquet(run / "trace.parquet")
    causal = json.loads((run / "causal_sites.json").read_text())
    row = {"attribute": attribute, "prompts": int(table.prompt_index.nunique()), "seeds": int(table.seed.nunique())}
    for metric in causal["metrics"]:
        row[f"{metric}_clean"] = round(causal["clean"][metric], 3)
        row[f"{metric}_corrupted"] = round(causal["corrupted"][metric], 3)
    eff = site_effects(table, "clip")
    text = eff[eff.component == "text_encoder"].sort_values("effect", ascending=False)
    best = text.iloc[0]
    row["text_best"] = f"{best.site.split(':', 1)[1]} @ {best.token_role}"
    row["text_best_effect"] = round(float(best.effect), 3)
    strong = text[text.effect >= causal["threshold"]]
    row["text_causal_states"] = [f"{r.site.split(':', 1)[1]} @ {r.token_role}" for r in strong.itertuples()]
    unet = eff[eff.component == "unet"].sort_values("effect", ascending=False)
    row["unet_causal"] = [f"{r.site.split(':', 1)[1]} ({r.effect:.2f})" for r in unet.itertuples() if r.effect >= causal["threshold"]]
    row["unet_top3"] = [f"{r.site.split(':', 1)[1]} ({r.effect:.2f})" for r in unet.head(3).itertuples()]
    row["stability_spearman"] = causal["clip"].get("stability_spearman", {})
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| attribute | CLIP clean → corrupted | GT clean → corrupted | strongest text-encoder state (effect) | text states ≥ threshold | UNet sites ≥ threshold | stability (text / UNet) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r["stability_spearman"]
        lines.append(
            f"| {r['attribute']} | {r['clip_clean']:.1f} → {r['clip_corrupted']:.1f} | "
            f"{r.get('gt_clean', float('nan')):.2f} → {r.get('gt_corrupted', float('nan')):.2f} | "
            f"`{r['text_best']}` ({r['text_best_effect']:.2f}) | {len(r['text_causal_states'])} | "
            f"{len(r['unet_causal'])}: {', '.join(r['unet_causal'][:4])}{' …' if len(r['unet_causal']) > 4 else ''} | "
            f"{st.get('text_encoder', 'n/a')} / {st.get('unet', 'n/a')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/findings")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--attributes", default=",".join(ATTRIBUTES))
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = []
    model = None
    for attribute in args.attributes.split(","):
        run = out / attribute
        if not args.summarise_only:
            from tracing.models import load_model

            model = model or load_model("toy")
            cfg = TraceConfig(model="toy", attribute=attribute, max_prompts=args.prompts, seeds=tuple(range(args.seeds)),
                              num_inference_steps=args.steps, batch_size=128)
            run_sweep(cfg, run, model=model)
            plot_run(run)
        if (run / "trace.parquet").exists():
            rows.append(summarise(run, attribute))
            print(json.dumps(rows[-1]))
    (out / "findings.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "findings.md").write_text(markdown(rows))
    print((out / "findings.md").read_text())


if __name__ == "__main__":
    main()

"""Markdown tables for the README from result folders (findings, edit evaluations, benchmarks).

Usage::

    python -m experiments.report_tables --eval results/eval_toy_a results/eval_toy_b \\
        --findings results/findings --bench results/bench_trace.json results/bench_edit.json

Edit evaluations given as several folders (a case file split across processes) are merged
before the rates are computed, so the table is the same as one run over all cases.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from diffloc.evaluate import summarise

METHOD_ORDER = ["unedited", "oracle", "quickfix", "refact", "crossattn", "edited"]
BASELINES = ("unedited", "oracle", "edited")


def ordered(labels) -> list[str]:
    """Row labels in table order: baselines, then each editor with its options after it
    (``quickfix``, ``quickfix+preserve``), by the editor part of the label."""
    def key(label: str):
        editor, _, option = label.partition("+")
        return (METHOD_ORDER.index(editor) if editor in METHOD_ORDER else len(METHOD_ORDER), editor, option)

    return sorted(labels, key=key)


def edit_table(dirs: list[Path]) -> str:
    table = pd.concat([pd.read_parquet(d / "eval.parquet") for d in dirs], ignore_index=True)
    s = summarise(table)
    lines = [f"{table.case.nunique()} cases × 11 prompts × {table.seed.nunique()} seeds per method.", "",
             "| method | efficacy (GT) | generalization (GT) | specificity (GT) | efficacy (CLIP) | generalization (CLIP) | specificity (CLIP) |",
             "|---|---|---|---|---|---|---|"]
    for m in ordered(s):
        r = s[m]
        lines.append(f"| {m} | {r.get('gt_efficacy', float('nan')):.3f} | {r.get('gt_generalization', float('nan')):.3f} | "
                     f"{r.get('gt_specificity', float('nan')):.3f} | {r['efficacy']:.3f} | {r['generalization']:.3f} | {r['specificity']:.3f} |")
    per = table[~table.method.isin(BASELINES)].pivot_table(
        index="attribute", columns=["method", "split"], values="gt_success", aggfunc="mean").round(2)
    lines += ["", "Ground-truth success by attribute (edit / positive / negative prompts):", "",
              "| attribute | " + " | ".join(f"{m} {sp}" for m, sp in per.columns) + " |",
              "|---|" + "---|" * len(per.columns)]
    for attr, row in per.iterrows():
        lines.append(f"| {attr} | " + " | ".join(f"{v:.2f}" for v in row.values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", nargs="*", default=[])
    p.add_argument("--findings", default=None)
    p.add_argument("--bench", nargs="*", default=[])
    args = p.parse_args(argv)
    if args.eval:
        print(edit_table([Path(d) for d in args.eval]))
    if args.findings:
        from experiments.findings import markdown
        from experiments.findings import summarise as summarise_findings

        out = Path(args.findings)
        rows = []
        for text_run in sorted(out.glob("*_text")):
            attr = text_run.name.removesuffix("_text")
            unet_run = out / f"{attr}_unet"
            if (text_run / "trace.parquet").exists() and (unet_run / "trace.parquet").exists():
                rows.append(summarise_findings(text_run, unet_run, attr))
        (out / "findings.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(markdown(rows))
    for b in args.bench:
        print(f"`{b}`:", json.dumps(json.loads(Path(b).read_text()), indent=1))


if __name__ == "__main__":
    main()

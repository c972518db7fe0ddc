"""Editor design choices compared on the dev set (or any case set): the committed ablation harness.

Usage::

    OMP_NUM_THREADS=1 python -m experiments.edit_ablation                         # dev set, every variant, 1 seed
    OMP_NUM_THREADS=1 python -m experiments.edit_ablation --variants world --cases experiments/cases/toy_edits_plain.jsonl \\
        --out results/reference/edit_plain_v1 --reuse results/reference/edit_eval_v5/eval.parquet
                                                   # plain cases (no templates) against the hand-written ones

Each variant is one method on one transform of the cases, evaluated by
:func:`diffloc.evaluate.evaluate_methods` with ground truth (every case edited into a clean model
and undone). Variants (``--variants``, default all):

- ``shipped``: quickfix+preserve with each case's templates, grammatical target prompts and
  preserve captions (what ``diffloc evaluate`` runs);
- ``no_preserve``: quickfix with templates and targets, no preserve captions;
- ``substituted``: quickfix+preserve with templates but no target prompts (the target word
  substituted into each template: 'one [two] red circle');
- ``substituted_no_preserve``: plain QuickFix on substituted targets;
- ``paper_templates``: quickfix+preserve with the Diff-QuickFix release's templates ('A photo
  of {}', ...) instead of the case's, substituted targets;
- ``world``: the cases stripped of templates, targets and preserve, completed from the toy
  world's grammar (:func:`diffloc.editing.cases.complete_cases`), quickfix+preserve.

``--reuse`` takes the ``shipped`` rows (quickfix+preserve) from an evaluation table of the same
cases and seeds (``diffloc evaluate``'s ``eval.parquet``) instead of recomputing them. Each
variant writes ``<variant>.parquet`` (a rerun skips finished ones); ``summary.json`` (every rate
with its 95 % Wilson interval, case-bootstrap interval and n) and ``rates.md`` are rebuilt from
whatever files exist. Choices whose code is not an option of the shipped editor (weighting the
preserve rows, keys only from the subject on) are not variants here.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from diffloc.editing.cases import complete_cases, load_cases
from diffloc.editing.editors import Method
from diffloc.editing.quickfix import PAPER_TEMPLATES
from diffloc.evaluate import evaluate_methods, interval_text, summarise
from diffloc.tracing.io import read_table, write_json_format, write_table
from diffloc.tracing.models import load_model
from diffloc.tracing.worlds import world_of

QFP, QF = Method("quickfix", preserve=True), Method("quickfix")


def _strip(case: dict, *keys: str) -> dict:
    return {k: v for k, v in case.items() if k not in keys}


#: variant: (method, what it is, cases transform (cases, world) -> cases)
VARIANTS = {
    "shipped": (QFP, "quickfix+preserve, case templates + grammatical targets + preserve (shipped)", lambda cs, w: cs),
    "no_preserve": (QF, "quickfix, case templates + grammatical targets, no preserve", lambda cs, w: cs),
    "world": (QFP, "quickfix+preserve, cases stripped of templates/targets/preserve, completed from the world's grammar",
              lambda cs, w: complete_cases([_strip(c, "templates", "targets", "preserve") for c in cs], w)),
    "substituted": (QFP, "quickfix+preserve, case templates, target word substituted (no target prompts)",
                    lambda cs, w: [_strip(c, "targets") for c in cs]),
    "paper_templates": (QFP, "quickfix+preserve, the Diff-QuickFix release's templates, substituted targets",
                        lambda cs, w: [dict(_strip(c, "targets"), templates=list(PAPER_TEMPLATES)) for c in cs]),
    "substituted_no_preserve": (QF, "quickfix, case templates, substituted targets, no preserve",
                                lambda cs, w: [_strip(c, "targets") for c in cs]),
}


def run(out: Path, cases_path: str, seeds: int, variants: list[str], reuse: Path | None = None, say=print) -> dict:
    cases = load_cases(cases_path)
    out.mkdir(parents=True, exist_ok=True)
    if reuse is not None and "shipped" in variants and not (out / "shipped.parquet").exists():
        t = read_table(reuse)
        t = t[(t.method == QFP.label) & t.case.isin({c["id"] for c in cases}) & (t.seed < seeds)]
        if t.case.nunique() != len(cases) or t.seed.nunique() != seeds:
            raise SystemExit(f"{reuse} lacks {QFP.label} rows for these {len(cases)} cases at {seeds} seeds")
        write_table(t.assign(variant="shipped", seconds=float("nan"), reused_from=str(reuse)).reset_index(drop=True),
                    out / "shipped.parquet")
        say(f"shipped: rows from {reuse}")
    model = None
    for name in variants:
        path = out / f"{name}.parquet"
        if path.exists():
            continue
        if model is None:
            model = load_model("toy")
        method, _, transform = VARIANTS[name]
        t0 = time.perf_counter()
        table = evaluate_methods(model, transform(cases, world_of(model)), methods=[method], seeds=range(seeds),
                                 truth=world_of(model), baselines=())
        write_table(table.assign(variant=name, seconds=time.perf_counter() - t0), path)
        s = summarise(table)[method.label]
        say(f"{name}: {time.perf_counter() - t0:.0f}s, efficacy {interval_text(s['gt_efficacy'], s['gt_efficacy_ci'])} "
            f"(n={s['gt_efficacy_n']})")
    return summarise_folder(out, cases_path, seeds)


def paired_difference(table, base, split: str, n_boot: int = 2000, seed: int = 0) -> dict:
    """GT rate of ``table`` minus ``base`` on ``split``, with a 95 % paired bootstrap over cases
    (both tables evaluate the same cases, prompts and seeds)."""
    import numpy as np

    a = base[base.split == split].groupby("case").gt_success.agg(["sum", "count"])
    b = table[table.split == split].groupby("case").gt_success.agg(["sum", "count"]).reindex(a.index)
    if b.isna().any().any():
        return {}
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    rate = lambda g: g["sum"].to_numpy()[idx].sum(1) / g["count"].to_numpy()[idx].sum(1)  # noqa: E731
    d = rate(b) - rate(a)
    diff = b["sum"].sum() / b["count"].sum() - a["sum"].sum() / a["count"].sum()
    return {"difference": round(float(diff), 4), "ci_cases": [round(float(x), 4) for x in np.quantile(d, [0.025, 0.975])]}


def summarise_folder(out: Path, cases_path: str, seeds: int) -> dict:
    """summary.json and rates.md from the variants' files; ``efficacy`` etc. repeat the GT rates (no CLIP here)."""
    result = {"cases": cases_path, "seeds": list(range(seeds)), "metric": "ground truth (toy reader)",
              "run": "python -m experiments.edit_ablation (committed harness)",
              "intervals": "95 %: <rate>_ci Wilson over images (gt_others: bootstrap over cases), <rate>_ci_cases bootstrap "
                           "over cases, <rate>_n images", "variants": {}}
    names = ("gt_efficacy", "gt_generalization", "gt_specificity", "gt_others")
    lines = ["| variant | what | " + " | ".join(f"{n.removeprefix('gt_')} [95 % CI] (n)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for name in VARIANTS:
        path = out / f"{name}.parquet"
        if not path.exists():
            continue
        t = read_table(path)
        s = next(iter(summarise(t.assign(method=name)).values()))
        s["what"] = VARIANTS[name][1]
        for k in ("efficacy", "generalization", "specificity"):  # the rates are ground truth ("metric")
            s[k], s[f"{k}_ci"], s[f"{k}_n"] = s[f"gt_{k}"], s[f"gt_{k}_ci"], s[f"gt_{k}_n"]
        seconds = float(t.seconds.iloc[0])
        s["seconds"] = round(seconds, 1) if seconds == seconds else None
        if "reused_from" in t:
            s["reused_from"] = str(t.reused_from.iloc[0])
        if name != "shipped" and (out / "shipped.parquet").exists():
            base = read_table(out / "shipped.parquet")
            s["minus_shipped"] = {f"gt_{k}": paired_difference(t, base, split)
                                  for k, split in (("efficacy", "edit"), ("generalization", "positive"), ("specificity", "negative"))}
        result["variants"][name] = s
        lines.append(f"| {name} | {s['what']} | " + " | ".join(f"{interval_text(s[k], s[k + '_ci'])} ({s[k + '_n']})" for k in names) + " |")
    write_json_format("summary", result, out / "summary.json")
    (out / "rates.md").write_text("\n".join(lines) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/reference/edit_dev_ablation_v2"))
    p.add_argument("--cases", default="experiments/cases/toy_edits_dev.jsonl")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--reuse", type=Path, default=None, help="eval.parquet of the same cases and seeds: the shipped rows from it")
    args = p.parse_args(argv)
    run(args.out, args.cases, args.seeds, args.variants, reuse=args.reuse)


if __name__ == "__main__":
    main()

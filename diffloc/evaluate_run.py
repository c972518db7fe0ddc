"""The body of ``diffloc evaluate``: run, save ``eval.parquet`` + ``summary.json``, draw grids.

Usage::

    run_evaluate("toy", Path("experiments/cases/toy_edits.jsonl"), Path("results/eval"), ["quickfix"], seeds=10)
    run_evaluate("toy", cases_path, out, ["quickfix"], seeds=2, max_cases=None, scorer_spec="toy", preserve=True, together=4)

``together`` N evaluates each case on a model carrying the N edits of its group: groups of N
consecutive cases in file order, the last one holding the remainder
(:func:`editing.batch.consecutive_groups`; a group whose edits conflict is a one-line error);
``sequential`` applies a group's edits one after another instead of in one solve.

A case without ``templates`` or ``targets`` gets them from the model's world
(:func:`editing.cases.complete_cases`: the toy world's grammar), so a plain case (edit prompt,
positives, negatives) edits as a hand-written one does.

Outputs: ``eval.parquet`` (one row per image), ``summary.json`` (every rate with its 95 %
interval and n: see :func:`diffloc.evaluate.summarise`), ``rates.csv`` / ``rates.md`` (the same
as a table: ``0.975 [0.942, 0.990]``, n), ``rates.png`` (the GT rates with error bars) and a
grid. ``write_summary(out)`` rebuilds all but the grid from ``eval.parquet``
(``python -m diffloc.evaluate_run OUT``).

``progress`` is a tqdm-like factory and ``say`` a printer; the CLI passes its own.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from diffloc.editing.batch import consecutive_groups
from diffloc.editing.cases import case_prompts, complete_cases, load_cases
from diffloc.editing.editors import EDITORS, Method, as_method, default_options, edit_case, method_labels, takers
from diffloc.editing.records import load_records, redo_edit, undo_edit
from diffloc.tracing.errors import DifflocInputError, UsageError
from diffloc.tracing.io import read_table, write_json_format, write_table
from diffloc.tracing.models import load_model
from diffloc.tracing.sampler import SamplerConfig, generate, initial_latents
from diffloc.tracing.scoring import load_scorer
from diffloc.tracing.worlds import world_of

from .evaluate import evaluate_methods, interval_text, per_attribute, per_attribute_intervals, rates_table, summarise


def _truth(model):
    world = world_of(model)
    return world if world.has_readers else None


def _edited_mode(model, folder: Path, cases: list[dict]) -> tuple[list[dict], dict]:
    """Cases matching the folder's edits, and a factory undoing/redoing those edits in memory."""

    records = load_records(folder)
    pairs = set()
    for r in records:  # a batched record lists every edit's source and target
        src, tgt = r.info.get("source"), r.info.get("target")
        pairs |= set(zip(src, tgt)) if isinstance(src, list) else {(src, tgt)}
    chosen = [c for c in cases if (c["source"], c["target"]) in pairs] or cases
    return chosen, {"records": records}


def _methods(methods: list[str], preserve: bool) -> list[Method]:
    """Method objects from labels; ``preserve`` gives every editor that takes them the cases' preserve captions."""
    out = [as_method(m) for m in methods]
    if preserve:
        out = [Method(m.editor, True) if EDITORS.get(m.editor).takes_preserve else m for m in out]
    return list(dict.fromkeys(out))


def run_evaluate(model_spec: str, cases_path: Path, out: Path, methods: list[str], seeds: int, max_cases: int | None, scorer_spec: str,
                 refact_layer: int | None = None, progress=None, say=print, preserve: bool = False, together: int = 1,
                 sequential: bool = False, nullspace_rtol: float | None = None) -> dict:
    try:
        methods = _methods(methods, preserve) if methods else []
    except DifflocInputError as e:
        raise UsageError(str(e)) from None
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    cases = load_cases(cases_path)[:max_cases]
    groups = consecutive_groups(cases, together) if together != 1 or sequential else None
    model = load_model(model_spec)
    if not methods:  # default: every editor that can edit this model's family
        methods = _methods([m for m in method_labels() if EDITORS.get(as_method(m).editor).applies_to(model) and not as_method(m).nullspace],
                           preserve)
    scorer = load_scorer(scorer_spec)
    truth = _truth(model)
    cases = complete_cases(cases, world_of(model)) if truth is not None else cases  # plain cases: the world's templates
    if refact_layer is not None:
        default_options(model, (), layer=refact_layer)  # a clear error for a layer the encoder does not have
    folder = Path(model_spec)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress
    state: dict = {}
    options: dict | None = None
    if (folder / "edit.json").exists():
        cases, state = _edited_mode(model, folder, cases)  # noqa: F841 (state read again for the grid)
        records = state["records"]
        for rec in reversed(records):  # back to the unedited model for the baselines
            undo_edit(model, rec)
        table = evaluate_methods(model, cases, methods=(), seeds=range(seeds), scorer=scorer, truth=truth, progress=bar)
        for rec in records:
            redo_edit(model, rec)
        edited = evaluate_methods(model, cases, methods=(), seeds=range(seeds), scorer=scorer, truth=truth, baselines=("unedited",))
        edited = edited.assign(method="edited")  # the edited model on the original prompts
        table = pd.concat([table, edited], ignore_index=True)
    else:
        options = default_options(model, methods, layer=refact_layer)  # the corpus to the editors that take one
        if nullspace_rtol is not None:
            for name in takers("nullspace_rtol"):
                options.setdefault(name, {})["nullspace_rtol"] = nullspace_rtol
        table = evaluate_methods(model, cases, methods=methods, seeds=range(seeds), scorer=scorer, truth=truth, options=options,
                                 progress=bar, groups=groups, sequential=sequential)
    write_table(table, out / "eval.parquet")
    meta = {"model": model_spec, "cases": str(cases_path), "n_cases": len(cases), "seeds": seeds, "scorer": scorer.model_id,
            "refact_layer": refact_layer, "nullspace_rtol": nullspace_rtol, "together": together, "sequential": sequential,
            "completed_from_world": sum("completed_from" in c for c in cases),
            "run": f"diffloc evaluate --model {model_spec} --cases {cases_path} --seeds {seeds}"
                   + "".join(f" --method {m.label}" for m in methods) + (f" --refact-layer {refact_layer}" if refact_layer is not None else "")
                   + (f" --nullspace-rtol {nullspace_rtol}" if nullspace_rtol is not None else "")
                   + (f" --together {together}" if together != 1 else "") + (" --sequential" if sequential else "")}
    result = write_summary(out, table, meta, ground_truth=truth is not None)
    summary = result["methods"]
    edited_records = state["records"] if (folder / "edit.json").exists() else None
    grid = draw_grid(model, cases[0], methods if edited_records is None and groups is None else [], out / "grid.png", edited_records=edited_records,
                     options=options)
    for m, s in summary.items():
        say(f"{m:>18}: " + ", ".join(f"{k} {interval_text(s[k], s.get(k + '_ci'))} (n={s[k + '_n']})" for k in
                                      ("gt_efficacy", "gt_generalization", "gt_specificity", "gt_others", "efficacy") if k in s))
    say(f"-> {out / 'eval.parquet'}, {out / 'summary.json'}, {out / 'rates.md'}, {grid}")
    return result


def write_summary(out: Path, table: pd.DataFrame | None = None, meta: dict | None = None, ground_truth: bool | None = None) -> dict:
    """``summary.json``, ``rates.csv``, ``rates.md`` and ``rates.png`` of an evaluation folder, from
    ``table`` (default: its ``eval.parquet``); ``meta`` (default: the folder's summary.json, less its rates)."""
    out = Path(out)
    table = read_table(out / "eval.parquet") if table is None else table
    if meta is None:
        old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        meta = {k: v for k, v in old.items() if k not in ("methods", "per_attribute_gt", "per_attribute_gt_ci", "schema", "intervals")}
    ground_truth = "gt_success" in table if ground_truth is None else ground_truth
    summary = summarise(table)
    result = {**meta, "ground_truth": ground_truth, "methods": summary,
              "intervals": "95 %: <rate>_ci Wilson over images (gt_others: bootstrap over cases), <rate>_ci_cases bootstrap "
                           "over cases (2000 resamples), <rate>_n images"}
    if ground_truth:
        result["per_attribute_gt"] = {f"{m}/{a}": row for (m, a), row in per_attribute(table).to_dict("index").items()}
        result["per_attribute_gt_ci"] = per_attribute_intervals(table)
    write_json_format("summary", result, out / "summary.json")
    rates = rates_table(summary)
    rates.to_csv(out / "rates.csv", index=False)
    lines = ["| method | rate | value [95 % CI] | CI over cases | n (images) |", "|---|---|---|---|---|"]
    for r in rates.itertuples():
        cc = f"[{r.lo_cases:.3f}, {r.hi_cases:.3f}]" if r.lo_cases is not None and r.lo_cases == r.lo_cases else ""
        lines.append(f"| {r.method} | {r.rate} | {r.text} | {cc} | {r.n} |")
    (out / "rates.md").write_text("\n".join(lines) + "\n")
    plot_rates(summary, out / "rates.png", title=f"{meta.get('cases', '')}: {meta.get('n_cases', '?')} cases, {meta.get('seeds', '?')} seed(s)")
    return result


def plot_rates(summary: dict, path: Path, title: str = "") -> Path:
    """Grouped bars of the GT rates (CLIP where there is no GT) per method, 95 % intervals as error bars, n on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gt = any("gt_efficacy" in s for s in summary.values())
    names = ("gt_efficacy", "gt_generalization", "gt_specificity", "gt_others") if gt else ("efficacy", "generalization", "specificity")
    methods = list(summary)
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 3, 3.4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(methods):
            if name not in summary[m]:
                continue
            v, ci = summary[m][name], summary[m].get(f"{name}_ci", [summary[m][name]] * 2)
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(v), lo.append(max(0.0, v - ci[0])), hi.append(max(0.0, ci[1] - v))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=f"{name.removeprefix('gt_')} (n={summary[methods[-1]].get(name + '_n', '?')})")
    ax.set_xticks(range(len(methods)), methods, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ground-truth rate" if gt else "CLIP rate")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title((title + "; " if title else "") + "95 % intervals (Wilson; others: bootstrap over cases)", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    import sys

    for folder in sys.argv[1:]:
        write_summary(Path(folder))
        print(f"-> {folder}/summary.json, rates.csv, rates.md, rates.png")


@torch.no_grad()
def draw_grid(model, case: dict, methods: list[str], path: Path, seed: int = 0, edited_records: list | None = None,
              options: dict | None = None) -> Path:
    """Before/after grid for one case: rows = prompts, columns = unedited, oracle, each method.

    With ``edited_records`` (the model holds those edits), the edits are undone for the
    unedited and oracle columns and redone for an ``edited`` column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = case_prompts(case)
    prompts = [next(sp for sp in every if sp[0] == "edit")] + [sp for sp in every if sp[0] == "positive"][:2] \
        + [sp for sp in every if sp[0] == "negative"][:2]
    cfg = SamplerConfig.for_model(model)
    lat = initial_latents(model, torch.Generator().manual_seed(seed)).expand(len(prompts), -1, -1, -1)

    for r in reversed(edited_records or []):
        undo_edit(model, r)
    columns = {"unedited": generate(model, [p["prompt"] for _, p in prompts], cfg=cfg, latents=lat),
               "oracle": generate(model, [p["new"] if s != "negative" else p["prompt"] for s, p in prompts], cfg=cfg, latents=lat)}
    if options is None:
        options = default_options(model, methods)
    for m in methods:
        records = edit_case(m, model, case, options)
        try:
            columns[as_method(m).label] = generate(model, [p["prompt"] for _, p in prompts], cfg=cfg, latents=lat)
        finally:
            for r in reversed(records):
                undo_edit(model, r)
    for r in edited_records or []:
        redo_edit(model, r)
    if edited_records:
        columns["edited"] = generate(model, [p["prompt"] for _, p in prompts], cfg=cfg, latents=lat)
    fig, axes = plt.subplots(len(prompts), len(columns), figsize=(1.9 * len(columns) + 2.5, 1.9 * len(prompts)), squeeze=False)
    for c, (name, imgs) in enumerate(columns.items()):
        axes[0, c].set_title(name, fontsize=9)
        for r in range(len(prompts)):
            axes[r, c].imshow(imgs[r].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    for r, (split, p) in enumerate(prompts):
        axes[r, 0].set_ylabel(f"{split}\n{p['prompt'][:38]}", fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(f"{case['id']}: '{case['source']}' -> '{case['target']}' (seed {seed})", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path

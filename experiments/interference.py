"""The interference matrix: each edit's damage to each preserved concept, alone and with N edits together.

Usage::

    OMP_NUM_THREADS=1 python -m experiments.interference --model toy --method quickfix+nullspace \
        --out results/reference/interference_toy_nullspace
    OMP_NUM_THREADS=1 python -m experiments.interference --model toy-dit --method context-embedder+nullspace \
        --nullspace-rtol 0.01 --out results/reference/interference_dit_nullspace
    python -m experiments.interference --out DIR --summarise-only          # rebuild summary.json and the heatmap
    python -m experiments.interference --out DIR --method M --redo-together  # recompute only the all-N row

The edit set is the largest conflict-free group of the cases file (:func:`editing.batch.filled_groups`:
19 edits on the committed cases). A *preserved concept* is one (attribute, value) that the cases'
negative prompts hold fixed ('colour = green'); its prompts are those negatives (at most
``--per-concept`` of them, in file order). Rows of the matrix:

- ``unedited``: the clean model, the concept's own fidelity (what a cell is to be compared with);
- one row per edit, applied **alone** to the clean model: cell (edit, concept) is the ground-truth
  specificity of the concept's prompts (the image still shows the concept's value); a prompt in
  which the model's edits map the concept's own word is not a preserved prompt there and is left out
  (:func:`diffloc.evaluate.expected`), so a cell can be empty ('ed.');
- one row ``all N``: the N edits made together (one solve, as ``diffloc edit --cases``).

Beside the matrix, each edit's ground-truth efficacy on its own edit prompts, alone and in the
N-edit model (where it shares the weights with the others). Every cell carries its n (images)
and its 95 % Wilson interval in ``summary.json``; the heatmap writes the value and n in each cell.
One seed per prompt (``--seeds`` for more). Writes ``rows.parquet`` (one row per image),
``summary.json`` and ``interference.png``; a rerun reuses ``rows.parquet``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from diffloc.editing.batch import apply_cases, filled_groups
from diffloc.editing.cases import case_prompts, load_cases
from diffloc.editing.editors import Method, as_method, edit_case
from diffloc.editing.records import undo_edit
from diffloc.evaluate import _generate, expected, wilson
from diffloc.tracing.io import read_table, write_json_format, write_table
from diffloc.tracing.models import load_model
from diffloc.tracing.sampler import SamplerConfig
from diffloc.tracing.worlds import world_of


def edit_set(cases: list[dict]) -> list[dict]:
    """The largest conflict-free set of edits, in file order (every case goes into the first group with room)."""
    groups = filled_groups(cases, len({c["source"] for c in cases}))
    return [cases[i] for i in sorted(groups[0].edited)]


def preserved(cases: list[dict], truth, per_concept: int) -> dict[str, list[str]]:
    """Preserved concepts from the cases' negatives, keyed ``attribute=value`` by the world's parse."""
    out: dict[str, list[str]] = {}
    for c in cases:
        for split, p in case_prompts(c):
            if split != "negative":
                continue
            value = truth.parse_caption(p["prompt"]).get(c["attribute"])
            prompts = out.setdefault(f"{c['attribute']}={value}", [])
            if p["prompt"] not in prompts and len(prompts) < per_concept:
                prompts.append(p["prompt"])
    return dict(sorted(out.items()))


def _score(model, truth, texts, seeds, cfg, edits) -> list[dict]:
    """One row per image: what the world reads against what ``edits`` should make of each caption."""
    images = _generate(model, texts, seeds, cfg, batch=64)
    rows = []
    for j, text in enumerate(texts):
        want = expected(truth, text, edits)
        for i, s in enumerate(seeds):
            got = truth.read(images[j * len(seeds) + i])
            rows.append({"prompt": text, "seed": int(s), "reading": got, "want": want, "own": dict(truth.parse_caption(text))})
    return rows


def _row(model, truth, name: str, edits: list[dict], concept_prompts: dict, seeds, cfg) -> list[dict]:
    """Specificity rows of every concept and efficacy rows of every edit in ``edits``, on the current model."""
    out = []
    for concept, prompts in concept_prompts.items():
        attribute = concept.split("=")[0]
        for r in _score(model, truth, prompts, seeds, cfg, edits):
            if r["want"].get(attribute) != r["own"].get(attribute):  # an edit maps this concept's word: not preserved here
                continue
            out.append({"row": name, "kind": "specificity", "column": concept, "prompt": r["prompt"], "seed": r["seed"],
                        "success": float(r["reading"].get(attribute) == r["want"].get(attribute))})
    for e in edits:
        texts = [p["prompt"] for split, p in case_prompts(e) if split == "edit"]
        for r in _score(model, truth, texts, seeds, cfg, edits):
            out.append({"row": name, "kind": "efficacy", "column": e["id"], "prompt": r["prompt"], "seed": r["seed"],
                        "success": float(r["reading"].get(e["attribute"]) == e["new_value"])})
    return out


def together(model, truth, method: Method, options, edits: list[dict], concept_prompts: dict, seeds, cfg) -> list[dict]:
    """The ``all N`` row: every edit made in one solve, then undone."""
    records = apply_cases(model, method, edits, options)
    try:
        return _row(model, truth, f"all {len(edits)}", edits, concept_prompts, seeds, cfg)
    finally:
        for rec in reversed(records):
            undo_edit(model, rec)


def redo_together(out: Path, method: Method, options: dict | None, cases_path: str, seeds: int, per_concept: int) -> pd.DataFrame:
    """Recompute only the ``all N`` row of a finished run (``--redo-together``), keeping the single-edit rows."""
    table = read_table(out / "rows.parquet")
    model = load_model(str(table.model.iloc[0]))
    truth, cases = world_of(model), load_cases(cases_path)
    rows = together(model, truth, method, options, edit_set(cases), preserved(cases, truth, per_concept), list(range(seeds)),
                    SamplerConfig.for_model(model))
    keep = table[~table.row.str.startswith("all ")]
    new = pd.DataFrame(rows).assign(model=table.model.iloc[0], method=method.label, seconds=float(table.seconds.iloc[0]))
    table = pd.concat([keep, new], ignore_index=True)
    write_table(table, out / "rows.parquet")
    return table


def run(out: Path, model_spec: str, cases_path: str, method: Method, options: dict | None, seeds: int, per_concept: int,
        say=print) -> pd.DataFrame:
    """Every edit alone, then all together; rows written once to ``out/rows.parquet``."""
    path = out / "rows.parquet"
    if path.exists():
        return read_table(path)
    torch.manual_seed(0)
    model = load_model(model_spec)
    truth = world_of(model)
    cases = load_cases(cases_path)
    edits = edit_set(cases)
    concept_prompts = preserved(cases, truth, per_concept)
    cfg, seed_list = SamplerConfig.for_model(model), list(range(seeds))
    t0 = time.perf_counter()
    rows = _row(model, truth, "unedited", [], concept_prompts, seed_list, cfg)  # the model's own fidelity on each concept
    for e in edits:
        records = edit_case(method, model, e, options)
        try:
            rows += _row(model, truth, e["id"], [e], concept_prompts, seed_list, cfg)
        finally:
            for rec in reversed(records):
                undo_edit(model, rec)
        say(f"{e['id']}: {time.perf_counter() - t0:.0f}s")
    rows += together(model, truth, method, options, edits, concept_prompts, seed_list, cfg)
    table = pd.DataFrame(rows).assign(model=model_spec, method=method.label, seconds=time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, path)
    return table


def cells(table: pd.DataFrame) -> dict:
    """``{row: {column: {value, ci, n}}}`` for specificity and efficacy (95 % Wilson intervals over images)."""
    out: dict = {"specificity": {}, "efficacy": {}}
    for (kind, row, column), g in table.groupby(["kind", "row", "column"], sort=False):
        k, n = float(g.success.sum()), int(len(g))
        out[kind].setdefault(row, {})[column] = {"value": round(k / n, 4), "ci": [round(x, 4) for x in wilson(k, n)], "n": n}
    return out


def summarise(out: Path, table: pd.DataFrame, meta: dict) -> dict:
    c = cells(table)
    rows = list(dict.fromkeys(table.row))
    together = rows[-1]
    spec = table[table.kind == "specificity"]
    alone = spec[(spec.row != together) & (spec.row != "unedited")]
    def share(part: pd.DataFrame) -> dict:
        k, n = float(part.success.sum()), int(len(part))
        return {"value": round(k / n, 4) if n else None, "ci": list(wilson(k, n)), "n": n}

    worst = min(((r, col, v["value"]) for r, cols in c["specificity"].items() if r not in (together, "unedited") for col, v in cols.items()),
                key=lambda x: x[2], default=(None, None, None))
    result = {**meta, "rows": rows, "columns": list(dict.fromkeys(spec.column)), "cells": c,
              "specificity_unedited": share(spec[spec.row == "unedited"]),
              "specificity_alone": share(alone), "specificity_together": share(spec[spec.row == together]),
              "worst_cell": {"edit": worst[0], "concept": worst[1], "value": worst[2]},
              "intervals": "95 % Wilson over images; n per cell in cells[...]['n']"}
    write_json_format("summary", result, out / "summary.json")
    plot(result, out / "interference.png")
    return result


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = result["rows"], result["columns"]
    spec, eff = result["cells"]["specificity"], result["cells"]["efficacy"]
    M = np.array([[spec.get(r, {}).get(c, {}).get("value", np.nan) for c in cols] for r in rows])
    edits = [r for r in rows[:-1] if r in eff]
    E = np.array([[eff[r][r]["value"], eff[rows[-1]][r]["value"]] if r in eff else [np.nan, np.nan] for r in rows[:-1]]
                 + [[np.mean([eff[r][r]["value"] for r in edits]), np.mean(list(v["value"] for v in eff[rows[-1]].values()))]])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(0.42 * len(cols) + 4.5, 0.32 * len(rows) + 2.2),
                                 gridspec_kw={"width_ratios": [len(cols), 2.4]}, layout="constrained")
    im = ax.imshow(M, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = "ed." if M[i, j] != M[i, j] else f"{M[i, j]:.1f}".lstrip("0") if M[i, j] < 1 else "1"
            ax.text(j, i, text, ha="center", va="center", fontsize=6)
    n_cell = max(v["n"] for r in spec.values() for v in r.values())
    ax.set_xticks(range(len(cols)), cols, rotation=70, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.axhline(len(rows) - 1.5, color="black", lw=1.2)
    ax.axhline(0.5, color="black", lw=1.2)
    ax.set_title(f"specificity per preserved concept (GT; ≤{n_cell} images per cell;\n'ed.': the edits map this concept's word; top row: unedited)",
                 fontsize=8)
    bx.imshow(E, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(len(rows)):
        for j in range(2):
            if E[i, j] == E[i, j]:
                bx.text(j, i, f"{E[i, j]:.2f}", ha="center", va="center", fontsize=6)
    bx.set_xticks([0, 1], ["alone", f"in {rows[-1]}"], fontsize=7)
    bx.set_yticks([])
    bx.set_title("own efficacy (GT)\nlast row: mean", fontsize=8)
    fig.colorbar(im, ax=bx, fraction=0.3)
    a, t = result["specificity_alone"], result["specificity_together"]
    def fmt(x: dict) -> str:
        return f"{x['value']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}] (n={x['n']})" if x["n"] else "— (n=0)"

    fig.suptitle(f"{result['method']} on {result['model']}: {len(rows) - 2} edits, each alone and all together\n"
                 f"specificity alone {fmt(a)}, together {fmt(t)}", fontsize=9)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="toy", help="toy (UNet) or toy-dit")
    p.add_argument("--cases", default="experiments/cases/toy_edits.jsonl")
    p.add_argument("--method", default="quickfix+nullspace", help="a method label, as diffloc evaluate takes")
    p.add_argument("--nullspace-rtol", type=float, default=None, help="+nullspace's rank threshold (default: the editor's)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--per-concept", type=int, default=3, help="negative prompts per preserved concept")
    p.add_argument("--summarise-only", action="store_true")
    p.add_argument("--redo-together", action="store_true", help="recompute only the all-N row of a finished run")
    args = p.parse_args(argv)
    out, method = Path(args.out), as_method(args.method)
    options = {method.editor: {"nullspace_rtol": args.nullspace_rtol}} if args.nullspace_rtol is not None else None
    if args.summarise_only:
        table = read_table(out / "rows.parquet")
    elif args.redo_together:
        table = redo_together(out, method, options, args.cases, args.seeds, args.per_concept)
    else:
        table = run(out, args.model, args.cases, method, options, args.seeds, args.per_concept)
    meta = {"model": str(table.model.iloc[0]), "method": str(table.method.iloc[0]), "cases": args.cases, "seeds": args.seeds,
            "per_concept": args.per_concept, "nullspace_rtol": args.nullspace_rtol, "seconds": round(float(table.seconds.iloc[0]), 1),
            "run": "python -m experiments.interference " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    summarise(out, table, meta)
    print(f"-> {out / 'summary.json'}, {out / 'interference.png'}")


if __name__ == "__main__":
    main()

"""Many edits at once on the toy world: GT rates for N = 1, 4, 12 and the largest conflict-free N.

Usage::

    OMP_NUM_THREADS=1 python -m experiments.many_edits --seeds 2 --every 3      # a subset: 8 of 24 cases evaluated
    OMP_NUM_THREADS=1 python -m experiments.many_edits --seeds 10               # everything (hours on one core)

Every evaluated case is evaluated on a model carrying exactly N edits of the committed set
(:func:`editing.batch.filled_groups`: cases in file order go into the first group with room
and no conflict, so red→blue shares a model with green→yellow; short groups are filled with
other cases' edits, carried but not evaluated twice). The committed set maps five sources to
two targets each (red, blue, striped, two, top), so at most 19 edits fit one model: N = 24 is
not a conflict-free batch. The method is the best editor, quickfix with the cases' preserve
captions; ``batched`` is one stacked solve (preserve captions of the group together, minus
those naming another case's source), ``sequential`` one solve per edit on the model the last
one left. Batched, each case's target prompts expect the other edits of its model
(:mod:`editing.compose`), ``batched-independent`` takes each case's values from its own target
prompts alone, as before that fix, to measure what it is worth. ``sequential`` is not composed
(each edit reads its values off the model the earlier ones left); ``sequential-composed``
composes with all the others anyway, to show that this costs specificity. Each (N, mode) writes its own ``n{N}_{mode}.parquet`` (a rerun skips finished
ones); ``summary.json`` and ``many_edits.png`` are rebuilt from whatever files exist.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from diffloc.editing.batch import Group, filled_groups
from diffloc.editing.cases import load_cases
from diffloc.editing.editors import Method
from diffloc.evaluate import evaluate_methods
from diffloc.tracing.io import read_table, write_json_format, write_table
from diffloc.tracing.models import load_model
from diffloc.tracing.worlds import world_of

METHOD = Method("quickfix", preserve=True)
MODES = {"batched": (False, True), "batched-independent": (False, False),  # mode: (sequential, compose)
         "sequential": (True, False), "sequential-composed": (True, True)}
RATES = {"gt_efficacy": "edit", "gt_generalization": "positive", "gt_specificity": "negative"}


def subset_groups(cases: list[dict], n: int, evaluated: set[int]) -> list[Group]:
    """``filled_groups``, keeping only evaluated cases as evaluated (the rest are carried)."""
    out = []
    for g in filled_groups(cases, n):
        keep = tuple(i for i in g.cases if i in evaluated)
        if keep:
            out.append(Group(keep, tuple(i for i in g.edited if i not in keep)))
    return out


def rates(table: pd.DataFrame) -> dict:
    out = {name: round(float(table[table.split == split].gt_success.mean()), 4) for name, split in RATES.items()}
    out["gt_others"] = round(float(table.gt_others.mean()), 4)
    out["n_images"] = int(len(table))
    return out


def run(out: Path, cases_path: str, seeds: int, every: int, ns: list[int], modes: list[str], say=print) -> dict:
    cases = load_cases(cases_path)
    evaluated = set(range(0, len(cases), every))
    model = load_model("toy")
    truth = world_of(model)
    out.mkdir(parents=True, exist_ok=True)
    eval_cases = [cases[i] for i in sorted(evaluated)]
    base = out / "baselines.parquet"
    if not base.exists():
        t0 = time.perf_counter()
        write_table(evaluate_methods(model, eval_cases, methods=(), seeds=range(seeds), truth=truth), base)
        say(f"baselines: {time.perf_counter() - t0:.0f}s")
    for n in ns:
        for mode in modes:
            path = out / f"n{n}_{mode}.parquet"
            if path.exists() or (n == 1 and mode != "batched"):  # one edit: every mode is the same
                continue
            t0 = time.perf_counter()
            table = evaluate_methods(model, cases, methods=[METHOD], seeds=range(seeds), truth=truth, baselines=(),
                                     groups=subset_groups(cases, n, evaluated), sequential=MODES[mode][0],
                                     compose=MODES[mode][1])
            write_table(table.assign(seconds=time.perf_counter() - t0), path)
            say(f"N={n} {mode}: {time.perf_counter() - t0:.0f}s " + str(rates(table)))
    return summarise(out, cases_path, seeds, sorted(evaluated))


def summarise(out: Path, cases_path: str, seeds: int, evaluated: list[int]) -> dict:
    base = read_table(out / "baselines.parquet")
    result = {"cases": cases_path, "method": METHOD.label, "seeds": seeds, "evaluated_cases": evaluated,
              "baselines": {m: rates(g) for m, g in base.groupby("method")}, "runs": {}}
    for path in sorted(out.glob("n*_*.parquet")):
        t = read_table(path)
        n, mode = path.stem[1:].split("_")
        r = rates(t)
        r.update(n_edits=int(n), mode=mode, seconds=round(float(t.seconds.iloc[0]), 1))
        r["per_attribute_efficacy"] = t[t.split == "edit"].groupby("attribute").gt_success.mean().round(3).to_dict()
        result["runs"][path.stem] = r
    write_json_format("summary", result, out / "summary.json")
    plot(result, out / "many_edits.png")
    return result


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), sharey=True)
    runs = result["runs"].values()
    for ax, key in zip(axes, ("gt_efficacy", "gt_generalization", "gt_specificity", "gt_others")):
        for mode, style in (("batched", "o-"), ("sequential", "s-"), ("batched-independent", "o:"), ("sequential-composed", "s:")):
            pts = sorted((r["n_edits"], r[key]) for r in runs if r["mode"] == mode or r["n_edits"] == 1)
            if pts:
                ax.plot(*zip(*pts), style, label=mode)
        for name, colour in (("oracle", "green"), ("unedited", "grey")):
            if name in result["baselines"]:
                ax.axhline(result["baselines"][name][key], color=colour, lw=0.8, ls=":", label=name)
        ax.set_title(key.removeprefix("gt_"), fontsize=10)
        ax.set_xlabel("edits in the model (N)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ground-truth rate")
    axes[-1].legend(fontsize=7, loc="lower left")
    n_cases, seeds = len(result["evaluated_cases"]), result["seeds"]
    fig.suptitle(f"{result['method']}: N edits at once (toy world, {n_cases} cases evaluated x 11 prompts x {seeds} seeds)", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/reference/many_edits")
    p.add_argument("--cases", default="experiments/cases/toy_edits.jsonl")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--every", type=int, default=1, help="evaluate every k-th case (all cases are still edited in)")
    p.add_argument("--n", type=int, nargs="*", default=None, help="N values (default: 1, 4, 12 and the largest conflict-free N)")
    p.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES))
    args = p.parse_args(argv)
    ns = args.n or [1, 4, 12, len({c["source"] for c in load_cases(args.cases)})]
    run(Path(args.out), args.cases, args.seeds, args.every, ns, args.modes)


if __name__ == "__main__":
    main()

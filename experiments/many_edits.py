"""Many edits at once on the toy world: GT rates for N = 1, 4, 12 and the largest conflict-free N.

Usage::

    OMP_NUM_THREADS=1 python -m experiments.many_edits --modes batched \
        --reuse results/reference/edit_eval_v5/eval.parquet        # all 24 cases evaluated, 1 seed (the committed run)
    OMP_NUM_THREADS=1 python -m experiments.many_edits --seeds 10               # every mode, 10 seeds (hours on one core)
    OMP_NUM_THREADS=1 python -m experiments.many_edits --model toy-dit --method context-embedder+nullspace \
        --nullspace-rtol 0.01 --modes batched --out results/reference/many_edits_dit_nullspace

``--reuse`` takes the baselines (unedited, oracle) and the N = 1 rows (quickfix+preserve on a
clean model, one case at a time: exactly what N = 1 computes) from an evaluation table of the
same cases and seeds instead of computing them again. Every rate carries its 95 % Wilson
interval and its n (images) in ``summary.json``, ``rates.md``, and as error bars in the plot.

Every evaluated case is evaluated on a model carrying exactly N edits of the committed set
(:func:`editing.batch.filled_groups`: cases in file order go into the first group with room
and no conflict, so red→blue shares a model with green→yellow; short groups are filled with
other cases' edits, carried but not evaluated twice). The committed set maps five sources to
two targets each (red, blue, striped, two, top), so at most 19 edits fit one model: N = 24 is
not a conflict-free batch. The method (``--method``, a label as ``diffloc evaluate`` takes) is by
default the best editor, quickfix with the cases' preserve captions; ``+nullspace`` keeps those
captions' keys exactly (``--nullspace-rtol``: its rank threshold); ``--model`` picks the world's
model (``toy``, ``toy-dit``); ``batched`` is one stacked solve (preserve captions of the group together, minus
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
from diffloc.editing.editors import Method, as_method
from diffloc.evaluate import evaluate_methods, interval_text, rate
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
    """GT rates with their 95 % Wilson interval (``_ci``; ``gt_others``: bootstrap over cases) and n (``_n``)."""
    out: dict = {}
    for name, split in RATES.items():
        part = table[table.split == split]
        r = rate(part.gt_success, part.case)
        out.update({name: r["value"], f"{name}_ci": r["ci"], f"{name}_ci_cases": r["ci_cases"], f"{name}_n": r["n"]})
    r = rate(table.gt_others, table.case, proportion=False)
    out.update(gt_others=r["value"], gt_others_ci=r["ci"], gt_others_n=r["n"])
    out["n_images"] = int(len(table))
    out["n_cases"] = int(table.case.nunique())
    return out


def _reuse(out: Path, source: Path, cases: list[dict], evaluated: list[int], seeds: int, say=print, method: Method = METHOD) -> None:
    """Baselines and the N = 1 table from an evaluation table of the same cases and seeds."""
    t = read_table(source)
    ids = {cases[i]["id"] for i in evaluated}
    t = t[t.case.isin(ids) & (t.seed < seeds)]
    if set(t.case) != ids or t.seed.nunique() != seeds:
        raise SystemExit(f"{source} does not hold the {len(ids)} evaluated cases at {seeds} seeds; run without --reuse")
    base, n1 = out / "baselines.parquet", out / "n1_batched.parquet"
    if not base.exists():
        write_table(t[t.method.isin(["unedited", "oracle"])].reset_index(drop=True), base)
    if not n1.exists():
        rows = t[t.method == method.label].assign(n_edits=1, mode="batched", composed=False, seconds=float("nan"),
                                                  reused_from=str(source)).reset_index(drop=True)
        if rows.empty:
            raise SystemExit(f"{source} has no {method.label} rows")
        write_table(rows, n1)
    say(f"baselines and N=1 from {source}")


def run(out: Path, cases_path: str, seeds: int, every: int, ns: list[int], modes: list[str], say=print,
        reuse: Path | None = None, model_spec: str = "toy", method: Method = METHOD, options: dict | None = None) -> dict:
    cases = load_cases(cases_path)
    evaluated = set(range(0, len(cases), every))
    model = load_model(model_spec)
    truth = world_of(model)
    out.mkdir(parents=True, exist_ok=True)
    if reuse is not None:
        _reuse(out, reuse, cases, sorted(evaluated), seeds, say, method)
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
            table = evaluate_methods(model, cases, methods=[method], seeds=range(seeds), truth=truth, baselines=(), options=options,
                                     groups=subset_groups(cases, n, evaluated), sequential=MODES[mode][0],
                                     compose=MODES[mode][1])
            write_table(table.assign(seconds=time.perf_counter() - t0), path)
            say(f"N={n} {mode}: {time.perf_counter() - t0:.0f}s " + str(rates(table)))
    return summarise(out, cases_path, seeds, sorted(evaluated), method, model_spec, options)


def summarise(out: Path, cases_path: str, seeds: int, evaluated: list[int], method: Method = METHOD, model_spec: str = "toy",
              options: dict | None = None) -> dict:
    base = read_table(out / "baselines.parquet")
    result = {"cases": cases_path, "model": model_spec, "method": method.label, "options": options or {}, "seeds": seeds, "evaluated_cases": evaluated,
              "baselines": {m: rates(g) for m, g in base.groupby("method")}, "runs": {}}
    for path in sorted(out.glob("n*_*.parquet")):
        t = read_table(path)
        n, mode = path.stem[1:].split("_")
        r = rates(t)
        seconds = float(t.seconds.iloc[0])
        r.update(n_edits=int(n), mode=mode, seconds=round(seconds, 1) if seconds == seconds else None)
        if "reused_from" in t:
            r["reused_from"] = str(t.reused_from.iloc[0])
        per = {a: rate(g.gt_success) for a, g in t[t.split == "edit"].groupby("attribute")}
        r["per_attribute_efficacy"] = {a: x["value"] for a, x in per.items()}
        r["per_attribute_efficacy_ci"] = per  # {attribute: {value, ci (Wilson), n}}
        result["runs"][path.stem] = r
    result["intervals"] = "95 %: <rate>_ci Wilson over images (gt_others: bootstrap over cases), <rate>_ci_cases bootstrap over cases, <rate>_n images"
    write_json_format("summary", result, out / "summary.json")
    write_rates(result, out / "rates.md")
    plot(result, out / "many_edits.png")
    return result


def write_rates(result: dict, path: Path) -> Path:
    """A markdown table: one row per run (and baseline), each rate as 'value [lo, hi]' with its n."""
    names = ("gt_efficacy", "gt_generalization", "gt_specificity", "gt_others")
    lines = ["| N | mode | " + " | ".join(f"{n.removeprefix('gt_')} [95 % CI] (n)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    rows = [("—", m, r) for m, r in result["baselines"].items()]
    rows += [(r["n_edits"], r["mode"], r) for r in sorted(result["runs"].values(), key=lambda r: (r["n_edits"], r["mode"]))]
    for n, mode, r in rows:
        lines.append(f"| {n} | {mode} | " + " | ".join(f"{interval_text(r[k], r.get(k + '_ci'))} ({r[k + '_n']})" for k in names) + " |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), sharey=True)
    runs = result["runs"].values()
    for ax, key in zip(axes, ("gt_efficacy", "gt_generalization", "gt_specificity", "gt_others")):
        for mode, style in (("batched", "o-"), ("sequential", "s-"), ("batched-independent", "o:"), ("sequential-composed", "s:")):
            pts = sorted((r["n_edits"], r[key], *r[f"{key}_ci"]) for r in runs if r["mode"] == mode or r["n_edits"] == 1)
            if len(pts) > 1 or (pts and mode == "batched"):
                x, y, lo, hi = zip(*pts)
                ax.errorbar(x, y, yerr=[[max(0.0, a - b) for a, b in zip(y, lo)], [max(0.0, b - a) for a, b in zip(y, hi)]],
                            fmt=style, capsize=3, label=mode)
        for name, colour in (("oracle", "green"), ("unedited", "grey")):
            if name in result["baselines"]:
                b = result["baselines"][name]
                ax.axhline(b[key], color=colour, lw=0.8, ls=":", label=name)
                ax.axhspan(*b[f"{key}_ci"], color=colour, alpha=0.08)
        n_img = next((r[f"{key}_n"] for r in runs), None)
        ax.set_title(key.removeprefix("gt_") + (f" (n={n_img} per point)" if n_img else ""), fontsize=9)
        ax.set_xlabel("edits in the model (N)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ground-truth rate")
    axes[-1].legend(fontsize=7, loc="lower left")
    n_cases, seeds = len(result["evaluated_cases"]), result["seeds"]
    fig.suptitle(f"{result['method']} on {result.get('model', 'toy')}: N edits at once (toy world, {n_cases} cases evaluated, {seeds} seed(s); "
                 "bars: 95 % intervals, Wilson; others: bootstrap over cases)", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/reference/many_edits_v2")
    p.add_argument("--cases", default="experiments/cases/toy_edits.jsonl")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--reuse", type=Path, default=None, help="eval.parquet of the same cases and seeds: baselines and N = 1 from it")
    p.add_argument("--every", type=int, default=1, help="evaluate every k-th case (all cases are still edited in)")
    p.add_argument("--n", type=int, nargs="*", default=None, help="N values (default: 1, 4, 12 and the largest conflict-free N)")
    p.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES))
    p.add_argument("--model", default="toy", help="the world's model: toy (UNet) or toy-dit")
    p.add_argument("--method", default=METHOD.label, help="a method label, as diffloc evaluate takes (e.g. context-embedder+nullspace)")
    p.add_argument("--nullspace-rtol", type=float, default=None, help="+nullspace's rank threshold (default: the editor's)")
    args = p.parse_args(argv)
    ns = args.n or [1, 4, 12, len({c["source"] for c in load_cases(args.cases)})]
    method = as_method(args.method)
    options = {method.editor: {"nullspace_rtol": args.nullspace_rtol}} if args.nullspace_rtol is not None else None
    run(Path(args.out), args.cases, args.seeds, args.every, ns, args.modes, reuse=args.reuse, model_spec=args.model, method=method,
        options=options)


if __name__ == "__main__":
    main()

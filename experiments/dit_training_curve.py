"""toy-dit fidelity along training: exported snapshots, each scored by the exact readers, into one table and figure.

Usage::

    python -m experiments.dit_training_curve --snaps /work/runs/snap --out results/reference/toy_dit_continue

``--snaps`` holds one folder per exported snapshot (a ``dit/`` export of ``train_dit`` copied
as ``r<run>_<step>``) with ``eval/toy_eval.json`` inside (``python -m diffloc_toy.evaluate --out
SNAP/eval --model SNAP --n-per-value 25``). Each snapshot's recipe comes from its own
``diffloc.json``; a warm-started run's steps are counted on top of its parent's (``init_from``'s
run, read from the shipped model's ``steps_trained``). The shipped model's evaluation
(``results/reference/toy_dit_eval/toy_eval.json``) is the first point of every warm-started run. Writes
``curve.json`` (fidelity per attribute with Wilson 95 % intervals and n) and ``curve.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_EVAL = ROOT / "results" / "reference" / "toy_dit_eval" / "toy_eval.json"
SHIPPED_META = ROOT / "experiments" / "toy" / "weights" / "dit" / "diffloc.json"
ATTRS = ("object", "colour", "style", "viewpoint", "count")


def _point(run: str, step: int, ev: dict, recipe: dict) -> dict:
    from diffloc.evaluate import wilson

    n = ev["n_samples"]
    fid = {a: {"rate": ev["fidelity"][a], "ci": [round(x, 3) for x in wilson(round(ev["fidelity"][a] * n), n)]}
           for a in (*ATTRS, "all")}
    return {"run": run, "steps_total": step, "n": n, "fidelity": fid,
            "scorer_agreement_generated": ev["clip_agreement"]["generated"], "recipe": recipe}


def collect(snaps: Path) -> list[dict]:
    """One point per evaluated snapshot, plus the shipped model as the start of every warm-started run, sorted by run
    and step."""
    base_steps = json.loads(SHIPPED_META.read_text())["steps_trained"]
    points, runs = [], set()
    for d in sorted(snaps.glob("r*_*")):
        ev_path = d / "eval" / "toy_eval.json"
        if not ev_path.exists():
            continue
        cfg = json.loads((d / "diffloc.json").read_text())["train_config"]
        run = d.name.split("_")[0]
        if cfg.get("init_from"):
            runs.add(run)
        recipe = {k: cfg[k] for k in ("seed", "lr", "warmup", "steps", "batch", "patch_size", "uniform_t_share", "init_from")
                  if k in cfg}
        start = base_steps if cfg.get("init_from") else 0
        points.append(_point(run, start + int(d.name.split("_")[1]), json.loads(ev_path.read_text()), recipe))
    shipped = json.loads(SHIPPED_EVAL.read_text())
    points += [_point(run, base_steps, shipped, {"shipped": True}) for run in sorted(runs)]
    return sorted(points, key=lambda p: (p["run"], p["steps_total"]))


def draw(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({p["run"] for p in points})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, attr in zip(axes, ("object", "count", "style")):
        for run in runs:
            pts = [p for p in points if p["run"] == run]
            x = [p["steps_total"] for p in pts]
            y = [p["fidelity"][attr]["rate"] for p in pts]
            lo = [p["fidelity"][attr]["rate"] - p["fidelity"][attr]["ci"][0] for p in pts]
            hi = [p["fidelity"][attr]["ci"][1] - p["fidelity"][attr]["rate"] for p in pts]
            r = next(p["recipe"] for p in pts if "shipped" not in p["recipe"])
            label = f"{run}: lr {r.get('lr')}, uniform t {r.get('uniform_t_share', 0)}"
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.axhline(0.95, color="grey", ls="--", lw=1)
        ax.set_title(f"{attr} fidelity (exact reader, n = {points[0]['n']} per point, Wilson 95 %)", fontsize=9)
        ax.set_xlabel("training steps in all (shipped run: 3,500)")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("fidelity")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from diffloc.tracing.io import write_plain_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--snaps", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    points = collect(a.snaps)
    a.out.mkdir(parents=True, exist_ok=True)
    write_plain_json(points, a.out / "curve.json")
    draw(points, a.out / "curve.png")
    print(a.out / "curve.json", a.out / "curve.png")


if __name__ == "__main__":
    main()

"""toy-dit fidelity along training: exported snapshots, each scored by the exact readers, into one table and figure.

Usage::

    python -m experiments.dit_training_curve --snaps /work/runs/snap --out results/reference/toy_dit_continue

``--snaps`` holds one folder per exported snapshot (a ``dit/`` export of ``train_dit`` copied
as ``r<run>_<step>``) with ``eval/toy_eval.json`` inside (``python -m diffloc_toy.evaluate --out
SNAP/eval --model SNAP --n-per-value 25``). Each snapshot's recipe comes from its own
``diffloc.json``; a warm-started run's steps are counted on top of its parent's (``init_from``'s
run, read from the pixel model's ``steps_trained``). The pixel model's evaluation
(``results/reference/toy_dit_pixel_eval/toy_eval.json``) is the first point of every warm-started run. Writes
``curve.json`` (fidelity per attribute with Wilson 95 % intervals and n) and ``curve.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_EVAL = ROOT / "results" / "reference" / "toy_dit_pixel_eval" / "toy_eval.json"
SHIPPED_META = ROOT / "experiments" / "toy" / "weights" / "dit_pixel" / "diffloc.json"
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
    from experiments.fidelity_plot import draw_curves

    series = []
    for run in sorted({p["run"] for p in points}):
        pts = [p for p in points if p["run"] == run]
        r = next(p["recipe"] for p in pts if "shipped" not in p["recipe"])
        start = "warm start" if r.get("init_from") else "from scratch"
        label = f"{run}: {start}, patch {r.get('patch_size', 4)}, lr {r.get('lr')}, uniform t {r.get('uniform_t_share', 0)}"
        series.append((label, [p["steps_total"] for p in pts], [p["fidelity"] for p in pts]))
    draw_curves(series, ("object", "count", "style"), path, xlabel="training steps in all (shipped run: 3,500)",
                title="{attr} fidelity (exact reader, n = %d per point, Wilson 95 %%)" % points[0]["n"])


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

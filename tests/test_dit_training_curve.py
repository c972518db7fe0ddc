"""experiments.dit_training_curve: snapshot steps count on top of the parent run, intervals are Wilson's, the shipped
model starts every warm-started run."""
from __future__ import annotations

import json

from experiments.dit_training_curve import collect, draw


def _snap(root, name, fidelity, cfg):
    d = root / name
    (d / "eval").mkdir(parents=True)
    ev = {"n_samples": 100, "fidelity": {**{a: 1.0 for a in ("colour", "style", "viewpoint", "count")}, **fidelity, "all": 0.2},
          "clip_agreement": {"generated": {"object": 0.5}}}
    (d / "eval" / "toy_eval.json").write_text(json.dumps(ev))
    (d / "diffloc.json").write_text(json.dumps({"train_config": cfg}))


def test_warm_started_snapshots_count_the_parent_steps_and_carry_wilson_intervals(tmp_path):
    _snap(tmp_path, "r2_500", {"object": 0.4}, {"lr": 5e-4, "init_from": "x/ckpt/dit.pt", "uniform_t_share": 0.0})
    _snap(tmp_path, "r2_1000", {"object": 0.5}, {"lr": 5e-4, "init_from": "x/ckpt/dit.pt", "uniform_t_share": 0.0})
    _snap(tmp_path, "r9_200", {"object": 0.1}, {"lr": 1e-3, "init_from": "", "uniform_t_share": 0.0})   # from scratch
    (tmp_path / "r3_500").mkdir()                                                                       # not evaluated yet
    points = collect(tmp_path)
    r2 = [(p["steps_total"], p["fidelity"]["object"]["rate"]) for p in points if p["run"] == "r2"]
    assert r2 == [(3500, 0.4), (4000, 0.4), (4500, 0.5)]           # the shipped run (3,500 steps, object 0.40) first
    assert [p["steps_total"] for p in points if p["run"] == "r9"] == [200]                  # no shipped point
    assert {p["run"] for p in points} == {"r2", "r9"}
    ci = next(p for p in points if p["run"] == "r2" and p["steps_total"] == 4000)["fidelity"]["object"]["ci"]
    assert ci == [0.309, 0.498]                                      # Wilson 95 % of 40 / 100
    draw(points, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000

"""The GPU sweeps: toy v3's UNet learning rate / steps / batch and scorer recipes, and toy-dit's recipes, one process each.

Usage (one variant per process, all sharing one GPU; each writes RESULTS/<name>.json when done)::

    for v in u2k u2k_lr2 u2k_lr4 s1k_obj; do
        python -m diffloc_toy.gpu_sweep $v /tmp/sweep cuda results/gpu_sweep &
    done; wait

toy-dit variants (names starting ``d``; run ``d*`` variants alone or two at a time, they are
larger) train :func:`diffloc_toy.train_dit.train_dit` from scratch, or warm-started from the
shipped run's checkpoint where ``init_from`` is given, and are scored the same way::

    for v in d4_20k d2_10k d4_w192_20k d4_20k_u; do
        python -m diffloc_toy.gpu_sweep $v /tmp/sweep cuda results/gpu_sweep_dit &
    done; wait

UNet variants train the UNet stage on a copy of the shipped text encoder; scorer variants
train the scorer stage; both are then scored by ``diffloc_toy.evaluate.evaluate``
(200 samples; ``NPV`` sets samples per value). Results of the run on an H200:
``results/reference/toy_gpu_sweep.json``; see docs/toy_world.md.
"""
import dataclasses  # noqa: E401
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from diffloc.tracing.models import load_model
from diffloc_toy.evaluate import evaluate
from diffloc_toy.train import ToyTrainConfig, train
from diffloc_toy.train_dit import DitTrainConfig, train_dit

SHIPPED = Path("experiments/toy/weights")
V = {
    "u2k": dict(unet_steps=2000),
    "u6k": dict(unet_steps=6000),
    "u12k": dict(unet_steps=12000),
    "u12k_r": dict(unet_steps=12000),
    "u2k_b256": dict(unet_steps=2000, unet_batch=256),
    "u6k_b256": dict(unet_steps=6000, unet_batch=256),
    "u6k_lr2": dict(unet_steps=6000, unet_lr=2e-3),
    "u2k_lr2": dict(unet_steps=2000, unet_lr=2e-3),
    "u2k_lr3": dict(unet_steps=2000, unet_lr=3e-3),
    "u2k_lr4": dict(unet_steps=2000, unet_lr=4e-3),
    "s1k_obj": dict(scorer_steps=1000, scorer_hard_object_share=0.5),
    "s3k_obj": dict(scorer_steps=3000, scorer_hard_object_share=0.5),
    "s3k": dict(scorer_steps=3000),
    "s3k_obj_b512": dict(scorer_steps=3000, scorer_hard_object_share=0.5, scorer_batch=512, scorer_hard_negatives=128),
}
#: toy-dit recipes (the CPU run: patch 4, 6 x 128, lr 1e-3, 3,500 steps; object 0.40, count 0.65)
D = {
    "d4_20k": dict(steps=20_000),
    "d4_20k_u": dict(steps=20_000, uniform_t_share=0.5),
    "d2_10k": dict(steps=10_000, patch_size=2),
    "d4_w192_20k": dict(steps=20_000, num_heads=6),
    "d4_l8_20k": dict(steps=20_000, num_layers=8),
    "d4_20k_b256": dict(steps=20_000, batch=256, lr=2e-3),
}


def _train_dit(name: str, out: Path, dev: str, over: dict) -> tuple[float, dict]:
    t0 = time.time()
    cfg = dataclasses.replace(DitTrainConfig(device=dev, export_every=10**9, ckpt_every=1000), **{**D[name], **over})
    folder = train_dit(out, cfg, SHIPPED / "model")
    train_s = time.time() - t0
    ev = evaluate(out / "eval", model=load_model(str(folder), device=dev), n_per_value=int(os.environ.get("NPV", 50)))
    return train_s, ev


def main() -> None:
    name, root, dev = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if name not in V and name not in D:
        print(f"unknown variant {name!r}; allowed: {', '.join([*V, *D])}", file=sys.stderr)
        sys.exit(2)
    res_dir = Path(sys.argv[4])
    res_dir.mkdir(parents=True, exist_ok=True)
    over = {} if name in D else dict(V[name]); over.update(json.loads(sys.argv[5]) if len(sys.argv) > 5 else {})
    # the sweep ran with the v2 defaults (unet_lr 1e-3; scorer 1,000 steps, lr 1e-3, no object share): pin them
    V2 = dict(unet_lr=1e-3, scorer_steps=1000, scorer_lr=1e-3, scorer_hard_object_share=0.0)
    out = root / name
    res = {"name": name, "config": over, "device": dev}
    t0 = time.time()
    try:
        if name in D:
            train_s, ev = _train_dit(name, out, dev, over)
            res["train_s"] = round(train_s, 1)
            res["config"] = {**D[name], **over}
        elif name.startswith("u"):
            cfg = dataclasses.replace(ToyTrainConfig(device=dev, export_every=10**9, ckpt_every=10**9), **{**V2, **over})
            (out / "model").mkdir(parents=True, exist_ok=True)
            shutil.copytree(SHIPPED / "model" / "text_encoder", out / "model" / "text_encoder", dirs_exist_ok=True)
            train(out, cfg, stages=("unet",))
            res["train_s"] = round(time.time() - t0, 1)
            model = load_model(str(out / "model"), device=dev)
            ev = evaluate(out / "eval", model=model, n_per_value=int(os.environ.get("NPV", 50)))
        else:
            cfg = dataclasses.replace(ToyTrainConfig(device=dev, export_every=10**9, ckpt_every=10**9), **{**V2, **over})
            train(out, cfg, stages=("scorer",))
            res["train_s"] = round(time.time() - t0, 1)
            model = load_model("toy", device=dev)
            ev = evaluate(out / "eval", model=model, scorer_dir=out / "scorer", n_per_value=int(os.environ.get("NPV", 50)))
        res.update({k: ev[k] for k in ("fidelity", "fidelity_by_value", "clip_agreement")})
        log = out / ("dit_log.jsonl" if name in D else "train_log.jsonl")
        res["log_tail"] = log.read_text().splitlines()[-4:]
    except Exception:
        res["error"] = traceback.format_exc()[-3000:]
    res["total_s"] = round(time.time() - t0, 1)
    (res_dir / f"{name}.json").write_text(json.dumps(res, indent=1))
    print(name, "done", res.get("fidelity"), res.get("clip_agreement", {}).get("renders"), res.get("error", "")[-300:], flush=True)


if __name__ == "__main__":
    main()

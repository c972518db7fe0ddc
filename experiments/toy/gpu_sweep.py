"""The GPU sweep behind toy v3: UNet learning rate / steps / batch and scorer recipes, one process each.

Usage (one variant per process, all sharing one GPU; each writes RESULTS/<name>.json when done)::

    for v in u2k u2k_lr2 u2k_lr4 s1k_obj; do
        python -m diffloc_toy.gpu_sweep $v /tmp/sweep cuda results/gpu_sweep &
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

def main() -> None:
    name, root, dev = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if name not in V:
        print(f"unknown variant {name!r}; allowed: {', '.join(V)}", file=sys.stderr)
        sys.exit(2)
    res_dir = Path(sys.argv[4])
    res_dir.mkdir(parents=True, exist_ok=True)
    over = dict(V[name]); over.update(json.loads(sys.argv[5]) if len(sys.argv) > 5 else {})
    # the sweep ran with the v2 defaults (unet_lr 1e-3; scorer 1,000 steps, lr 1e-3, no object share): pin them
    V2 = dict(unet_lr=1e-3, scorer_steps=1000, scorer_lr=1e-3, scorer_hard_object_share=0.0)
    cfg = dataclasses.replace(ToyTrainConfig(device=dev, export_every=10**9, ckpt_every=10**9), **{**V2, **over})
    out = root / name
    res = {"name": name, "config": over, "device": dev}
    t0 = time.time()
    try:
        if name.startswith("u"):
            (out / "model").mkdir(parents=True, exist_ok=True)
            shutil.copytree(SHIPPED / "model" / "text_encoder", out / "model" / "text_encoder", dirs_exist_ok=True)
            train(out, cfg, stages=("unet",))
            res["train_s"] = round(time.time() - t0, 1)
            model = load_model(str(out / "model"), device=dev)
            ev = evaluate(out / "eval", model=model, n_per_value=int(os.environ.get("NPV", 50)))
        else:
            train(out, cfg, stages=("scorer",))
            res["train_s"] = round(time.time() - t0, 1)
            model = load_model("toy", device=dev)
            ev = evaluate(out / "eval", model=model, scorer_dir=out / "scorer", n_per_value=int(os.environ.get("NPV", 50)))
        res.update({k: ev[k] for k in ("fidelity", "fidelity_by_value", "clip_agreement")})
        res["log_tail"] = (out / "train_log.jsonl").read_text().splitlines()[-4:]
    except Exception:
        res["error"] = traceback.format_exc()[-3000:]
    res["total_s"] = round(time.time() - t0, 1)
    (res_dir / f"{name}.json").write_text(json.dumps(res, indent=1))
    print(name, "done", res.get("fidelity"), res.get("clip_agreement", {}).get("renders"), res.get("error", "")[-300:], flush=True)


if __name__ == "__main__":
    main()

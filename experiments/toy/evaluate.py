"""Evaluate the toy model against exact ground truth, and the toy scorer against both.

Writes ``OUT/toy_eval.json``::

    fidelity.<attribute>          share of samples whose exact reading equals the prompted value
    fidelity.all                  share with every attribute right
    fidelity_by_value.<attr>.<v>  the same, per value (>= n_per_value samples per value)
    clip_agreement.<attribute>    the scorer picks the right caption among captions differing only
                                  in that attribute: on generated samples whose reading matches
                                  the prompt (``generated``), and on renders (``renders``)
    sampler                       steps, guidance, seeds

and ``OUT/samples.png`` (a grid of samples, each with its prompt and its reading).

Usage::

    python -m diffloc_toy.evaluate --out results/toy_eval [--model DIR] [--n-per-value 50]
    python -m diffloc_toy.evaluate --out results/toy_eval --sweep 1.5,2,3,4    # guidance sweep
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffloc.tracing.errors import ConfigError

from . import world
from .scorer import image_features, load_toy_scorer, text_features


def balanced_attrs(n_per_value: int, seed: int) -> list[dict[str, str]]:
    """Prompts where every value of every attribute occurs >= n_per_value times; other
    attributes vary independently (each attribute's column is shuffled on its own)."""
    rng = np.random.default_rng(seed)
    n = n_per_value * max(len(v) for v in world.ATTRIBUTES.values())
    cols = {}
    for k, vals in world.ATTRIBUTES.items():
        col = [vals[i % len(vals)] for i in range(n)]
        rng.shuffle(col)
        cols[k] = col
    return [{k: cols[k][i] for k in world.ATTRIBUTES} for i in range(n)]


def eval_prompts(n_per_value: int, seed: int) -> tuple[list[dict[str, str]], list[str]]:
    """The evaluation's balanced attributes and their captions (a random template each, from ``seed + 1``)."""
    attrs = balanced_attrs(n_per_value, seed)
    rng = np.random.default_rng(seed + 1)
    templates = [int(t) for t in rng.integers(len(world.TEMPLATES), size=len(attrs))]
    return attrs, [world.caption(a, t) for a, t in zip(attrs, templates)]


# ---------------------------------------------------------------------------- generation
def load(model_dir: str | Path | None = None):
    """The toy model through tracing.models.load_model (the project's loader)."""
    from diffloc.tracing.models import load_model

    return load_model(str(model_dir) if model_dir is not None else "toy")  # a folder, or a spec: toy, toy-dit


@torch.no_grad()
def generate(model, prompts: Sequence[str], seed: int, num_inference_steps: int, guidance_scale: float, batch: int = 64) -> torch.Tensor:
    """Float images [B, 3, 32, 32] in [0, 1]; chunk c uses torch.Generator seeded seed + c."""
    from diffloc.tracing.sampler import SamplerConfig
    from diffloc.tracing.sampler import generate as _generate

    cfg = SamplerConfig(num_inference_steps=num_inference_steps, guidance_scale=float(guidance_scale))
    out = []
    for c, i in enumerate(range(0, len(prompts), batch)):
        g = torch.Generator().manual_seed(seed + c)
        out.append(_generate(model, list(prompts[i:i + batch]), generator=g, cfg=cfg).cpu())
    return torch.cat(out)


@torch.no_grad()
def reference_ddim(model, prompts: Sequence[str], latents: torch.Tensor, num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
    """A minimal, independent DDIM + classifier-free-guidance loop (diffusers' own ``step``),
    kept as a cross-check of tracing.sampler.generate (tests compare the two)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(num_inference_steps)
    tok = model.tokenizer

    def enc(texts):
        ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        return model.text_encoder(ids).last_hidden_state

    cond, unc = enc(prompts), enc([""] * len(prompts))
    x = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        if guidance_scale > 1:
            e = model.denoiser(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([unc, cond])).sample
            eu, ec = e.chunk(2)
            e = eu + guidance_scale * (ec - eu)
        else:
            e = model.denoiser(x, t, encoder_hidden_states=cond).sample
        x = sched.step(e, t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


# ---------------------------------------------------------------------------- metrics
def fidelity(images: torch.Tensor, attrs: list[dict[str, str]]) -> tuple[dict, dict, list[dict]]:
    readings = [world.read(x) for x in images]
    fid, by_value = {}, {}
    for k, vals in world.ATTRIBUTES.items():
        ok = np.array([r[k] == a[k] for r, a in zip(readings, attrs)])
        fid[k] = float(ok.mean())
        by_value[k] = {v: float(ok[[a[k] == v for a in attrs]].mean()) for v in vals}
    fid["all"] = float(np.mean([all(r[k] == a[k] for k in world.ATTRIBUTES) for r, a in zip(readings, attrs)]))
    return fid, by_value, readings


@torch.no_grad()
def clip_agreement(scorer, tokenizer, images: torch.Tensor, attrs: list[dict[str, str]], template: int = 0) -> dict[str, float]:
    """Per attribute: share of images where the scorer ranks the true caption first among the
    captions that differ from it only in that attribute."""
    if len(images) == 0:
        return {k: float("nan") for k in world.ATTRIBUTES}
    img = image_features(scorer, images)
    out = {}
    for k, vals in world.ATTRIBUTES.items():
        hits = []
        for i, a in enumerate(attrs):
            caps = [world.caption({**a, k: v}, template) for v in vals]
            hits.append(int((text_features(scorer, tokenizer, caps) @ img[i]).argmax()) == vals.index(a[k]))
        out[k] = float(np.mean(hits))
    return out


def save_grid(path: Path, images: torch.Tensor, attrs: list[dict[str, str]], readings: list[dict], n: int = 32, cols: int = 8) -> None:
    from PIL import Image, ImageDraw

    scale, cw, th = 4, 150, 44
    n = min(n, len(images))
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cw, rows * (32 * scale + th)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * cw, r * (32 * scale + th)
        arr = (images[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        sheet.paste(Image.fromarray(arr).resize((32 * scale, 32 * scale), Image.NEAREST), (x0 + 11, y0))
        a, rd = attrs[i], readings[i]
        line1 = f"{a['count']} {a['colour']} {a['object']}"
        line2 = f"{a['viewpoint']}, {a['style']}"
        wrong = [k for k in world.ATTRIBUTES if rd[k] != a[k]]
        line3 = "ok" if not wrong else "read: " + ",".join(str(rd[k]) for k in wrong)
        for j, (txt, col) in enumerate(((line1, "black"), (line2, "black"), (line3, "green" if not wrong else "red"))):
            draw.text((x0 + 4, y0 + 32 * scale + 2 + 13 * j), txt, fill=col)
    sheet.save(path)


# ---------------------------------------------------------------------------- entry point
def evaluate(out_dir: str | Path, model_dir: str | Path | None = None, n_per_value: int = 50, seed: int = 0,
             guidance_scale: float | None = None, num_inference_steps: int | None = None, model=None,
             scorer_dir: str | Path | None = None) -> dict:
    """Fidelity and scorer agreement of the toy model; writes toy_eval.json and samples.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else load(model_dir)
    g = float(guidance_scale if guidance_scale is not None else model.defaults.get("guidance_scale", 2.0))
    steps = int(num_inference_steps or model.defaults.get("num_inference_steps", 20))
    attrs, prompts = eval_prompts(n_per_value, seed)
    t0 = time.time()
    images = generate(model, prompts, seed=seed, num_inference_steps=steps, guidance_scale=g)
    gen_s = time.time() - t0
    fid, by_value, readings = fidelity(images, attrs)
    scorer, _, tok = load_toy_scorer(scorer_dir)
    good = [i for i, (r, a) in enumerate(zip(readings, attrs)) if all(r[k] == a[k] for k in world.ATTRIBUTES)]
    renders = world.to_float(world.render_batch(attrs, seed=seed + 2))
    result = {
        "fidelity": fid,
        "fidelity_by_value": by_value,
        "clip_agreement": {
            "generated": clip_agreement(scorer, tok, images[good], [attrs[i] for i in good]),
            "renders": clip_agreement(scorer, tok, renders, attrs),
            "n_generated_used": len(good),
        },
        "reader_on_renders": fidelity(renders, attrs)[0],
        "n_samples": len(attrs),
        "n_per_value_min": min(sum(a[k] == v for a in attrs) for k, vals in world.ATTRIBUTES.items() for v in vals),
        "sampler": {"scheduler": type(model.scheduler).__name__, "num_inference_steps": steps, "guidance_scale": g, "seed": seed,
                    "generator": "torch.Generator().manual_seed(seed + chunk), chunks of 64", "templates": "random per prompt"},
        "model_dir": str(model_dir or "toy"),
        "generation_seconds": round(gen_s, 1),
    }
    (out / "toy_eval.json").write_text(json.dumps(result, indent=2))
    save_grid(out / "samples.png", images, attrs, readings)
    return result


def sweep_guidance(out_dir: str | Path, scales: Sequence[float], model_dir: str | Path | None = None, n_per_value: int = 25,
                   seed: int = 100, write_default: bool = False) -> dict:
    """fidelity at several guidance scales (seeds disjoint from evaluate's default). With
    ``write_default``, the scale with the best all-attributes fidelity becomes the model's
    default ``guidance_scale`` in its diffloc.json (the sweep is recorded there too)."""
    model = load(model_dir)
    attrs = balanced_attrs(n_per_value, seed)
    prompts = [world.caption(a, i % len(world.TEMPLATES)) for i, a in enumerate(attrs)]
    res = {}
    for gs in scales:
        imgs = generate(model, prompts, seed=seed, num_inference_steps=int(model.defaults.get("num_inference_steps", 20)), guidance_scale=gs)
        res[str(gs)] = fidelity(imgs, attrs)[0]
        print(gs, json.dumps(res[str(gs)]), flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"n_samples": len(attrs), "seed": seed, "num_inference_steps": int(model.defaults.get("num_inference_steps", 20)), "fidelity": res}
    (out / "guidance_sweep.json").write_text(json.dumps(record, indent=2))
    if write_default:
        best = max(res, key=lambda k: res[k]["all"])
        meta_path = Path(model.source) / "diffloc.json"
        meta = json.loads(meta_path.read_text())
        meta["guidance_scale"] = float(best)
        meta["guidance_sweep"] = record
        meta_path.write_text(json.dumps(meta, indent=2))
        print(f"default guidance_scale -> {best} in {meta_path}", flush=True)
    return res


def sweep_sampler(out_dir: str | Path, steps: Sequence[int], shifts: Sequence[float], model_dir: str | Path | None = None,
                  n_per_value: int = 25, seed: int = 0) -> dict:
    """Fidelity over sampler settings, on ``evaluate``'s own prompts and seeds: each number of
    steps at the scheduler's own shift, then each flow-matching ``shift`` at the model's default
    steps (guidance stays the model's). Writes ``sampler_sweep.json``: ``{"steps=N,shift=S": rates}``."""
    model = load(model_dir)
    if shifts and "shift" not in model.scheduler.config:
        raise ConfigError(f"a shift sweep needs a flow-matching scheduler; {model.name}'s is {type(model.scheduler).__name__}")
    base, sched = dict(model.scheduler.config), type(model.scheduler)
    default_steps, g = int(model.defaults.get("num_inference_steps", 20)), float(model.defaults.get("guidance_scale", 2.0))
    settings = [(n, base.get("shift")) for n in steps] + [(default_steps, s) for s in shifts]
    attrs, prompts = eval_prompts(n_per_value, seed)
    res = {}
    for n, shift in settings:
        if shift is not None:
            model.scheduler = sched.from_config(base, shift=shift)
        res[f"steps={n},shift={shift}"] = fidelity(generate(model, prompts, seed, n, g), attrs)[0]
        print(n, shift, json.dumps(res[f"steps={n},shift={shift}"]), flush=True)
    record = {"n_samples": len(attrs), "seed": seed, "guidance_scale": g, "scheduler": sched.__name__, "fidelity": res}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler_sweep.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Evaluate the toy model and scorer.")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--n-per-value", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--scorer", default=None, help="open_clip scorer folder (default: the shipped toy scorer)")
    p.add_argument("--sweep", default=None, help="comma-separated guidance scales to compare instead")
    p.add_argument("--write-default", action="store_true", help="with --sweep: store the best scale in the model's diffloc.json")
    p.add_argument("--steps-sweep", default=None, help="comma-separated numbers of sampling steps to compare instead")
    p.add_argument("--shift-sweep", default=None, help="comma-separated flow-matching shifts to compare (with or without --steps-sweep)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.steps_sweep or a.shift_sweep:
        try:
            steps = [int(s) for s in a.steps_sweep.split(",")] if a.steps_sweep else []
            shifts = [float(s) for s in a.shift_sweep.split(",")] if a.shift_sweep else []
        except ValueError:
            p.error("--steps-sweep takes integers and --shift-sweep numbers, comma-separated, e.g. 20,50,100 and 0.5,3")
        if any(n < 1 for n in steps) or any(not s > 0 for s in shifts):
            p.error("--steps-sweep values must be >= 1 and --shift-sweep values > 0")
        try:
            sweep_sampler(a.out, steps, shifts, a.model, a.n_per_value, a.seed)
        except ConfigError as e:
            p.error(str(e))
    elif a.sweep:
        sweep_guidance(a.out, [float(s) for s in a.sweep.split(",")], a.model, write_default=a.write_default)
    else:
        print(json.dumps(evaluate(a.out, a.model, a.n_per_value, a.seed, a.guidance, scorer_dir=a.scorer), indent=2))


if __name__ == "__main__":
    main()

"""Where along the sampling path toy-dit loses an attribute: exact renders noised to σ₀, denoised by the model, read exactly.

Usage::

    python -m experiments.dit_denoise_probe --model experiments/toy/weights/dit_pixel --out results/reference/toy_dit_pixel_denoise   # the pixel model
    python -m experiments.dit_denoise_probe --out /tmp/p --model /work/runs/snap/r2_5000 --label r2

For each start level σ₀ (1.0 is plain generation from pure noise) and guidance mode, every prompt's
exact render x₀ (``world.render``) becomes ``scheduler.scale_noise(x₀, σ₀, ε) = (1 − σ₀)·x₀ + σ₀·ε``
and the model runs the rest of the way down with ``FlowMatchEulerDiscreteScheduler`` (``--steps``
Euler steps on σ₀ … 0, classifier-free guidance as the shipped sampler). The exact readers then say
which attributes survived. A model that draws shapes well keeps them from any σ₀; where fidelity
falls between two levels is where the sampler loses the attribute.

Guidance modes: ``none`` (scale 1), ``full`` (the model's shipped scale at every step) and
``interval`` (the shipped scale only while σ > ``--interval-below``, none below it: guidance in a
limited interval, Kynkäänniemi et al., NeurIPS 2024). Prompts are ``evaluate.balanced_attrs``
(every value of every attribute ``--n-per-value`` times), each with a random caption template.

Writes ``OUT/probe.json`` (fidelity per attribute with Wilson 95 % intervals and n, per σ₀ and mode),
``OUT/probe.png`` and ``OUT/samples_<mode>.png`` (the first 16 prompts at every σ₀, rows by σ₀; another
``--label`` writes ``samples_<label>_<mode>.png``).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from diffloc.evaluate import wilson
from diffloc.tracing.io import write_plain_json

SIGMAS = (0.2, 0.4, 0.6, 0.8, 1.0)
MODES = ("none", "full", "interval")


@torch.no_grad()
def denoise_from(model, prompts: list[str], x0: torch.Tensor, sigma0: float, steps: int, scale_of,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1]: ``x0`` [B, 3, H, W] in [-1, 1] (encoded first if the model is latent) noised to
    ``sigma0``, then ``steps`` Euler steps to 0.

    The σ's are the shipped sampler's ``steps`` levels scaled by ``sigma0`` (at ``sigma0`` = 1 this is plain
    generation from ``noise``, step for step). ``scale_of(sigma)`` is the guidance scale at noise level ``sigma``."""
    from diffloc.tracing.sampler import decode, encode, encode_images

    family = model.family
    sched = type(model.scheduler).from_config(model.scheduler.config)
    if abs(sched.config.get("shift", 1.0) - 1.0) > 1e-9 or sched.config.get("use_dynamic_shifting"):
        raise ValueError("the probe scales the shipped σ's and needs an unshifted FlowMatchEuler scheduler (toy-dit's)")
    sched.set_timesteps(steps)
    sched.set_timesteps(sigmas=(sched.sigmas[:-1] * sigma0).numpy())           # [steps] levels from sigma0 down
    if model.vae is not None:                                                   # a latent model's x0 is its VAE's latent
        x0 = encode_images(model, x0 / 2 + 0.5)
    if noise is None:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x = sched.scale_noise(x0, sched.timesteps[:1].expand(len(x0)), noise)      # (1 − σ₀)·x₀ + σ₀·ε
    cond = encode(model, prompts)
    both = family.uncond(model, len(prompts)).cat(cond)                          # [2B, ...]: uncond rows, then cond rows
    for i, t in enumerate(sched.timesteps):
        v_un, v_text = family.denoise(model, torch.cat([x, x]), t, both, i).chunk(2)   # [B, 3, H, W] each
        g = scale_of(float(sched.sigmas[i]))
        x = sched.step(v_un + g * (v_text - v_un), t, x).prev_sample
    return decode(model, x)


def fidelity(images: torch.Tensor, attrs: list[dict]) -> dict:
    """Per attribute (and all five): rate, Wilson 95 % interval, n; the readings are ``diffloc_toy.evaluate.fidelity``'s."""
    from diffloc_toy.evaluate import fidelity as rates

    n = len(attrs)
    return {a: {"rate": round(r, 3), "ci": [round(c, 3) for c in wilson(round(r * n), n)], "n": n}
            for a, r in rates(images, attrs)[0].items()}


def run(model_spec: str, label: str, sigmas, modes, steps: int, n_per_value: int, below: float, out: Path) -> dict:
    from diffloc.tracing.models import load_model
    from diffloc.tracing.sampler import SamplerConfig
    from diffloc_toy import world
    from diffloc_toy.evaluate import balanced_attrs

    model = load_model(model_spec)
    shipped = SamplerConfig.for_model(model).guidance_scale
    scales = {"none": lambda s: 1.0, "full": lambda s: shipped, "interval": lambda s: shipped if s > below else 1.0}
    attrs = balanced_attrs(n_per_value, seed=0)
    rng = np.random.default_rng(0)
    prompts = [world.caption(a, int(rng.integers(len(world.TEMPLATES)))) for a in attrs]
    x0 = world.to_float(world.render_batch(attrs, seed=1)) * 2 - 1              # [N, 3, 32, 32] in [-1, 1]
    res = {"model": label, "guidance_scale": shipped, "interval_below": below, "steps": steps,
           "n_prompts": len(attrs), "rows": []}
    for mode in modes:
        strips = []
        for s0 in sigmas:
            img = torch.cat([denoise_from(model, prompts[i:i + 64], x0[i:i + 64], s0, steps, scales[mode])
                             for i in range(0, len(prompts), 64)])
            res["rows"].append({"mode": mode, "sigma0": s0, "fidelity": fidelity(img, attrs)})
            strips.append(img[:16])
            print(json.dumps(res["rows"][-1]["fidelity"]["object"]), mode, s0, flush=True)
        name = f"samples_{mode}.png" if label == "shipped" else f"samples_{re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')}_{mode}.png"
        _save_strips(out / name, (x0[:16] / 2 + 0.5, *strips))                     # the renders, then a row per σ₀
    return res


def _save_strips(path: Path, strips) -> None:
    import torchvision

    grid = torchvision.utils.make_grid(torch.cat(strips), nrow=16, padding=1, pad_value=1.0)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0]
    torchvision.utils.save_image(grid, path)


def draw(results: list[dict], path: Path) -> None:
    from experiments.fidelity_plot import draw_curves

    series = []
    for res in results:
        for mode in dict.fromkeys(r["mode"] for r in res["rows"]):
            rows = [r for r in res["rows"] if r["mode"] == mode]
            series.append((f"{res['model']}, guidance {mode}", [r["sigma0"] for r in rows], [r["fidelity"] for r in rows]))
    draw_curves(series, ("object", "count", "all"), path, xlabel="start noise level σ₀ (1 = generation from pure noise)",
                title="{attr}: kept from start level σ₀ (n = %d, Wilson 95 %%)" % results[0]["n_prompts"], legend_loc="below")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default="toy-dit", help="toy-dit, or a toy-dit export folder")
    p.add_argument("--label", default="shipped")
    p.add_argument("--sigmas", default=",".join(map(str, SIGMAS)))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n-per-value", type=int, default=25)
    p.add_argument("--interval-below", type=float, default=0.4)
    a = p.parse_args(argv)
    modes, sigmas = a.modes.split(","), a.sigmas.split(",")
    if not set(modes) <= set(MODES):
        p.error(f"--modes: {a.modes!r} names an unknown mode; choose from {', '.join(MODES)}")
    try:
        sigmas = [float(s) for s in sigmas]
    except ValueError:
        p.error(f"--sigmas must be comma-separated numbers in (0, 1], got {a.sigmas!r}")
    if not all(0 < s <= 1 for s in sigmas):
        p.error(f"--sigmas must lie in (0, 1], got {a.sigmas!r}")
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "probe.json"
    old = json.loads(path.read_text())["results"] if path.exists() else []
    res = run(a.model, a.label, sigmas, modes, a.steps, a.n_per_value,
              a.interval_below, a.out)
    results = [r for r in old if r["model"] != a.label] + [res]
    write_plain_json({"version": 1, "results": results}, path)
    draw(results, a.out / "probe.png")


if __name__ == "__main__":
    main()

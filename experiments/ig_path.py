"""Why ig screens worse than atp on the toy: the score along ig's path, and ig with more points.

Usage::

    python -m experiments.ig_path --out results/reference/screen_validation            # path profile + figure
    python -m experiments.ig_path --out results/reference/screen_validation --ig-steps 32 --attributes viewpoint

``ig`` (EAP-IG's form) averages every site's gradient over points on one path, the corruption
noise scaled from 1 (corrupted) to 0 (clean), and multiplies by the site's clean − corrupted
difference. Two things can make it disagree with exact restoration into the corrupted run:

- **the path's shape**: if the score flips abruptly, most of the ``N`` midpoints sit where it is
  flat and their gradients vanish (too few points to resolve the step). Measured here as the
  normalised score ``(s(α) − s(0)) / (s(1) − s(0))`` at 17 points ``α = 1 − scale`` for each
  prompt × seed of the validation (``path_profile.json``, ``path_profile.png``);
- **the estimand**: at points past the flip, the other sites already carry the attribute, so a
  site's gradient there measures what it adds *given the rest is partly clean*, not what
  restoring it alone does (exact patching's question). More points do not change this; the
  ``--ig-steps`` run tells the two apart (``<attribute>_ig<N>`` beside ``<attribute>_ig``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from diffloc.tracing.attribution import clip_score_fn
from diffloc.tracing.corruption import noise_seed
from diffloc.tracing.io import write_plain_json
from diffloc.tracing.sampler import SamplerConfig, hooked_generate, initial_latents, make_corruption
from diffloc.tracing.sweep import sweep_prompts
from experiments.findings import PROTOCOLS

ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count")
POINTS = np.linspace(0.0, 1.0, 17)


@torch.no_grad()
def path_profile(model, scorer, attribute: str, max_prompts: int, seeds: tuple[int, ...]) -> list[dict]:
    """Normalised score at each α of :data:`POINTS` for every prompt × seed (noise sample 0)."""
    from diffloc.tracing.trace_config import TraceConfig

    cfg = TraceConfig(model="toy", attribute=attribute, max_prompts=max_prompts, seeds=seeds)
    scfg = SamplerConfig.for_model(model)
    score = clip_score_fn(scorer)
    out = []
    for p_index, prompt in enumerate(sweep_prompts(cfg, model.world)):
        for seed in seeds:
            corr = make_corruption(model, prompt.positions(model.tokenizer),
                                   torch.Generator().manual_seed(noise_seed(seed, 0)), cfg.noise_scale)
            lat = initial_latents(model, torch.Generator().manual_seed(seed))
            s = [float(score(hooked_generate(model, prompt.text, lat, scfg, corr, 1.0 - a), [prompt.text]).sum())
                 for a in POINTS]
            span = s[-1] - s[0]
            norm = [(v - s[0]) / span if span else float("nan") for v in s]
            steps = np.diff(norm)
            out.append({"attribute": attribute, "prompt_index": p_index, "seed": seed, "clean": s[-1], "corrupted": s[0],
                        "normalised": [round(v, 4) for v in norm],
                        "largest_step_share": round(float(np.nanmax(np.abs(steps))), 3) if span else None,
                        "flip_alpha": _flip(norm)})
    return out


def _flip(norm: list[float]) -> float | None:
    """The first α at which the normalised score passes 0.5 (None if it never does)."""
    for a, v in zip(POINTS, norm):
        if v == v and v >= 0.5:
            return round(float(a), 4)
    return None


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = list(dict.fromkeys(r["attribute"] for r in rows))
    fig, axes = plt.subplots(1, len(attrs), figsize=(3.2 * len(attrs), 3.0), sharey=True, squeeze=False)
    mids = (np.arange(8) + 0.5) / 8  # ig's 8 points, α = 1 − scale
    for ax, a in zip(axes[0], attrs):
        for r in (r for r in rows if r["attribute"] == a):
            ax.plot(POINTS, r["normalised"], marker=".", label=f"prompt {r['prompt_index']}, seed {r['seed']}")
        for m in mids:
            ax.axvline(m, color="grey", lw=0.5, ls=":")
        ax.set_title(a), ax.set_xlabel("α (0 corrupted → 1 clean)")
        ax.axhline(0, color="k", lw=0.5), ax.axhline(1, color="k", lw=0.5)
    axes[0, 0].set_ylabel("normalised CLIP score")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Score along ig's path (dotted: ig's 8 midpoints)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/reference/screen_validation")
    p.add_argument("--attributes", default=",".join(ATTRIBUTES))
    p.add_argument("--ig-steps", type=int, default=0, help="also run ig with this many points (0: path profile only)")
    a = p.parse_args(argv)
    out, attributes = Path(a.out), a.attributes.split(",")
    from diffloc.tracing.models import load_model
    from diffloc.tracing.scoring import load_scorer

    model, scorer = load_model("toy"), load_scorer("toy")
    c = PROTOCOLS["text"]
    seeds = (0,)  # the screens' own pairs: the first prompts × seed 0
    if a.ig_steps:
        from diffloc.tracing.sweep import run_sweep
        from diffloc.tracing.trace_config import TraceConfig

        for attr in attributes:
            cfg = TraceConfig(model="toy", attribute=attr, component="all", method="ig", method_options={"ig_steps": a.ig_steps},
                              max_prompts=c["max_prompts"], seeds=seeds, batch_size=128)
            run_sweep(cfg, out / f"{attr}_ig{a.ig_steps}", model=model, scorer=scorer)
        return
    rows = [r for attr in attributes for r in path_profile(model, scorer, attr, c["max_prompts"], seeds)]
    write_plain_json(rows, out / "path_profile.json")
    plot(rows, out / "path_profile.png")
    for r in rows:
        print(r["attribute"], r["prompt_index"], r["seed"], "flip at", r["flip_alpha"], "largest step", r["largest_step_share"],
              r["normalised"])


if __name__ == "__main__":
    main()

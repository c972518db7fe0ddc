"""How many pairs carry signal, per attribute: Gaussian noise at each scale against counterfactual replacement.

Usage::

    OMP_NUM_THREADS=1 python -m experiments.informative_pairs --out results/reference/informative_pairs
    python -m experiments.informative_pairs --out results/reference/informative_pairs --models toy-dit --attributes colour

A pair (prompt × seed, and × counterfactual value under ``replace``) is *informative* when
ground truth flips: the world's exact readers see the prompt's value in the clean image and not
in the corrupted one. Only the two reference images of each pair are made (nothing is restored),
so this is the cheap count a trace's ``causal_sites.json`` would report as ``n_gt_flips``:

- ``gaussian``: the sweep's own noise draw (:func:`tracing.auto_noise.pair_flips`) at every scale of
  :data:`tracing.auto_noise.LADDER` (1–16 σ; 3 σ is ROME's and the default); ``auto`` is the scale
  ``--noise-scale auto`` would choose (the smallest flipping ≥ 80 %);
- ``replace``: the marked words replaced by each other value of the attribute in the world's grammar
  (:class:`tracing.corruption.ReplaceMode`); counterfactuals whose captions tokenise to another
  length are skipped and counted.

Prompts are the world's findings prompts for the attribute (the ones ``diffloc trace`` uses), seeds
0 and 1. Writes ``OUT/summary.json`` with, per model and attribute, the pair counts, flips and
Wilson intervals of the flip fractions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffloc.evaluate import wilson
from diffloc.tracing import auto_noise
from diffloc.tracing.corruption import CORRUPTIONS
from diffloc.tracing.exact import score_rows
from diffloc.tracing.io import write_plain_json
from diffloc.tracing.models import load_model
from diffloc.tracing.sampler import corruption_hooks, hooked_generate, initial_latents
from diffloc.tracing.scoring import default_scorer, load_scorer
from diffloc.tracing.sweep import unit_context
from diffloc.tracing.trace_config import TraceConfig

ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count")
SEEDS = (0, 1)


def _share(k: int, n: int) -> dict:
    return {"flips": int(k), "n": int(n), "fraction": round(k / n, 4) if n else None, "ci": [round(x, 4) for x in wilson(k, n)]}


def gaussian(cfg: TraceConfig, ctx) -> dict:
    pairs = [(pi, s) for pi in range(len(ctx.prompts)) for s in cfg.seeds]
    flips = [0] * len(auto_noise.LADDER)
    for pi, s in pairs:
        for j, hit in enumerate(auto_noise.pair_flips(cfg, ctx, pi, s, 0, auto_noise.LADDER)):
            flips[j] += bool(hit)
    fractions = [f / len(pairs) for f in flips]
    chosen, reached = auto_noise.choose(auto_noise.LADDER, fractions)
    return {"ladder": list(auto_noise.LADDER), "by_scale": [_share(k, len(pairs)) for k in flips],
            "at_3sigma": _share(flips[auto_noise.LADDER.index(3.0)], len(pairs)), "auto": chosen, "auto_reached_80": reached}


@torch.no_grad()
def replacement(cfg: TraceConfig, ctx) -> dict:
    mode, model = CORRUPTIONS.get("replace"), ctx.model
    flips = n = skipped = 0
    for pi, prompt in enumerate(ctx.prompts):
        skipped += len(mode.skipped(cfg, model, prompt)) * len(cfg.seeds)
        for s in cfg.seeds:
            hits = prompt_flips(cfg, ctx, pi, s)
            flips, n = flips + sum(hits.values()), n + len(hits)
    return {**_share(flips, n), "skipped_counterfactual_pairs": int(skipped)}


@torch.no_grad()
def prompt_flips(cfg: TraceConfig, ctx, index: int, seed: int = 0) -> dict[str, bool]:
    """{counterfactual index: whether ground truth flips} for prompt ``index`` of ``ctx`` at ``seed`` (replace, kept values)."""
    mode, prompt, out = CORRUPTIONS.get("replace"), ctx.prompts[index], {}
    for ci in range(mode.samples(cfg, ctx.model, prompt)):
        corruption = mode.make(cfg, ctx.model, prompt, 0, ci)
        latents = initial_latents(ctx.model, torch.Generator().manual_seed(seed)).expand(2, -1, -1, -1)
        images = hooked_generate(ctx.model, prompt.text, latents, ctx.scfg, text_hooks=corruption_hooks(ctx.model, corruption, first_row=1))
        gt = score_rows(images, [prompt.text] * 2, ctx)["gt"]
        out[str(ci)] = bool(gt[0] > gt[1])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/reference/informative_pairs"))
    p.add_argument("--models", default="toy,toy-dit")
    p.add_argument("--attributes", default=",".join(ATTRIBUTES))
    args = p.parse_args(argv)
    path = args.out / "summary.json"
    result = __import__("json").loads(path.read_text()) if path.exists() else {"seeds": list(SEEDS), "models": {}}
    for spec in args.models.split(","):
        model = load_model(spec)
        scorer = load_scorer(default_scorer("auto", model))
        for attr in args.attributes.split(","):
            if attr in result["models"].get(spec, {}):
                continue
            cfg = TraceConfig(model=spec, attribute=attr, seeds=SEEDS)
            ctx = unit_context(cfg, model, scorer)
            row = {"n_prompts": len(ctx.prompts), "gaussian": gaussian(cfg, ctx), "replace": replacement(cfg, ctx)}
            result["models"].setdefault(spec, {})[attr] = row
            args.out.mkdir(parents=True, exist_ok=True)
            write_plain_json(result, path)  # after every attribute: a rerun continues
            g, r = row["gaussian"]["at_3sigma"], row["replace"]
            print(f"{spec} {attr}: gaussian 3σ {g['flips']}/{g['n']}, auto {row['gaussian']['auto']:g}σ; replace {r['flips']}/{r['n']}"
                  f" ({r['skipped_counterfactual_pairs']} skipped)", flush=True)


if __name__ == "__main__":
    main()

"""``--noise-scale auto``: the smallest multiple of σ that flips most of a run's own pairs, measured before the sweep.

Usage::

    diffloc trace --model toy --attribute colour --noise-scale auto --out results/colour_auto

    cfg = TraceConfig(model="toy", attribute="colour", noise_scale="auto")
    run_sweep(cfg, "results/colour_auto")      # prepare() measures, sweeps at the chosen scale, writes meta.json
    record = measure_scale(cfg, ctx)           # the measurement alone (ctx: tracing.sweep.unit_context)
    record["chosen"], record["flip_fraction"]  # e.g. 4.0, [0.0, 0.25, 0.5, 0.83, ...] aligned with record["ladder"]

The rule. A sweep's *pairs* are its prompts × seeds × noise samples (the units' own noise
draws, :func:`tracing.corruption.noise_seed`). For every pair one batched sampler call makes
the clean image and the corrupted image at every scale of :data:`LADDER` (1, 2, 3, 4, 6, 8,
12, 16 σ; the draw is the same, only its size changes); nothing is restored. A pair *flips*
at a scale when ground truth flips: the world's exact readers see the attribute in the clean
image and not in the corrupted one. A world without readers (SD and the other hub models) has
no ground truth; there a pair flips when the scorer (CLIP) drops by at least ``min_drop``
points. The chosen scale is the smallest whose flip fraction reaches :data:`TARGET` (80 %).
When none does, it is the scale with the highest fraction (the smallest of ties), and the
record (``reached_target: false`` and a ``note``) and one printed line say so.

``meta.json`` keeps the record under ``noise.auto`` (rule, ladder, flip fraction and flips at
each scale, ``n_pairs``, ``flip_by``, ``chosen``) and the scale used under ``noise.scale``;
``config.noise_scale`` stays ``auto``. A resumed run (the same ``--out``, also with more seeds
or prompts, as ``--until-stable`` rounds do) reuses the recorded scale and measures nothing,
so its new units are corrupted exactly as the first ones. ``auto`` needs ``--corrupt gaussian``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Sequence

import torch

from .corruption import CORRUPTIONS
from .sampler import Corruption, embedding_site, hooked_generate, initial_latents

LADDER = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)  # multiples of σ tried, smallest first
TARGET = 0.8  # the flip fraction a scale needs
RULE = ("per pair (prompt x seed x noise sample): clean image vs the same noise draw at each ladder scale, no restoration; "
        "a pair flips when ground truth flips (world readers: clean 1, corrupted 0), or, without readers, when the scorer drops "
        "by >= min_drop points; chosen = the smallest scale whose flip fraction >= target, else the highest fraction (smallest of ties)")


def say(msg: str) -> None:
    """One line for the user on stderr (silent under ``diffloc --quiet``, which sets ``DIFFLOC_QUIET``)."""
    if os.environ.get("DIFFLOC_QUIET") != "1":
        print(msg, file=sys.stderr, flush=True)


def choose(ladder: Sequence[float], fractions: Sequence[float], target: float = TARGET) -> tuple[float, bool]:
    """(scale, reached): the smallest scale with a fraction >= ``target``, else the highest fraction's (smallest of ties)."""
    for scale, frac in zip(ladder, fractions):
        if frac >= target:
            return float(scale), True
    best = max(fractions)
    return float(next(s for s, f in zip(ladder, fractions) if f == best)), False


def ladder_hooks(model, corruptions: Sequence[Corruption]) -> dict:
    """Text hooks adding corruption ``j``'s noise to row ``1 + j`` of each corrupted encoder's token embeddings (row 0 clean)."""
    first, out = corruptions[0], {}
    for comp in first.noise:
        stack = torch.stack([c.noise[comp] for c in corruptions])  # [L, P_c, D_c]

        def add(module, inputs, output, stack=stack, pos=torch.tensor(first.at(comp))):
            new = output.clone()  # [1 + L, L_c, D_c]
            new[1:, pos.to(output.device)] += stack.to(output.device, output.dtype)
            return new

        out[embedding_site(model, comp)] = [add]
    return out


def ladder_images(cfg, ctx, prompt_index: int, seed: int, noise_index: int, ladder: Sequence[float]) -> torch.Tensor:
    """One pair's clean image and its corrupted image at each scale of ``ladder`` (the sweep's own noise draw and
    initial noise), in one sampler call: [1 + len(ladder), 3, H, W]."""
    model, prompt = ctx.model, ctx.prompts[prompt_index]
    mode = CORRUPTIONS.get("gaussian")
    corruptions = [mode.make(replace(cfg, noise_scale=float(s)), model, prompt, seed, noise_index) for s in ladder]
    latents = initial_latents(model, torch.Generator().manual_seed(seed)).expand(1 + len(ladder), -1, -1, -1)
    with torch.no_grad():
        return hooked_generate(model, prompt.text, latents, ctx.scfg, text_hooks=ladder_hooks(model, corruptions))


def pair_flips(cfg, ctx, prompt_index: int, seed: int, noise_index: int, ladder: Sequence[float]) -> list[bool]:
    """Whether one pair flips at each scale of ``ladder`` (module docstring)."""
    from .exact import score_rows

    text = ctx.prompts[prompt_index].text
    images = ladder_images(cfg, ctx, prompt_index, seed, noise_index, ladder)
    scores = score_rows(images, [text] * len(images), ctx)
    if "gt" in scores:
        return [bool(scores["gt"][0] > g) for g in scores["gt"][1:]]
    clip = scores[ctx.scorer.name]
    return [bool(clip[0] - c >= cfg.min_drop) for c in clip[1:]]


def measure_scale(cfg, ctx, ladder: Sequence[float] = LADDER, target: float = TARGET) -> dict:
    """Flip fractions of the run's own pairs at every scale of ``ladder``, and the chosen scale (module docstring)."""
    pairs = [(pi, seed, ni) for pi in range(len(ctx.prompts)) for seed in cfg.seeds for ni in range(cfg.noise_samples)]
    flips = [0] * len(ladder)
    for pi, seed, ni in pairs:
        for j, hit in enumerate(pair_flips(cfg, ctx, pi, seed, ni, ladder)):
            flips[j] += bool(hit)
    fractions = [round(f / len(pairs), 4) for f in flips]
    chosen, reached = choose(ladder, fractions, target)
    flip_by = "gt" if any(m.name == "gt" for m in ctx.metrics) else f"{ctx.scorer.name} drop >= {cfg.min_drop:g} points"
    record = {"rule": RULE, "target": target, "ladder": [float(s) for s in ladder], "flip_fraction": fractions, "flips": flips,
              "n_pairs": len(pairs), "flip_by": flip_by, "chosen": chosen, "reached_target": reached}
    if not reached:
        record["note"] = (f"no scale on the ladder flips {target:.0%} of the {len(pairs)} pairs; using {chosen:g}σ, "
                          f"the highest flip fraction ({max(fractions):.2f})")
    return record


def resolve(cfg, ctx, old_meta: dict | None) -> tuple[float, dict | None]:
    """The scale a sweep runs at and the ``noise.auto`` record: ``cfg.noise_scale`` itself unless ``auto``; for ``auto``,
    the record of ``old_meta`` (a resumed run: nothing is measured) or a new measurement, announced in one line."""
    if cfg.noise_scale != "auto":
        return float(cfg.noise_scale), None
    record = ((old_meta or {}).get("noise") or {}).get("auto")
    if record is not None:
        return float(record["chosen"]), record
    record = measure_scale(cfg, ctx)
    if record["reached_target"]:
        frac = record["flip_fraction"][record["ladder"].index(record["chosen"])]
        say(f"noise scale auto: {record['chosen']:g}σ flips {frac:.2f} of {record['n_pairs']} pairs (by {record['flip_by']})")
    else:
        say(f"noise scale auto: {record['note']}")
    return record["chosen"], record

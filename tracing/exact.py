"""Exact causal tracing: clean, corrupted and restored rows of one batched sampler call.

Usage::

    from diffloc.tracing.methods import TRACE_METHODS
    exact = TRACE_METHODS.get("exact")
    units = exact.plan(cfg, model, prompts, n_steps)
    table, strip = exact.run_unit(units[0], ctx, cfg)

Each unit is one :func:`tracing.sampler.patched_generate` call: row 0 clean, row 1 corrupted
(Gaussian noise of ``noise_scale`` σ on the attribute tokens' embeddings), then one row per
restoration. Scores come from every metric of the context; the indirect effect of a row is
``(restored − corrupted) / (clean − corrupted)`` per metric. Rows and the image strip come
from :mod:`tracing.rows`.

No-op rows are not generated (:func:`reused_rows`): a text-encoder row
cannot change the image when (a) every position it restores lies before the first corrupted
token of its encoder, and that encoder attends causally (CLIP: under the causal mask those states
are the same in the clean and the corrupted run; T5 attends both ways, so rule (a) never applies
to it), or when its encoder is not corrupted at all, or
(b) the prompt embeddings it hands the denoiser (and SDXL's pooled embedding) equal the corrupted
row's bit for bit, checked by running only the text encoders of the unit's batch (this finds,
e.g., SDXL's first text encoder's last layer, whose output the pipeline never reads). Denoiser
rows are never skipped. A skipped row takes the corrupted row's image and scores and is marked
``skipped_noop``. (c) A text-encoder row whose embeddings equal an earlier restored row's bit
for bit takes that row's image and is marked ``skipped_duplicate``: at a token after the
corrupted ones (whose own embedding is clean), restoring layer 0's attention output makes the
token's whole layer-0 output clean, exactly as restoring that layer's residual does.
A table with skipping equals one without, but for those two columns.
"""
from __future__ import annotations

import numpy as np
import torch

from .corruption import CORRUPTIONS
from .method_base import BaseMethod
from .rows import Label, best_strip, build_rows, reference_labels
from .sampler import Corruption, Restore, patched_embeddings, patched_generate
from .trace_config import Unit, UnitContext, plan_units


def unit_corruption(unit: Unit, ctx: UnitContext, cfg) -> Corruption:
    """The corruption of a unit: its prompt's ``noise_index``-th sample of the config's corruption mode."""
    mode = CORRUPTIONS.get(cfg.corrupt)
    return mode.make(cfg, ctx.model, ctx.prompts[unit.prompt_index], unit.seed, unit.noise_index)


def score_rows(images: torch.Tensor, texts: list[str], ctx: UnitContext) -> dict[str, np.ndarray]:
    """Every metric's score of every image: {name: [B]}."""
    with torch.no_grad():
        return {m.name: m(images, texts).detach().cpu().numpy().astype(float) for m in ctx.metrics}


def run_unit(unit: Unit, ctx: UnitContext, cfg) -> tuple:
    """One batched call: clean row, corrupted row, then the unit's restored rows; scored.

    Rows that cannot change the image are not generated (:func:`reused_rows`, module docstring).
    """
    model, prompt = ctx.model, ctx.prompts[unit.prompt_index]
    corruption = unit_corruption(unit, ctx, cfg)
    source = reused_rows(model, prompt.text, [r.restore for r in unit.rows], corruption)
    kept = [Restore()] + [r.restore for r, s in zip(unit.rows, source) if s < 0]
    images = patched_generate(model, prompt.text, kept, corruption, torch.Generator().manual_seed(unit.seed), ctx.scfg)
    index, k = [0, 1], 2  # the generated image of each row: a skipped row shows the row it equals
    for s in source:
        index.append(index[s] if s >= 0 else k)
        k += s < 0
    images = images[index]
    scores = score_rows(images, [prompt.text] * len(images), ctx)
    labels = reference_labels() + [Label.of(r) for r in unit.rows]
    flags = [{}, {}] + [dict(skipped_noop=bool(s == 1), skipped_duplicate=bool(s >= 2)) for s in source]
    df = build_rows(unit, ctx, cfg, ExactMethod.name, labels, scores, per_row=flags)
    return df, best_strip(images, scores[ctx.scorer.name])


def reused_rows(model, prompt: str, rows: list[Restore], corruption: Corruption) -> np.ndarray:
    """For each restored row, the batch row whose image it would repeat: 1 (the corrupted row:
    rules (a), (b)), 2 + j (an earlier restored row j with the same embeddings: rule (c)), or -1
    (generate it). int [len(rows)].

    Rules (b) and (c) encode the checked rows once more (text encoder only), a small cost beside
    the 20-step denoiser run they are spared."""
    text = [all(s.is_text for s in r.sites) for r in rows]
    source = np.full(len(rows), -1)
    for i, (t, r) in enumerate(zip(text, rows)):
        if t and r.tokens is not None and _before_corruption(model, r, corruption):
            source[i] = 1
    check = [i for i, t in enumerate(text) if t and source[i] < 0]
    if not check:
        return source
    # rows: clean, corrupted, then the checked ones
    cond = patched_embeddings(model, prompt, [Restore()] + [rows[i] for i in check], corruption)
    seen = {cond.fingerprint(1): 1}
    for j, i in enumerate(check, start=2):
        key = cond.fingerprint(j)
        if key in seen:
            source[i] = seen[key]
        else:
            seen[key] = 2 + i
    return source


def _before_corruption(model, row: Restore, corruption: Corruption) -> bool:
    """Rule (a): in every encoder the row restores, the encoder is not corrupted, or it attends causally and
    every restored position lies before its first corrupted one."""
    for comp in {s.component for s in row.sites}:
        if comp not in corruption.noise:
            continue
        if not model.family.causal_text(model, comp) or any(p >= min(corruption.at(comp)) for p in row.tokens):
            return False
    return True


class ExactMethod(BaseMethod):
    """Restore each planned site (text: at a token; denoiser: at all steps or in a step window)."""

    name = "exact"
    measures = True     # each row is a restored run
    skips_rows = True   # rows that cannot change the image are not generated (module docstring)

    def plan(self, cfg, model, prompts, n_steps: int) -> list[Unit]:
        self.options(cfg)
        return plan_units(cfg, model, prompts, n_steps)

    def run_unit(self, unit: Unit, ctx: UnitContext, cfg):
        return run_unit(unit, ctx, cfg)

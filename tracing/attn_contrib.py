"""``attn-contrib``: Zarei et al.'s attention-contribution ranking (NeurIPS 2025), with exact confirmation.

Usage::

    cfg = TraceConfig(model="toy-dit", attribute="colour", method="attn-contrib", method_options={"confirm_top": 6})
    table = run_sweep(cfg, "results/colour_contrib")   # contribution rows + exact rows of the top 6 blocks

    diffloc trace --model toy-dit --attribute colour --method attn-contrib --confirm-top 6 --out results/colour_contrib

A unit is one prompt × seed × corruption sample and costs one batched sampler call of two rows
(clean and corrupted, for the pair's scores and informativeness) and restores nothing. During
the clean row's denoising, every attention where image queries read the prompt (joint attention
in an MM-DiT, ``attn2`` cross-attention in a UNet or PixArt) is scored by
``|| W_o · A[image queries, concept tokens] · V ||``, averaged over image queries and steps
(:class:`~diffloc.tracing.families.joint_attention.ConceptContribution`); concept tokens are the
marked words' positions in the prompt sequence the denoiser reads: each corrupted encoder's own
positions, placed where the family puts that encoder's tokens (SD3: CLIP first, T5 after its 77;
FLUX: T5 only, ``Family.sequence_positions``). Rows carry the raw ``attn_contrib`` and, in
``effect_<scorer>``, the contribution over the unit's largest (so the top block reads as 1 and
the site summaries rank them exactly as the raw values do); as for the screens,
``<scorer>_score`` is the score that effect stands for, ``corrupted + effect × (clean − corrupted)``,
so every summary reads the rows like exact ones. Other metrics' columns stay empty.

Rows are named by the site exact patching restores to confirm them: a joint attention's
text->image slice (``...attn.txt2img``) where the family opens it, else its image-stream output
(``...attn.to_out.0``); a cross-attention's own site (``...attn2``). ``confirm_top = K`` (Zarei et
al. keep K = 6) traces the K best-ranked sites exactly on the same prompts, seeds and corruption,
and ``causal_sites.json`` names only confirmed sites.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .encoders import corrupted_encoders, word_positions
from .errors import ConfigError
from .exact import run_unit as exact_run_unit
from .exact import score_rows, unit_corruption
from .families.joint_attention import ConceptContribution, contribution_attentions
from .method_base import BaseMethod
from .rows import Label, best_strip, build_rows, reference_labels
from .sampler import Restore, patched_generate
from .sites import Site
from .trace_config import RowSpec, Unit, UnitContext, corruption_samples

CONFIRM = "+confirm"


@dataclass(frozen=True)
class ContribOptions:
    """Options of attention contribution."""

    confirm_top: int = field(default=0, metadata={"help": "Trace the K best-ranked blocks exactly too (Zarei et al.: 6)."})

    def __post_init__(self) -> None:
        if isinstance(self.confirm_top, bool) or not isinstance(self.confirm_top, int) or self.confirm_top < 0:
            raise ConfigError(f"--confirm-top must be an integer >= 0, got {self.confirm_top!r}")


def contribution_sites(model) -> list[tuple[str, Site]]:
    """(attention path, the site that names and confirms it) for every attention that reads the prompt."""
    comp, table = model.family.denoiser, set(model.sites.denoiser)
    out = []
    for path, _, kind in contribution_attentions(model.denoiser):
        candidates = [f"{path}.txt2img", f"{path}.to_out.0"] if kind == "joint" else [path]
        site = next((Site(comp, c) for c in candidates if Site(comp, c) in table), None)
        if site is not None:
            out.append((path, site))
    return out


class AttnContribMethod(BaseMethod):
    """Rank every prompt-reading attention by its concept tokens' contribution to the image queries."""

    name = "attn-contrib"
    Options: type = ContribOptions
    measures = False        # rows are a ranking, not restored runs
    restores_tokens = False
    bench_scopes = ("denoiser",)  # one forward per prompt against exact patching of every block state

    def plan(self, cfg, model, prompts, n_steps: int) -> list[Unit]:
        sites = contribution_sites(model)
        if not sites:
            raise ConfigError(f"--method attn-contrib: {model.name} has no attention where image queries read the prompt")
        opts = self.options(cfg)
        if opts.confirm_top > len(sites):
            raise ConfigError(f"--confirm-top {opts.confirm_top} outside 0..{len(sites)}, the attentions of {model.name}")
        comp = model.family.denoiser
        rows = tuple(RowSpec(Restore(), comp, "attn_contrib", str(site)) for _, site in sites)
        return [Unit(pi, seed, ni, "contrib", 0, rows)
                for pi, prompt in enumerate(prompts) for seed in cfg.seeds for ni in range(corruption_samples(cfg, model, prompt))]

    def run_unit(self, unit: Unit, ctx: UnitContext, cfg):
        if unit.component.endswith(CONFIRM):
            return exact_run_unit(unit, ctx, cfg)
        model, prompt = ctx.model, ctx.prompts[unit.prompt_index]
        words = word_positions(model, prompt, corrupted_encoders(model, cfg.text_encoder))
        concept = model.family.sequence_positions(model, words)  # each encoder's positions, in the sequence the denoiser reads
        if not concept:
            raise ConfigError(f"--method attn-contrib: the corrupted encoders ({', '.join(words)}) of {model.name} feed no token "
                              "sequence to the denoiser (only a pooled vector); allowed: an encoder whose tokens it attends to")
        with ConceptContribution(model.denoiser, concept) as cc:
            images = patched_generate(model, prompt.text, [Restore()], unit_corruption(unit, ctx, cfg),
                                      torch.Generator().manual_seed(unit.seed), ctx.scfg)   # [2, 3, H, W]: clean, corrupted
        clean_row = 2 if model.family.guidance(model, ctx.scfg.guidance_scale) else 0     # CFG: [uncond x2, cond x2]
        paths = dict(contribution_sites(model))
        raw = np.array([float(cc.scores[p][clean_row]) for p in paths])
        scores = score_rows(images, [prompt.text] * 2, ctx)
        n = len(unit.rows)
        per_metric = {m: list(v) + [np.nan] * n for m, v in scores.items()}
        table = build_rows(unit, ctx, cfg, self.name, reference_labels() + [Label.of(r) for r in unit.rows], per_metric,
                           extra=[{"attn_contrib": np.nan}] * 2 + [{"attn_contrib": float(c)} for c in raw])
        top = raw.max() if raw.size and raw.max() > 0 else np.nan
        m = ctx.scorer.name  # as the screens do: the score that the effect would be (summaries read rows alike)
        table.loc[2:, f"effect_{m}"] = raw / top
        table.loc[2:, f"{m}_score"] = table[f"{m}_corrupted"].iloc[2:] + (raw / top) * (table[f"{m}_clean"].iloc[2:] - table[f"{m}_corrupted"].iloc[2:])
        return table, best_strip(images, np.zeros(2))

    def followup(self, cfg, ctx: UnitContext, table: pd.DataFrame) -> list[Unit]:
        """Exact units restoring the ``confirm_top`` best-ranked sites at every step."""
        top = self.options(cfg).confirm_top
        if top <= 0:
            return []
        rows = table[(table.method == self.name) & (table.kind == "attn_contrib")]
        best = rows.groupby("site").attn_contrib.mean().sort_values(ascending=False, kind="stable").head(top).index
        comp = ctx.model.family.denoiser
        specs = tuple(RowSpec(Restore((Site.parse(s),)), comp, Site.parse(s).kind, s) for s in best)
        return [Unit(u.prompt_index, u.seed, u.noise_index, comp + CONFIRM, 0, specs)
                for u in self.plan(cfg, ctx.model, ctx.prompts, ctx.scfg.num_inference_steps)]

    def describe(self, options: ContribOptions) -> str:
        return f", attention contribution{f', top {options.confirm_top} confirmed' if options.confirm_top else ''}"

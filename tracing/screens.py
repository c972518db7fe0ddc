"""Gradient screens as trace methods (``atp``, ``ig``), with exact confirmation of the best sites.

Usage::

    cfg = TraceConfig(model="toy", attribute="colour", method="ig", method_options={"ig_steps": 8, "confirm_top": 8})
    table = run_sweep(cfg, "results/colour_ig")     # screen rows (method ig) + exact rows of the top 8

    diffloc trace --model toy --attribute colour --method ig --confirm-top 8 --out results/colour_ig

A screen unit is one prompt × seed × noise sample and covers every row of every component
(text-encoder layer × token × kind, denoiser site × window, heads too) from the same forward
and backward passes (:func:`tracing.attribution.screen`). Its rows carry ``method`` = atp / ig,
``effect_<scorer>`` = the estimated indirect effect and ``<scorer>_score`` = the estimated
restored score ``corrupted + effect × (clean − corrupted)``, so every summary (site effects,
intervals, figures) reads them like exact rows. Only the scorer (the metric of role
``scorer``, which must be differentiable) has a gradient: the other metrics' columns stay empty.

``confirm_top = K`` adds a second phase (:meth:`ScreenMethod.followup`): the K sites (site ×
token role × window) with the largest mean screened effect are traced exactly, on the same
prompts, seeds and noise; their rows carry ``method`` = exact, and ``causal_sites.json`` names
only confirmed sites.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .attribution import screen
from .encoders import EncoderWords, encoder_words
from .errors import ConfigError, DifflocInputError
from .exact import run_unit as exact_run_unit
from .exact import unit_corruption
from .method_base import BaseMethod
from .rows import Label, build_rows, empty_strip, is_text, reference_labels
from .trace_config import RowSpec, Unit, UnitContext, component_rows, corruption_samples, plan_units, traced_components

CONFIRM = "+confirm"  # suffix of the component of a confirmation unit (its rows run exactly)


@dataclass(frozen=True)
class ScreenOptions:
    """Options of a gradient screen."""

    confirm_top: int = field(default=0, metadata={"help": "Also trace the K best-screened sites exactly (causal_sites.json names only those)."})

    def __post_init__(self) -> None:
        if isinstance(self.confirm_top, bool) or not isinstance(self.confirm_top, int) or self.confirm_top < 0:
            raise ConfigError(f"--confirm-top must be an integer >= 0, got {self.confirm_top!r}")


@dataclass(frozen=True)
class IgOptions(ScreenOptions):
    """Options of integrated gradients."""

    ig_steps: int = field(default=8, metadata={"help": "Points on the path from corrupted to clean."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.ig_steps, bool) or not isinstance(self.ig_steps, int) or self.ig_steps < 1:
            raise ConfigError(f"--ig-steps must be an integer >= 1, got {self.ig_steps!r}")


def _rows(cfg, model, prompt, n_steps: int) -> list[RowSpec]:
    rows: list[RowSpec] = []
    for c in traced_components(cfg, model):
        rows += component_rows(model, prompt, cfg, c, n_steps)
    return rows


class ScreenMethod(BaseMethod):
    """A gradient screen: a few backward passes estimate every row of a prompt × seed."""

    Options: type = ScreenOptions
    measures = False  # rows are first-order estimates
    bench_scopes = ("text_encoder", "denoiser", "heads")

    def ig_steps(self, opts) -> int | None:
        """Points of the integrated-gradients path; None: the gradient at the corrupted run (AtP)."""
        return None

    def plan(self, cfg, model, prompts, n_steps: int) -> list[Unit]:
        opts = self.options(cfg)
        units = []
        for pi, prompt in enumerate(prompts):
            rows = tuple(_rows(cfg, model, prompt, n_steps))
            n_sites = len({(r.site, r.token, r.window) for r in rows})
            if opts.confirm_top > n_sites:
                raise ConfigError(f"--confirm-top {opts.confirm_top} outside 0..{n_sites}, the number of screened sites of a prompt")
            for seed in cfg.seeds:
                for ni in range(corruption_samples(cfg, model, prompt)):
                    units.append(Unit(pi, seed, ni, "screen", 0, rows))
        return units

    def run_unit(self, unit: Unit, ctx: UnitContext, cfg):
        if unit.component.endswith(CONFIRM):
            return exact_run_unit(unit, ctx, cfg)
        metric = ctx.scorer
        if not getattr(metric, "differentiable", False):
            raise DifflocInputError(f"--method {self.name} needs a differentiable scorer; {metric.name} ({metric.model_id}) is not")
        import torch

        prompt = ctx.prompts[unit.prompt_index]
        res = screen(ctx.model, prompt, unit.rows, unit_corruption(unit, ctx, cfg), torch.Generator().manual_seed(unit.seed),
                     ctx.scfg, metric, ig_steps=self.ig_steps(self.options(cfg)))
        return _table(self.name, unit, ctx, cfg, res, metric.name), empty_strip(ctx.model)

    def followup(self, cfg, ctx: UnitContext, table: pd.DataFrame) -> list[Unit]:
        """Exact units for the ``confirm_top`` best-screened sites (none when it is 0)."""
        top = self.options(cfg).confirm_top
        if top <= 0:
            return []
        from .causal import site_effects

        model, prompts = ctx.model, ctx.prompts
        eff = site_effects(table[table.method == self.name], ctx.scorer.name).sort_values("effect", ascending=False)
        keep = {(r.site, r.token_role, r.window_start, r.window_end) for r in eff.head(top).itertuples()}
        units, words = [], {}  # words: (prompt index, text encoder) -> EncoderWords; a row's role is its own encoder's
        for u in plan_units(cfg, model, prompts, ctx.scfg.num_inference_steps):
            rows = tuple(r for r in u.rows if _key(r, _words(words, model, prompts, u.prompt_index, r.component)) in keep)
            if rows:
                units.append(Unit(u.prompt_index, u.seed, u.noise_index, u.component + CONFIRM, u.chunk, rows))
        return units


class AtpMethod(ScreenMethod):
    """``atp``: attribution patching, the gradient at the corrupted run (one backward pass)."""

    name = "atp"


class IgMethod(ScreenMethod):
    """``ig``: integrated gradients over ``ig_steps`` points from the corrupted to the clean input."""

    name = "ig"
    Options = IgOptions

    def ig_steps(self, opts) -> int | None:
        return opts.ig_steps


def _words(cache: dict, model, prompts, index: int, component: str) -> EncoderWords | None:
    """The prompt's tokens in a text row's encoder (None for a denoiser row), computed once per prompt and encoder."""
    if not is_text(component):
        return None
    if (index, component) not in cache:
        cache[index, component] = encoder_words(model, prompts[index], component)
    return cache[index, component]


def _key(r: RowSpec, words: EncoderWords | None) -> tuple:
    w = r.window or (-1, -1)
    role = words.role(r.token) if words is not None else ""
    return (r.site, role, w[0], w[1])


def _steps_text(values, denom: float) -> str:
    """A denoiser row's per-step contributions on the effect scale, ';'-separated ("" for text rows or a zero denominator)."""
    if values is None or not denom:
        return ""
    return ";".join(f"{v / denom:.4g}" for v in values)


def _table(name: str, unit: Unit, ctx: UnitContext, cfg, res, metric: str) -> pd.DataFrame:
    n = len(unit.rows)
    scores = [res.clean_score, res.corrupted_score] + list(res.corrupted_score + res.estimates)
    denom = res.clean_score - res.corrupted_score
    absolute = [np.nan, np.nan] + list(res.estimates_abs / abs(denom) if denom else np.full(n, np.nan))
    steps = ["", ""] + [_steps_text(v, denom) for v in (res.row_steps or (None,) * n)]
    extra = [dict(screen_abs_effect=float(a), screen_seconds=float(res.seconds["total"]), screen_steps=t) for a, t in zip(absolute, steps)]
    labels = reference_labels() + [Label.of(r) for r in unit.rows]
    return build_rows(unit, ctx, cfg, name, labels, {metric: scores}, extra=extra)

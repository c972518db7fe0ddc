"""Gradient screens as trace methods (``atp``, ``ig``), with exact confirmation of the best sites.

Usage::

    cfg = TraceConfig(model="toy", attribute="colour", method="ig", ig_steps=8, confirm_top=8)
    table = run_sweep(cfg, "results/colour_ig")     # screen rows (method ig) + exact rows of the top 8

    diffloc trace --model toy --attribute colour --method ig --confirm-top 8 --out results/colour_ig

A screen unit is one prompt × seed × noise sample and covers every row of every component
(text-encoder layer × token × kind, UNet site × window, heads too) from the same forward and
backward passes (:func:`tracing.attribution.screen`). Its rows carry ``method`` = atp / ig,
``effect_clip`` = the estimated indirect effect and ``clip_score`` = the estimated restored
score ``corrupted + effect × (clean − corrupted)``, so every summary (site effects, intervals,
figures) reads them like exact rows. Ground truth has no gradient: screen rows leave it empty.

``confirm_top = K`` adds a second phase: the K sites (site × token role × window) with the
largest mean screened effect are traced exactly, on the same prompts, seeds and noise; their
rows carry ``method`` = exact, and ``causal_sites.json`` names only confirmed sites.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .attribution import screen
from .errors import ConfigError, DifflocInputError
from .exact import noise_seed, run_unit as exact_run_unit, with_effects
from .exact import _role as role_of
from .sampler import make_corruption
from .trace_config import RowSpec, TraceConfig, Unit, UnitContext, component_rows, plan_units, traced_components

CONFIRM = "+confirm"  # suffix of the component of a confirmation unit (its rows run exactly)


def _rows(cfg: TraceConfig, model, prompt, n_steps: int) -> list[RowSpec]:
    rows: list[RowSpec] = []
    for c in traced_components(cfg, model):
        rows += component_rows(model, prompt, cfg, c, n_steps)
    return rows


def _check(cfg: TraceConfig, n_rows: int) -> None:
    if cfg.method == "ig" and (not isinstance(cfg.ig_steps, int) or cfg.ig_steps < 1):
        raise ConfigError(f"--ig-steps must be an integer >= 1, got {cfg.ig_steps!r}")
    if cfg.confirm_top < 0 or cfg.confirm_top > n_rows:
        raise ConfigError(f"--confirm-top {cfg.confirm_top} outside 0..{n_rows}, the number of screened sites of a prompt")


class ScreenMethod:
    """``atp`` or ``ig``: one backward pass (or ``ig_steps``) estimates every row of a prompt × seed."""

    def __init__(self, name: str):
        self.name = name

    def plan(self, cfg: TraceConfig, model, prompts, n_steps: int) -> list[Unit]:
        units = []
        for pi, prompt in enumerate(prompts):
            rows = tuple(_rows(cfg, model, prompt, n_steps))
            _check(cfg, len({(r.site, r.token, r.window) for r in rows}))
            for seed in cfg.seeds:
                for ni in range(cfg.noise_samples):
                    units.append(Unit(pi, seed, ni, "screen", 0, rows))
        return units

    def run_unit(self, unit: Unit, ctx: UnitContext, cfg: TraceConfig):
        if unit.component.endswith(CONFIRM):
            return exact_run_unit(unit, ctx, cfg)
        metric = ctx.metrics[0]
        if not getattr(metric, "differentiable", False):
            raise DifflocInputError(f"--method {self.name} needs a differentiable scorer; {metric.name} ({metric.model_id}) is not")
        model, prompt = ctx.model, ctx.prompts[unit.prompt_index]
        positions = prompt.positions(model.tokenizer)
        corruption = make_corruption(model, positions, torch.Generator().manual_seed(noise_seed(unit.seed, unit.noise_index)), cfg.noise_scale)
        res = screen(model, prompt, unit.rows, corruption, torch.Generator().manual_seed(unit.seed), ctx.scfg, metric,
                     method=self.name, ig_steps=cfg.ig_steps)
        return _table(unit, ctx, cfg, res, prompt, positions, metric), _empty_strip(model)

    def followup(self, cfg: TraceConfig, model, prompts, n_steps: int, table: pd.DataFrame) -> list[Unit]:
        """Exact units for the ``confirm_top`` best-screened sites (none when it is 0)."""
        if cfg.confirm_top <= 0:
            return []
        from .causal import site_effects

        eff = site_effects(table[table.method == self.name], "clip").sort_values("effect", ascending=False)
        keep = {(r.site, r.token_role, r.window_start, r.window_end) for r in eff.head(cfg.confirm_top).itertuples()}
        units = []
        for u in plan_units(cfg, model, prompts, n_steps):
            pos = prompts[u.prompt_index].positions(model.tokenizer)
            n_tok = len(prompts[u.prompt_index].tokens(model.tokenizer))
            rows = tuple(r for r in u.rows if _key(r, pos, n_tok) in keep)
            if rows:
                units.append(Unit(u.prompt_index, u.seed, u.noise_index, u.component + CONFIRM, u.chunk, rows))
        return units


def _key(r: RowSpec, positions, n_tokens: int) -> tuple:
    w = r.window or (-1, -1)
    role = role_of(r.token, positions, n_tokens) if r.component.startswith("text_encoder") else ""
    return (r.site, role, w[0], w[1])


def _table(unit: Unit, ctx: UnitContext, cfg: TraceConfig, res, prompt, positions, metric) -> pd.DataFrame:
    tokens = prompt.tokens(ctx.model.tokenizer)
    base = dict(prompt_index=unit.prompt_index, prompt=prompt.marked, attribute=cfg.attribute, seed=unit.seed,
                noise_index=unit.noise_index, unit=unit.key, method=res.method, restore=cfg.restore, scorer=metric.model_id, formula=metric.formula)
    labels = [("clean", "clean", "", -1, -1, None), ("corrupted", "corrupted", "", -1, -1, None)]
    labels += [(r.component, r.kind, r.site, r.layer, r.token, r.window) for r in unit.rows]
    scores = [res.clean_score, res.corrupted_score] + list(res.corrupted_score + res.estimates)
    denom = res.clean_score - res.corrupted_score
    absolute = [np.nan, np.nan] + list(res.estimates_abs / abs(denom) if denom else np.full(len(unit.rows), np.nan))
    recs = []
    for i, (comp, kind, site, layer, tok, win) in enumerate(labels):
        recs.append(dict(base, row=i, component=comp, kind=kind, site=site, layer=layer, token=tok,
                         token_str=tokens[tok] if tok >= 0 else "", token_role=role_of(tok, positions, len(tokens)),
                         is_last_subject=tok == positions[-1], window_start=-1 if win is None else win[0],
                         window_end=-1 if win is None else win[1], skipped_noop=False, skipped_duplicate=False,
                         **{f"{metric.name}_score": float(scores[i])}, screen_abs_effect=float(absolute[i]),
                         screen_seconds=float(res.seconds["total"])))
    return with_effects(pd.DataFrame(recs), [metric.name])


def _empty_strip(model) -> dict:
    size = model.sample_size * (8 if model.vae is not None else 1)
    return {"images": np.zeros((0, 3, size, size), dtype=np.uint8), "rows": np.zeros(0, dtype=int)}

"""Exact causal tracing: clean, corrupted and restored rows of one batched sampler call.

Usage::

    from diffloc.tracing.methods import TRACE_METHODS
    exact = TRACE_METHODS.get("exact")
    units = exact.plan(cfg, model, prompts, n_steps)
    table, strip = exact.run_unit(units[0], ctx, cfg)

Each unit is one :func:`tracing.sampler.patched_generate` call: row 0 clean, row 1 corrupted
(Gaussian noise of ``noise_scale`` σ on the attribute tokens' embeddings), then one row per
restoration. Scores come from every metric of the context; the indirect effect of a row is
``(restored − corrupted) / (clean − corrupted)`` per metric.

No-op rows are not generated (``skip_noops``, default :data:`SKIP_NOOPS`): a text-encoder row
cannot change the image when (a) every position it restores lies before the first corrupted
token (under the causal mask those states are the same in the clean and the corrupted run), or
(b) the prompt embeddings it hands the UNet (and SDXL's pooled embedding) equal the corrupted
row's bit for bit, checked by running only the text encoders of the unit's batch (this finds,
e.g., SDXL's first text encoder's last layer, whose output the pipeline never reads). UNet rows
are never skipped. A skipped row takes the corrupted row's image and scores and is marked
``skipped_noop``. (c) A text-encoder row whose embeddings equal an earlier restored row's bit
for bit takes that row's image and is marked ``skipped_duplicate``: at a token after the
corrupted ones (whose own embedding is clean), restoring layer 0's attention output makes the
token's whole layer-0 output clean, exactly as restoring that layer's residual does.
A table with skipping equals one without, but for those two columns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .sampler import Corruption, Restore, make_corruption, patched_embeddings, patched_generate
from .trace_config import TraceConfig, Unit, UnitContext, plan_units

NOISE_SEED_BASE = 1_000_000  # noise generator seed = BASE + 1000 * seed + noise_index
SKIP_NOOPS = True  # run_unit's default: do not generate rows that cannot change the image


def noise_seed(seed: int, noise_index: int) -> int:
    return NOISE_SEED_BASE + 1000 * seed + noise_index



def score_rows(images: torch.Tensor, texts: list[str], ctx: UnitContext) -> dict[str, np.ndarray]:
    """Every metric's score of every image: {name: [B]}."""
    with torch.no_grad():
        return {m.name: m(images, texts).detach().cpu().numpy().astype(float) for m in ctx.metrics}


def with_effects(df: pd.DataFrame, names, clean_row: int = 0, corrupted_row: int = 1) -> pd.DataFrame:
    """Add ``<m>_clean``, ``<m>_corrupted`` and ``effect_<m>`` columns from two reference rows."""
    for name in names:
        clean, corrupt = df[f"{name}_score"].iloc[clean_row], df[f"{name}_score"].iloc[corrupted_row]
        df[f"{name}_clean"], df[f"{name}_corrupted"] = clean, corrupt
        denom = clean - corrupt
        df[f"effect_{name}"] = (df[f"{name}_score"] - corrupt) / denom if denom != 0 else np.nan
    return df


def run_unit(unit: Unit, ctx: UnitContext, cfg: TraceConfig, skip_noops: bool | None = None) -> tuple[pd.DataFrame, dict]:
    """One batched call: clean row, corrupted row, then the unit's restored rows; scored.

    ``skip_noops`` (None: :data:`SKIP_NOOPS`) leaves no-op rows out of the call (module docstring).
    """
    model, prompt = ctx.model, ctx.prompts[unit.prompt_index]
    positions = prompt.positions(model.tokenizer)
    corruption = make_corruption(model, positions, torch.Generator().manual_seed(noise_seed(unit.seed, unit.noise_index)), cfg.noise_scale)
    restores = [r.restore for r in unit.rows]
    if SKIP_NOOPS if skip_noops is None else skip_noops:
        source = reused_rows(model, prompt.text, restores, corruption)
    else:
        source = np.full(len(restores), -1)
    kept = [Restore()] + [r for r, s in zip(restores, source) if s < 0]
    images = patched_generate(model, prompt.text, kept, corruption, torch.Generator().manual_seed(unit.seed), ctx.scfg)
    index, k = [0, 1], 2  # the generated image of each row: a skipped row shows the row it equals
    for s in source:
        index.append(index[s] if s >= 0 else k)
        k += s < 0
    images = images[index]
    scores = score_rows(images, [prompt.text] * len(images), ctx)
    clip = ctx.metrics[0]
    tokens = prompt.tokens(model.tokenizer)
    base = dict(prompt_index=unit.prompt_index, prompt=prompt.marked, attribute=cfg.attribute, seed=unit.seed,
                noise_index=unit.noise_index, unit=unit.key, method="exact", restore=cfg.restore, scorer=clip.model_id, formula=clip.formula)
    labels = [("clean", "clean", "", -1, -1, None), ("corrupted", "corrupted", "", -1, -1, None)]
    labels += [(r.component, r.kind, r.site, r.layer, r.token, r.window) for r in unit.rows]
    recs = []
    for i, (comp, kind, site, layer, tok, win) in enumerate(labels):
        rec = dict(base, row=i, component=comp, kind=kind, site=site, layer=layer, token=tok,
                   token_str=tokens[tok] if tok >= 0 else "", token_role=_role(tok, positions, len(tokens)),
                   is_last_subject=tok == positions[-1], window_start=-1 if win is None else win[0],
                   window_end=-1 if win is None else win[1], skipped_noop=bool(i >= 2 and source[i - 2] == 1),
                   skipped_duplicate=bool(i >= 2 and source[i - 2] >= 2))
        rec.update({f"{name}_score": float(s[i]) for name, s in scores.items()})
        recs.append(rec)
    df = with_effects(pd.DataFrame(recs), scores)
    first = scores[clip.name]
    best = np.argsort(-first[2:])[:3] + 2 if len(first) > 2 else np.array([], dtype=int)
    keep = np.concatenate([[0, 1], best]).astype(int)
    return df, {"images": (images[keep] * 255).round().byte().cpu().numpy(), "rows": keep}


def noop_rows(model, prompt: str, rows: list[Restore], corruption: Corruption) -> np.ndarray:
    """Which restored rows cannot change the image (rules (a) and (b) of the module docstring): bool [len(rows)]."""
    return reused_rows(model, prompt, rows, corruption) == 1


def reused_rows(model, prompt: str, rows: list[Restore], corruption: Corruption) -> np.ndarray:
    """For each restored row, the batch row whose image it would repeat: 1 (the corrupted row:
    rules (a), (b)), 2 + j (an earlier restored row j with the same embeddings: rule (c)), or -1
    (generate it). int [len(rows)].

    Rules (b) and (c) encode the checked rows once more (text encoder only), a small cost beside
    the 20-step UNet run they are spared."""
    first = min(corruption.positions)
    text = [all(s.is_text for s in r.sites) for r in rows]
    source = np.full(len(rows), -1)
    for i, (t, r) in enumerate(zip(text, rows)):
        if t and r.tokens is not None and all(p < first for p in r.tokens):
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


def _role(tok: int, positions: tuple[int, ...], n_tokens: int) -> str:
    if tok < 0:
        return ""
    if tok == 0:
        return "bos"
    if tok == n_tokens - 1:
        return "eos"
    if tok == positions[-1]:
        return "last_subject"
    if tok in positions:
        return "subject"
    return "before" if tok < positions[0] else "after"




class ExactMethod:
    """Restore each planned site (text: at a token; UNet: at all steps or in a window)."""

    name = "exact"

    def plan(self, cfg: TraceConfig, model, prompts, n_steps: int) -> list[Unit]:
        return plan_units(cfg, model, prompts, n_steps)

    def run_unit(self, unit: Unit, ctx: UnitContext, cfg: TraceConfig):
        return run_unit(unit, ctx, cfg)

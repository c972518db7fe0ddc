"""The one trace-row builder and the one image-strip builder every trace method uses.

Usage::

    labels = reference_labels() + [Label.of(r) for r in unit.rows]     # rows 0, 1: clean, corrupted
    df = build_rows(unit, ctx, cfg, method.name, labels, scores)      # the columns of trace.parquet
    strip = best_strip(images, scores[ctx.scorer.name])               # rows 0, 1 and the best 3

A row of ``trace.parquet`` is: the unit's base columns (prompt, seed, noise index, unit key,
method, restore mode, scorer and its formula, plus a method's own ``base`` columns), then the
row's labels (component, kind, site, layer, token and its role, step window), the no-op flags,
one ``<metric>_score`` per metric, a method's own per-row columns, and the effect columns
``<m>_clean``, ``<m>_corrupted`` and ``effect_<m>`` (:func:`with_effects`).

A text row's ``token``, ``token_str`` and ``token_role`` are its own encoder's (:mod:`tracing.encoders`:
SD3's T5 rows count T5 tokens, which have no BOS). A row's ``component`` is a text encoder when it
starts with ``text_encoder``; a restored row of any other component is the denoiser's; the
reference rows say ``clean`` / ``corrupted``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .encoders import EncoderWords, encoder_words, role_of  # noqa: F401  (role_of: re-exported)

TEXT_PREFIX = "text_encoder"
REFERENCE_KINDS = ("clean", "corrupted")
#: label columns, in table order; ``reference`` and ``window_layers`` only where a method sets them
LABEL_ORDER = ("row", "component", "kind", "reference", "site", "layer", "window_layers", "token", "token_str", "token_role",
               "is_last_subject", "window_start", "window_end", "skipped_noop", "skipped_duplicate")
STRIP_BEST = 3  # restored rows shown in a unit's image strip


def is_text(component: str) -> bool:
    """A text-encoder component (``text_encoder``, ``text_encoder_2``, ...)."""
    return str(component).startswith(TEXT_PREFIX)


def denoiser_components(table: pd.DataFrame) -> list[str]:
    """The denoiser component(s) a table's restored rows name (none for a text-only trace)."""
    comps = table.component.dropna().unique()
    return [c for c in comps if not is_text(c) and c not in REFERENCE_KINDS]


@dataclass(frozen=True)
class Label:
    """What one row restores: component, kind, site, layer, token and step window (None: all steps)."""

    component: str
    kind: str
    site: str = ""
    layer: int = -1
    token: int = -1
    window: tuple[int, int] | None = None

    @classmethod
    def of(cls, spec) -> "Label":
        """The label of a :class:`~tracing.trace_config.RowSpec`."""
        return cls(spec.component, spec.kind, spec.site, spec.layer, spec.token, spec.window)


def reference_labels(order: Sequence[str] = REFERENCE_KINDS) -> list[Label]:
    """The two reference rows (clean, corrupted), in ``order``."""
    return [Label(k, k) for k in order]


def with_effects(df: pd.DataFrame, names, clean_row: int = 0, corrupted_row: int = 1) -> pd.DataFrame:
    """Add ``<m>_clean``, ``<m>_corrupted`` and ``effect_<m>`` columns from two reference rows."""
    for name in names:
        clean, corrupt = df[f"{name}_score"].iloc[clean_row], df[f"{name}_score"].iloc[corrupted_row]
        df[f"{name}_clean"], df[f"{name}_corrupted"] = clean, corrupt
        denom = clean - corrupt
        df[f"effect_{name}"] = (df[f"{name}_score"] - corrupt) / denom if denom != 0 else np.nan
    return df


def _label_columns(i: int, lab: Label, words: EncoderWords) -> dict:
    tok = lab.token
    return dict(row=i, component=lab.component, kind=lab.kind, site=lab.site, layer=lab.layer, token=tok,
                token_str=words.tokens[tok] if tok >= 0 else "", token_role=words.role(tok),
                is_last_subject=tok == words.positions[-1], window_start=-1 if lab.window is None else lab.window[0],
                window_end=-1 if lab.window is None else lab.window[1], skipped_noop=False, skipped_duplicate=False)


def build_rows(unit, ctx, cfg, method: str, labels: Sequence[Label], scores: dict[str, Sequence[float]],
               base: dict | None = None, per_row: Sequence[dict] | None = None, extra: Sequence[dict] | None = None,
               clean_row: int = 0, corrupted_row: int = 1) -> pd.DataFrame:
    """The rows of one unit: base columns, labels, ``<m>_score`` per metric, ``extra`` columns, effects.

    ``per_row[i]`` overrides or adds label columns of row ``i`` (``skipped_noop``, ``reference``,
    ``window_layers``); ``extra[i]`` adds columns after the scores. The scorer recorded in every
    row is ``ctx.scorer``, the metric whose role is ``scorer``.
    """
    prompt, model = ctx.prompts[unit.prompt_index], ctx.model
    words: dict[str, EncoderWords] = {}  # a text row's token, its label and role are its own encoder's

    def words_of(component: str) -> EncoderWords:
        comp = component if is_text(component) and component in model.tokenizers else model.text_components[0]
        if comp not in words:
            words[comp] = encoder_words(model, prompt, comp)
        return words[comp]

    scorer = ctx.scorer
    head = dict(prompt_index=unit.prompt_index, prompt=prompt.marked, attribute=cfg.attribute, seed=unit.seed,
                noise_index=unit.noise_index, corrupt=getattr(cfg, "corrupt", "gaussian"), unit=unit.key, method=method, restore=cfg.restore,
                scorer=scorer.model_id, formula=scorer.formula, **(base or {}))
    recs = []
    for i, lab in enumerate(labels):
        cols = {**_label_columns(i, lab, words_of(lab.component)), **(per_row[i] if per_row else {})}
        rec = dict(head, **{k: cols[k] for k in LABEL_ORDER if k in cols})
        rec.update({f"{name}_score": float(s[i]) for name, s in scores.items()})
        rec.update(extra[i] if extra else {})
        recs.append(rec)
    return with_effects(pd.DataFrame(recs), scores, clean_row, corrupted_row)


def best_strip(images: Any, key: np.ndarray) -> dict:
    """A unit's image strip: rows 0 and 1 (the references) and the ``STRIP_BEST`` restored rows of largest ``key``.

    ``images``: [B, 3, H, W] float in [0, 1]; ``key``: [B] (rows 0, 1 ignored; NaN ranks last).
    Returns ``{"images": uint8 [k, 3, H, W], "rows": int [k]}``.
    """
    key = np.asarray(key, dtype=float)[2:]
    best = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")[:STRIP_BEST] + 2
    keep = np.concatenate([[0, 1], best]).astype(int)
    return {"images": (images[keep] * 255).round().byte().cpu().numpy(), "rows": keep}


def empty_strip(model) -> dict:
    """No images (a method that generates none, such as a gradient screen)."""
    size = model.sample_size * (8 if model.vae is not None else 1)
    return {"images": np.zeros((0, 3, size, size), dtype=np.uint8), "rows": np.zeros(0, dtype=int)}

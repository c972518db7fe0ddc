"""Diffusion-transformer figures: the block × stream heatmap, the text->image slice chart and the
attention-contribution chart, with the matrices behind them.

Usage::

    from diffloc.plots_dit import block_heatmap, dit_block_matrix, txt2img_chart

    mat = dit_block_matrix(table, "clip", "transformer")      # rows: kinds in stream order, columns: blocks
    paths = block_heatmap(table, out_dir)                     # <component>_blocks.png / .pdf
    paths = txt2img_chart(table, out_dir, bootstrap=(1000, 0))
    paths = contrib_chart(table, out_dir)                     # attn-contrib rows only

``save`` (default :func:`diffloc.plot_common._save`) writes each figure; :mod:`diffloc.plots`
re-exports these charts, passing its own ``_save``, and :func:`diffloc.plots.plot_run` draws them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from diffloc.tracing.causal import site_effects
from diffloc.tracing.rows import denoiser_components
from diffloc.tracing.sites import Site, SiteError
from diffloc.tracing.stats import LEVEL, PAIR, bootstrap_effects
from diffloc.tracing.trace_config import DEFAULT_METHOD

from .plot_common import CMAPS, SCREEN_KINDS, _save, _short, counts_text, pair_counts, protocol

# bar colours of DiT kinds in the effect chart, ROME-like: reds attention, greens feed-forward, purples stream states
DIT_COLOURS = {"pooled": "#8c6bb1", "attn_text": "#fc9272", "txt2img": "#ef3b2c", "attn_image": "#a50f15", "ff_context": "#74c476",
               "ff": "#006d2c", "out_text": "#9e9ac8", "out_image": "#54278f", "attn_single": "#cb181d"}
#: heatmap rows of a DiT, in stream order: pooled path, text-stream attention, the text->image slice,
#: image-stream attention, the two feed-forwards, the two output streams; FLUX single blocks; PixArt
DIT_ROWS = ("pooled", "attn_text", "txt2img", "attn_image", "ff_context", "ff", "out_text", "out_image",
            "single_attn", "single_out_text", "single_out_image", "attn1", "attn2")
DIT_ROW_LABELS = {"pooled": "pooled (time_text_embed)", "attn_text": "attn → text (to_add_out)",
                  "txt2img": "text → image (attn slice)", "attn_image": "attn → image (to_out.0)",
                  "ff_context": "ff_context (text)", "ff": "ff (image)", "out_text": "out text (@text)",
                  "out_image": "out image (@image)", "single_attn": "single: attn", "single_out_text": "single: out text",
                  "single_out_image": "single: out image", "attn1": "attn1 (self)", "attn2": "attn2 (cross)"}
#: ROME colours by family: attention Reds, feed-forward Greens, stream states (residual) Purples
DIT_FAMILY = {"attn_text": "attn", "txt2img": "attn", "attn_image": "attn", "single_attn": "attn", "attn1": "attn", "attn2": "attn",
              "ff": "mlp", "ff_context": "mlp", "pooled": "hidden", "out_text": "hidden", "out_image": "hidden",
              "single_out_text": "hidden", "single_out_image": "hidden"}
FAMILY_LABELS = {"attn": "attention", "mlp": "feed-forward", "hidden": "stream state"}
POOLED_BLOCK = -1  # the column of ``time_text_embed``: before block 0


def dit_cell(site: str) -> tuple[str, int] | None:
    """(heatmap row, block index) of a DiT site; None for a site outside the block × stream grid
    (heads, UNet sites, other modules). ``time_text_embed`` sits in column :data:`POOLED_BLOCK`."""
    try:
        s = Site.parse(site)
    except SiteError:
        return None
    if s.head is not None or s.is_text:
        return None
    if s.path == "time_text_embed":
        return "pooled", POOLED_BLOCK
    m = re.fullmatch(r"(single_)?transformer_blocks\.(\d+)", s.block)  # Site.block groups DiT paths by block
    if not m:
        return None
    kind = "txt2img" if s.path.endswith(".attn.txt2img") else s.kind
    if m.group(1):
        kind = "single_" + ("attn" if kind == "attn_single" else kind)
    return (kind, int(m.group(2))) if kind in DIT_ROWS else None


def is_dit(table: pd.DataFrame, component: str) -> bool:
    """Whether a denoiser component's rows name DiT blocks (SD3 / toy-dit, FLUX, PixArt)."""
    sites = table.loc[table.component == component, "site"].dropna().unique()
    return any(dit_cell(s) is not None for s in sites)


def _effect_rows(table: pd.DataFrame, component: str) -> pd.DataFrame:
    rows = table[(table.component == component) & ~table.kind.isin(SCREEN_KINDS)]
    return rows[~rows.kind.str.endswith("_head")]


def _panels_of(rows: pd.DataFrame) -> list[tuple[str | None, int, int]]:
    """(method, window start, window end) of each block × stream panel."""
    method = rows.method if "method" in rows.columns else pd.Series(None, index=rows.index)
    keys = pd.DataFrame({"method": method, "ws": rows.window_start, "we": rows.window_end}).drop_duplicates()
    return [(m if isinstance(m, str) else None, int(a), int(b)) for m, a, b in keys.itertuples(index=False)]


def dit_block_matrix(table: pd.DataFrame, metric: str = "clip", component: str = "transformer", method: str | None = None,
                     window: tuple[int, int] | None = None) -> pd.DataFrame:
    """The block × stream heatmap's matrix: rows the kinds of :data:`DIT_ROWS` present (stream order),
    columns the block indices (:data:`POOLED_BLOCK` for the pooled path), values the ratio-of-means
    effect of each site (:func:`diffloc.tracing.causal.site_effects`), NaN where no site was traced.
    ``method`` / ``window`` pick the rows of one method and one step window (default: all). Columns run
    over every block from 0 (or the pooled column) to the last traced one, untraced blocks all NaN."""
    rows = _effect_rows(table, component)
    if method is not None and "method" in rows.columns:
        rows = rows[rows.method == method]
    if window is not None:
        rows = rows[(rows.window_start == window[0]) & (rows.window_end == window[1])]
    eff = site_effects(rows, metric) if len(rows) else pd.DataFrame(columns=["site", "effect"])
    cells = [(dit_cell(s), e) for s, e in zip(eff.site, eff.effect)]
    cells = [(c[0], c[1], e) for c, e in cells if c is not None]
    frame = pd.DataFrame(cells, columns=["row", "block", "effect"])
    mat = frame.pivot_table(index="row", columns="block", values="effect", aggfunc="mean", dropna=False)
    blocks = sorted(set(frame.block))
    cols = list(range(min(0, blocks[0]), blocks[-1] + 1)) if blocks else []  # every block up to the last traced one
    order = [r for r in DIT_ROWS if r in set(frame.row)]
    if {"attn1", "attn2"} & set(order) and "ff" in order:  # PixArt: attn1, attn2, ff, as a block runs them
        order = [r for r in order if r != "ff"] + ["ff"]
    mat = mat.reindex(index=order, columns=cols)
    mat.index.name, mat.columns.name = "kind", "block"
    return mat.astype(float)


def _grid(ax, mat: pd.DataFrame, norm, annotate: bool) -> dict:
    """Draw ``mat`` cell by cell in its family's colour map; returns {family: ScalarMappable}."""
    from matplotlib.cm import ScalarMappable

    values = mat.to_numpy(dtype=float)
    ax.set_facecolor("#eeeeee")  # not traced
    maps = {}
    for fam in ("hidden", "mlp", "attn"):
        mask = np.array([DIT_FAMILY[r] != fam for r in mat.index])[:, None] | np.isnan(values)
        if mask.all():
            continue
        ax.imshow(np.ma.array(values, mask=mask), cmap=CMAPS[fam], norm=norm, aspect="auto", interpolation="nearest")
        maps[fam] = ScalarMappable(norm=norm, cmap=CMAPS[fam])
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                frac = (min(max(v, norm.vmin), norm.vmax) - norm.vmin) / max(norm.vmax - norm.vmin, 1e-9)
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if frac > 0.6 else "black")
    ax.set_xticks(range(mat.shape[1]))
    ax.set_xticklabels(["emb" if b == POOLED_BLOCK else str(b) for b in mat.columns], fontsize=8)
    ax.set_yticks(range(mat.shape[0]))
    ax.set_yticklabels([DIT_ROW_LABELS[r] for r in mat.index], fontsize=8)
    ax.set_xticks(np.arange(-0.5, mat.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, mat.shape[0]), minor=True)
    ax.grid(which="minor", color="white", lw=1.2)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("block")
    return maps


def block_heatmap(table: pd.DataFrame, out: Path, metric: str = "clip", counts: tuple[int, int | None] | None = None,
                  save: Callable = _save) -> list[Path]:
    """Block × stream heatmap of each DiT denoiser component (``<component>_blocks``), one panel per method and step window."""
    from matplotlib.colors import Normalize

    paths = []
    counts = counts or pair_counts(table)
    for comp in [c for c in denoiser_components(table) if is_dit(table, c)]:
        rows = _effect_rows(table, comp)
        panels = [(m, ws, we, dit_block_matrix(table, metric, comp, m, (ws, we))) for m, ws, we in _panels_of(rows)]
        panels = [p for p in panels if p[3].size]
        if not panels:
            continue
        top = max(1.0, *(float(np.nanmax(p[3].to_numpy())) if np.isfinite(p[3].to_numpy()).any() else 1.0 for p in panels))
        norm = Normalize(vmin=0.0, vmax=top)  # floor: the corrupted level, as the text heatmaps
        n_cols = max(p[3].shape[1] for p in panels)
        heights = [0.36 * p[3].shape[0] + 0.9 for p in panels]
        families = [f for f in ("attn", "mlp", "hidden") if any(DIT_FAMILY[r] == f for p in panels for r in p[3].index)]
        grid_w, bar_w = max(5.0, (0.55 if n_cols <= 30 else 0.38) * n_cols + 0.5), 0.85  # inches: the cells, one colour bar and its labels
        left_w = 1.9  # the row labels
        width = left_w + grid_w + 0.2 + bar_w * len(families)
        height = sum(heights) + 0.45 * (len(panels) - 1) + 1.5
        fig, axes = plt.subplots(len(panels), 1, figsize=(width, height), squeeze=False, gridspec_kw={"height_ratios": heights})
        top, bottom = 1 - 0.95 / height, 0.55 / height
        fig.subplots_adjust(left=left_w / width, right=(left_w + grid_w) / width, top=top, bottom=bottom,
                            hspace=0.45 * len(panels) / sum(heights))
        maps: dict = {}
        for ax, (m, ws, we, mat) in zip(axes[:, 0], panels):
            maps.update(_grid(ax, mat, norm, annotate=mat.shape[1] <= 30))
            win = "all steps" if ws < 0 else f"steps [{ws}, {we})"
            ax.set_title(f"{m or DEFAULT_METHOD}: restore one site at {win}", fontsize=9, loc="left")
        for k, fam in enumerate(families):  # one colour bar per ROME family, all on the same 0..top scale
            x0 = (left_w + grid_w + 0.2 + k * bar_w) / width
            cax = fig.add_axes((x0, bottom, 0.14 / width, top - bottom - 0.1 / height))
            cb = fig.colorbar(maps.get(fam) or plt.cm.ScalarMappable(norm=norm, cmap=CMAPS[fam]), cax=cax)
            cb.set_label(f"effect, {FAMILY_LABELS[fam]}", fontsize=8, labelpad=2)
            cb.ax.tick_params(labelsize=7)
        methods = " + ".join(dict.fromkeys(m or DEFAULT_METHOD for m, *_ in panels))
        fig.suptitle(f"{table.attribute.iloc[0]}: {comp} blocks × streams, {methods}; {counts_text(counts)}\n"
                     f"cells: ratio-of-means indirect effect ({metric}), 0 = corrupted, 1 = clean; grey: not traced",
                     fontsize=10, x=0.02, ha="left", y=1 - 0.08 / height, va="top")
        paths += save(fig, out / f"{comp}_blocks")
    return paths


def txt2img_chart(table: pd.DataFrame, out: Path, metric: str = "clip", bootstrap: tuple[int, int] = (1000, 0),
                  counts: tuple[int, int | None] | None = None, save: Callable = _save) -> list[Path]:
    """Effect of each block's text->image attention slice (``...attn.txt2img``) with its 95% bootstrap interval."""
    paths = []
    counts = counts or pair_counts(table)
    for comp in denoiser_components(table):
        rows = _effect_rows(table, comp)
        rows = rows[rows.site.astype(str).str.endswith(".attn.txt2img")]
        if rows.empty:
            continue
        if "method" in rows.columns and rows.method.nunique() > 1:  # a screen and its exact confirmation: the exact rows
            methods = list(rows.method.dropna().unique())
            rows = rows[rows.method == (DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0])]
        eff = bootstrap_effects(rows, metric, n=bootstrap[0], seed=bootstrap[1])
        eff["block"] = [dit_cell(s)[1] if dit_cell(s) else -1 for s in eff.site]
        windows = eff[["window_start", "window_end"]].drop_duplicates().values.tolist()
        blocks = sorted(eff.block.unique())
        fig, ax = plt.subplots(figsize=(max(8.0, 0.6 * len(blocks) + 3), 4.0))
        width = 0.8 / len(windows)
        for i, (ws, we) in enumerate(windows):
            e = eff[(eff.window_start == ws) & (eff.window_end == we)].sort_values("block")
            x = np.array([blocks.index(b) for b in e.block]) + (i - (len(windows) - 1) / 2) * width
            err = np.nan_to_num(np.clip([e.effect - e.lower, e.upper - e.effect], 0, None))
            label = "all steps" if ws < 0 else f"steps [{ws}, {we})"
            ax.bar(x, e.effect, width=width, color=DIT_COLOURS["txt2img"], alpha=1.0 - 0.5 * i / max(1, len(windows)),
                   yerr=err, error_kw={"elinewidth": 0.9, "capsize": 3, "ecolor": "#333333"}, label=label)
        ax.axhline(0, color="k", lw=0.6)
        ax.axhline(1, color="#888888", lw=0.6, ls="--")
        ax.text(1.0, 1, " clean", transform=ax.get_yaxis_transform(), fontsize=7, va="center", color="#666666")
        ax.set_xticks(range(len(blocks)))
        ax.set_xticklabels([str(b) for b in blocks])
        ax.set_xlabel("block")
        ax.set_ylabel(f"indirect effect ({metric})")
        if len(windows) > 1:
            ax.legend(fontsize=7)
        n_pp = len(rows[list(PAIR)].drop_duplicates())
        method, _ = protocol(rows)
        ax.set_title(f"{table.attribute.iloc[0]}: {comp} text → image attention slice per block, {method}; {counts_text(counts)}\n"
                     f"bars: ratio-of-means effect of restoring what the image queries read from the prompt\n"
                     f"whiskers: {LEVEL:.0%} bootstrap interval over {n_pp} prompt × seed pairs", fontsize=8.5, loc="left")
        fig.tight_layout()
        paths += save(fig, out / f"{comp}_txt2img")
    return paths


def contrib_per_block(table: pd.DataFrame, component: str = "transformer", bootstrap: tuple[int, int] = (1000, 0),
                      metric: str = "clip") -> pd.DataFrame:
    """Per ``attn_contrib`` site, in table order: mean raw contribution over prompt × seed pairs (a pair's
    corruption samples averaged first), its 95% percentile bootstrap interval over pairs, ``n_pairs``,
    and ``confirmed`` with ``exact_effect`` where the table also restores the site exactly."""
    rows = table[(table.component == component) & (table.kind == "attn_contrib")]
    if rows.empty or "attn_contrib" not in rows.columns:
        return pd.DataFrame(columns=["site", "block", "mean", "lower", "upper", "n_pairs", "confirmed", "exact_effect"])
    per_pair = rows.groupby(["site", *PAIR], sort=False).attn_contrib.mean().unstack("site")  # [pairs, sites]
    sites = list(dict.fromkeys(rows.site))
    vals = per_pair[sites].to_numpy(dtype=float)
    n_p = len(vals)
    rng = np.random.default_rng(bootstrap[1])
    draws = rng.integers(0, n_p, size=(bootstrap[0], n_p))
    with np.errstate(invalid="ignore"):
        boot = np.nanmean(vals[draws], axis=1) if n_p > 1 else np.repeat(vals, max(1, bootstrap[0]), axis=0)
    q = 100 * (1 - LEVEL) / 2
    lo, hi = np.nanpercentile(boot, [q, 100 - q], axis=0) if np.isfinite(boot).any() else (np.full(len(sites), np.nan),) * 2
    out = pd.DataFrame({"site": sites, "mean": np.nanmean(vals, axis=0), "lower": lo, "upper": hi,
                        "n_pairs": np.isfinite(vals).sum(axis=0)})
    out["block"] = [dit_cell(s)[1] if dit_cell(s) else None for s in sites]
    exact = _effect_rows(table, component)
    exact = exact[exact.site.isin(sites)]
    eff = site_effects(exact, metric).groupby("site").effect.mean() if len(exact) else pd.Series(dtype=float)
    out["confirmed"] = out.site.isin(set(exact.site))
    out["exact_effect"] = out.site.map(eff)
    return out


def contrib_chart(table: pd.DataFrame, out: Path, bootstrap: tuple[int, int] = (1000, 0),
                  counts: tuple[int, int | None] | None = None, metric: str = "clip", save: Callable = _save) -> list[Path]:
    """``attn-contrib`` rows: mean raw attention contribution per block, 95% bootstrap interval over pairs,
    exactly confirmed sites outlined and labelled with their exact effect (``<component>_attn_contrib``)."""
    paths = []
    counts = counts or pair_counts(table)
    for comp in denoiser_components(table):
        c = contrib_per_block(table, comp, bootstrap, metric)
        if c.empty:
            continue
        dit = c.block.notna().all()
        labels = [str(int(b)) for b in c.block] if dit else [_short(s) for s in c.site]
        fig, ax = plt.subplots(figsize=(max(8.0, 0.45 * len(c) + 3), 4.0))
        err = np.nan_to_num(np.clip([c["mean"] - c.lower, c.upper - c["mean"]], 0, None))
        ax.bar(range(len(c)), c["mean"], color=["#cb181d" if k else "#fcbba1" for k in c.confirmed],
               edgecolor=["black" if k else "none" for k in c.confirmed], linewidth=1.2,
               yerr=err, error_kw={"elinewidth": 0.9, "capsize": 3, "ecolor": "#333333"})
        for i, r in enumerate(c.itertuples()):
            if r.confirmed:
                tag = "✓ exact" + ("" if pd.isna(r.exact_effect) else f"\n{r.exact_effect:.2f}")
                ax.annotate(tag, (i, max(r.upper if np.isfinite(r.upper) else r.mean, r.mean)), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(c)))
        ax.set_xticklabels(labels, rotation=0 if dit else 90, fontsize=8 if dit else 6)
        ax.set_xlabel("block" if dit else "attention")
        ax.set_ylabel("attention contribution (raw)")
        ax.margins(y=0.18)
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor="#cb181d", edgecolor="black"), plt.Rectangle((0, 0), 1, 1, color="#fcbba1")]
        ax.legend(handles, [f"confirmed exactly (label: its {metric} effect)", "ranked only"], fontsize=7, loc="upper left")
        n_pp = int(c.n_pairs.max())
        ax.set_title(f"{table.attribute.iloc[0]}: {comp} attention contribution of the concept tokens per "
                     f"{'block' if dit else 'attention'}; {counts_text(counts)}\n"
                     f"bars: mean ||W_o A V|| over {n_pp} prompt × seed pairs; whiskers: {LEVEL:.0%} bootstrap interval over pairs",
                     fontsize=8.5, loc="left")
        fig.tight_layout()
        paths += save(fig, out / f"{comp}_attn_contrib")
    return paths

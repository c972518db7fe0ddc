"""Figures of a trace, drawn from ``trace.parquet`` alone.

Usage::

    paths = plot_run("results/colour")      # text heatmaps, denoiser chart, image strip (PNG + PDF)
    paths = plot_run("results/colour", uncertainty=True)   # and each heatmap's interval width

- Text encoder: ROME-style heatmaps, layers × tokens, one panel per kind (Purples: residual
  state, Greens: MLP, Reds: attention). Colour is the mean restored score, its floor is the
  corrupted score, attribute tokens are starred. One figure for the prompt whose corruption drop is largest (exact
  tokens) and one averaged over prompts by token role. Titles name the method and the restore
  mode; with ``uncertainty`` a companion (yellow to brown) shows each cell's 95% interval width.
- Denoiser (``<component>_effects``): mean indirect effect of every component in execution order, grouped by block, with
  whiskers at the 95% bootstrap interval over prompt × seed pairs.
- Diffusion transformers (``<component>_blocks``): a block × stream heatmap, rows the site kinds
  in stream order (pooled, attn_text, txt2img, attn_image, ff_context, ff, out_text, out_image;
  FLUX single blocks and PixArt attn1 / attn2 as their own rows), columns the block index, colour
  the ratio-of-means effect (0 = corrupted, 1 = clean; ROME colours: Reds attention, Greens
  feed-forward, Purples stream states). Its matrix is :func:`dit_block_matrix`. Where the joint
  attention's text->image slice was traced, ``<component>_txt2img`` charts its effect per block
  with the 95% bootstrap interval; ``attn-contrib`` rows get ``<component>_attn_contrib``, the mean
  raw contribution per block with a 95% bootstrap interval over pairs, exactly confirmed sites marked.
- Image strip: clean, corrupted and the best restored runs of the first prompts.

Every heatmap and effect-chart title states the run's clean/corrupted pairs and how many of them
are informative (:func:`pair_counts`: from ``causal_sites.json`` when it has them, else the table).
:func:`plot_run` draws effects and intervals over the informative pairs, as ``causal_sites.json``
computes them (over all pairs only when none informs).
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

import diffloc.plots_dit as plots_dit  # noqa: E402
from diffloc.tracing.causal import informative_rows, metric_names, site_effects  # noqa: E402
from diffloc.tracing.errors import DifflocInputError  # noqa: E402
from diffloc.tracing.io import read_meta, read_strip, read_trace  # noqa: E402
from diffloc.tracing.methods import method_of  # noqa: E402
from diffloc.tracing.rows import REFERENCE_KINDS, denoiser_components, is_text  # noqa: E402
from diffloc.tracing.sites import Site, SiteError  # noqa: E402
from diffloc.tracing.stats import SITE_KEYS, bootstrap_effects  # noqa: E402

from .plot_common import (  # noqa: E402, F401  (some re-exported: callers import them from here)
    CMAPS,
    RESTORE_AXIS,
    RESTORE_LABELS,
    SCREEN_KINDS,
    _save,
    _short,
    counts_text,
    pair_counts,
    protocol,
)
from .plots_dit import DIT_COLOURS, DIT_ROWS, POOLED_BLOCK, contrib_per_block, dit_block_matrix, dit_cell, is_dit  # noqa: E402, F401

TITLES = {"hidden": "residual state", "mlp": "MLP (fc2)", "attn": "self-attention (out_proj)"}
ROLES = ["bos", "before", "subject", "last_subject", "after", "eos"]
UNET_COLOURS = {"resnet": "#6a51a3", "attn1": "#cb181d", "attn2": "#fb6a4a", "ff": "#238b45"}


def _panels(pivots: dict, out: Path, suptitle: str, ylabel: str, cbar: str, vmin, vmax, cmaps: dict | None = None) -> list[Path]:
    """One heatmap panel per kind (hidden, mlp, attn): rows = tokens or roles, columns = layers."""
    n_rows = max(4, *(len(p) for p, _ in pivots.values()))
    kinds = list(pivots)  # the traced kinds, in the order hidden, mlp, attn
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 0.45 * n_rows + 1.2), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        piv, ylabels = pivots[kind]
        hm = sns.heatmap(piv, ax=ax, cmap=(cmaps or CMAPS)[kind], vmin=vmin, vmax=vmax(piv) if callable(vmax) else vmax,
                         cbar_kws={"label": cbar}, yticklabels=ylabels)
        hm.collections[0].colorbar.formatter.set_useOffset(False)
        hm.collections[0].colorbar.update_ticks()
        ax.set_title(f"restore {TITLES[kind]}")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
    fig.suptitle(suptitle, fontsize=10, y=1.0)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.18 * (suptitle.count("\n") + 1) + 0.05) / height))  # room for the suptitle lines
    fig.subplots_adjust(top=1 - (0.18 * (suptitle.count("\n") + 1) + 0.4) / height)  # tight_layout leaves a gap above the panels
    return _save(fig, out)


def _role_index(piv: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    piv = piv.reindex([r for r in ROLES if r in piv.index])
    return piv, [r + ("*" if "subject" in r else "") for r in piv.index]


def text_heatmap(table: pd.DataFrame, out: Path, metric: str = "clip", component: str = "text_encoder",
                 uncertainty: bool = False, bootstrap: tuple[int, int] = (1000, 0),
                 counts: tuple[int, int | None] | None = None) -> list[Path]:
    """Layers × tokens heatmaps for the prompt whose corruption drop is largest, and by token role over all prompts.

    ``uncertainty``: also a companion figure per heatmap (``*_width``) of the 95% bootstrap
    interval width of each cell's indirect effect (``bootstrap`` = (resamples, seed)).
    ``counts``: the run's (pairs, informative pairs) for the titles (:func:`pair_counts`; default: from the table).
    """
    rows = table[table.component == component]
    if rows.empty:
        return []
    method, restore = protocol(rows)
    how = f"{method} · {RESTORE_LABELS.get(restore, 'restore ' + restore)}"
    pairs = counts_text(counts or pair_counts(table))
    kinds = [k for k in ("hidden", "mlp", "attn") if (rows.kind == k).any()]  # --text-kind may trace fewer
    paths = []
    # the per-prompt figure shows the prompt whose corruption costs the most (a prompt whose
    # corrupted image still matches its caption has nothing to restore, and its heatmap is flat)
    drop = (rows[f"{metric}_clean"] - rows[f"{metric}_corrupted"]).groupby(rows.prompt_index).mean()
    first = rows[rows.prompt_index == (drop.idxmax() if drop.notna().any() else rows.prompt_index.min())]
    prompt = first.prompt.iloc[0] + " (largest corruption drop)" if rows.prompt_index.nunique() > 1 else first.prompt.iloc[0]
    tokens = first.drop_duplicates("token").sort_values("token")
    labels = [f"{t}*" if r in ("subject", "last_subject") else t for t, r in zip(tokens.token_str, tokens.token_role)]
    for mode, data, xcol, name in [("prompt", first, "token", f"{component}_heatmap"),
                                   ("roles", rows, "token_role", f"{component}_heatmap_roles")]:
        own = table[table.prompt_index == first.prompt_index.iloc[0]] if mode == "prompt" else table
        floor, clean = own[f"{metric}_corrupted"].mean(), own[f"{metric}_clean"].mean()  # this prompt's own range
        pivots = {}
        for kind in kinds:
            part = data[data.kind == kind]
            # average within each (prompt, seed) first, so prompts with more tokens of a role do not weigh more
            part = part.groupby(["prompt_index", "seed", xcol, "layer"], as_index=False)[f"{metric}_score"].mean()
            piv = part.pivot_table(index=xcol, columns="layer", values=f"{metric}_score", aggfunc="mean")
            pivots[kind] = _role_index(piv) if xcol == "token_role" else (piv, labels)
        title = prompt if mode == "prompt" else f"{rows.attribute.iloc[0]}: {rows.prompt_index.nunique()} prompts"
        ylabel = RESTORE_AXIS.get(restore, "token") if xcol == "token" else "token role (mean over prompts)"
        paths += _panels(pivots, out / name, f"{component} trace — {title}\n{how}; {pairs}\nfloor = corrupted {floor:.1f}, "
                         f"clean {clean:.1f}; * = attribute tokens", ylabel, f"{metric} score", floor,
                         lambda piv, clean=clean: max(clean, piv.values.max()))
        if uncertainty:
            keys = SITE_KEYS + (["token"] if xcol == "token" else [])
            boot = bootstrap_effects(data, metric, n=bootstrap[0], seed=bootstrap[1], keys=keys)
            boot["width"] = boot.upper - boot.lower
            widths = {}
            for kind in kinds:
                piv = boot[boot.kind == kind].pivot_table(index=xcol, columns="layer", values="width", aggfunc="mean")
                widths[kind] = _role_index(piv) if xcol == "token_role" else (piv.reindex(tokens.token), labels)
            n_pairs = len(data[["prompt_index", "seed"]].drop_duplicates())
            top = max(1e-6, float(np.nanmax(boot.width.to_numpy()))) if boot.width.notna().any() else 1.0
            paths += _panels(widths, out / f"{name}_width", f"{component} trace — {title}\n{how}; {pairs}\n95% interval width of the "
                             f"indirect effect over {n_pairs} prompt × seed pairs ({bootstrap[0]} resamples)", ylabel,
                             "interval width (effect units)", 0.0, top, cmaps={k: "YlOrBr" for k in CMAPS})
    return paths


def _chart_title(table: pd.DataFrame, component: str, ws: int, we: int) -> str:
    """The title a table's method gives its denoiser chart, else what was restored where."""
    for name in table.method.dropna().unique() if "method" in table.columns else ():
        method = method_of(name)
        title = method.denoiser_title(table) if method is not None else None
        if title:
            return title
    win = "all steps" if ws < 0 else f"steps [{ws}, {we})"
    return f"{component} components restored at {win}"


def denoiser_chart(table: pd.DataFrame, out: Path, metric: str = "clip", bootstrap: tuple[int, int] = (1000, 0),
                   counts: tuple[int, int | None] | None = None) -> list[Path]:
    """Indirect effect per denoiser component, execution order, grouped by block; error bars: 95% bootstrap interval.

    ``counts``: the run's (pairs, informative pairs) for the title (:func:`pair_counts`; default: from the table).
    """
    paths = []
    for comp in denoiser_components(table):
        paths += _denoiser_chart(table, comp, out, metric, bootstrap, counts or pair_counts(table))
    return paths


unet_chart = denoiser_chart  # the name figures of a UNet family were drawn by



def _bar_kind(site: str, kind: str) -> str:
    return "txt2img" if str(site).endswith(".attn.txt2img") else kind


def _block_label(block: str) -> str:
    """'block 3' / 'single 0' for DiT blocks; UNet blocks keep their name."""
    m = re.fullmatch(r"(single_)?transformer_blocks\.(\d+)", block)
    if not m:
        return "emb" if block == "time_text_embed" else block
    return f"{'single ' if m.group(1) else 'block '}{m.group(2)}"


def _site_block(site: str) -> str:
    try:
        return Site.parse(site).block
    except SiteError:
        return str(site).split(":", 1)[-1].split(".")[0]


def _denoiser_chart(table: pd.DataFrame, comp: str, out: Path, metric: str, bootstrap: tuple[int, int],
                    counts: tuple[int, int | None]) -> list[Path]:
    rows = table[(table.component == comp) & ~table.kind.isin(SCREEN_KINDS)]
    eff = bootstrap_effects(rows[~rows.kind.str.endswith("_head")], metric, n=bootstrap[0], seed=bootstrap[1])  # heads: head_heatmap
    if eff.empty:
        return []
    cells = [dit_cell(s) for s in eff.site]
    if all(c is not None for c in cells):  # a DiT: by block (a screen's confirmed sites come in rank order)
        eff = eff.iloc[np.argsort([c[1] + (10_000 if c[0].startswith("single_") else 0) for c in cells], kind="stable")]
    n_pairs = len(rows[["prompt_index", "seed"]].drop_duplicates())
    windows = eff[["window_start", "window_end"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(len(windows), 1, figsize=(max(10, 0.22 * eff.site.nunique() + 3), 4.8 * len(windows)), squeeze=False)
    colours = {**UNET_COLOURS, **DIT_COLOURS}
    shown: dict[str, str] = {}
    for ax, (ws, we) in zip(axes[:, 0], windows):
        e = eff[(eff.window_start == ws) & (eff.window_end == we)].reset_index(drop=True)
        names = [s.split(":", 1)[1] for s in e.site]
        kinds = [_bar_kind(s, k) for s, k in zip(e.site, e.kind)]
        shown.update({k: colours[k] for k in kinds if k in colours})
        err = np.nan_to_num(np.clip([e.effect - e.lower, e.upper - e.effect], 0, None))
        ax.bar(range(len(e)), e.effect, color=[colours.get(k, "grey") for k in kinds],
               yerr=err, error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"})
        blocks = [_site_block(s) for s in e.site]
        for i in range(1, len(blocks)):
            if blocks[i] != blocks[i - 1]:
                ax.axvline(i - 0.5, color="k", lw=0.5, ls=":")
        starts = [i for i in range(len(blocks)) if i == 0 or blocks[i] != blocks[i - 1]]
        for i in starts:
            if blocks[i] == "time_text_embed":  # one bar, its tick names it
                continue
            ax.text(i, 1.02, _block_label(blocks[i]), transform=ax.get_xaxis_transform(), fontsize=7, rotation=30, ha="left")
        ax.set_xlim(-0.7, len(e) - 0.3)  # no 5% margins: on hundreds of sites they are a blank stretch at each end
        ax.set_xticks(range(len(e)))
        ax.set_xticklabels([n.replace("single_transformer_blocks.", "stb").replace("transformer_blocks.", "tb")
                            .replace("attentions.", "at").replace("resnets.", "res") for n in names], rotation=90, fontsize=6)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"indirect effect ({metric})")
        ax.set_title(_chart_title(rows, comp, ws, we), fontsize=9, pad=34, loc="left")
    shown = shown or dict(UNET_COLOURS)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in shown.values()]
    axes[0, 0].legend(handles, list(shown), fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    method, _ = protocol(rows)
    fig.suptitle(f"{table.attribute.iloc[0]}: {comp} trace, {method} ({rows.prompt_index.nunique()} prompts × {rows.seed.nunique()} seeds; "
                 f"{counts_text(counts)})\nbars: ratio-of-means effect, whiskers: 95% bootstrap interval over {n_pairs} prompt × seed pairs",
                 fontsize=10, y=1.0)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.42 / fig.get_figheight()))
    fig.subplots_adjust(top=1 - 1.25 / fig.get_figheight())  # the suptitle, the panel title and the block labels above it
    return _save(fig, out / f"{comp}_effects")



def image_strip(run_dir: Path, table: pd.DataFrame, out: Path, max_units: int = 4, metric: str = "clip") -> list[Path]:
    """Clean, corrupted and best restored images for the first few units."""
    units = set(table.unit)  # a shard folder may hold units the table left out (e.g. seeds a resume dropped)
    shards = [p for p in sorted((run_dir / "shards").glob("*.npz")) if p.stem in units][:max_units]
    if not shards:
        return []
    fig, axes = plt.subplots(len(shards), 5, figsize=(10, 2.3 * len(shards)), squeeze=False)
    for r, path in enumerate(shards):
        images, rows = read_strip(path)
        unit = path.stem
        sub = table[table.unit == unit].set_index("row")
        for c in range(5):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(rows):
                continue
            row = int(rows[c])
            ax.imshow(np.transpose(images[c], (1, 2, 0)), interpolation="nearest")
            info = sub.loc[row]
            name = info.kind if info.kind in REFERENCE_KINDS else _short(info.site)
            tok = f" @{info.token_str}" if info.token >= 0 else ""
            ax.set_title(f"{name}{tok}\n{metric} {info[f'{metric}_score']:.1f}", fontsize=6, wrap=True)
        axes[r, 0].text(-0.1, 0.5, unit, transform=axes[r, 0].transAxes, rotation=90, fontsize=6, va="center", ha="right")
    fig.suptitle("clean | corrupted | best restored", fontsize=9)
    return _save(fig, out / "image_strip")


def plot_run(run_dir: str | Path, metric: str = "clip", uncertainty: bool = False) -> list[Path]:
    """Redraw every figure of a run from its table; returns the files written.

    DiT denoisers also get the block × stream heatmap, the text->image slice chart and (``attn-contrib``)
    the contribution chart. Titles carry the run's pair counts (:func:`pair_counts`).

    ``uncertainty``: also draw each text heatmap's 95% interval width (``*_width``). Intervals
    use the run's ``--bootstrap`` resamples and seed from ``meta.json`` (default 1000, seed 0).
    """
    run_dir = Path(run_dir)
    path = run_dir / "trace.parquet"
    if not path.exists():
        raise DifflocInputError(f"no trace.parquet in {run_dir}; run `diffloc trace --out {run_dir}` first")
    table = read_trace(path)
    cfg = read_meta(run_dir / "meta.json").get("config", {}) if (run_dir / "meta.json").exists() else {}
    boot = (int(cfg.get("bootstrap", 1000)), int(cfg.get("bootstrap_seed", 0)))
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    counts = pair_counts(table, run_dir)
    # effects and intervals over the informative pairs, as causal_sites.json (all pairs when none informs)
    used = informative_rows(table, metric_names(table)[0], float(cfg.get("min_drop", 5.0)))
    rows = used if len(used) else table
    paths = []
    for comp in sorted(c for c in table.component.unique() if is_text(c)):
        paths += text_heatmap(rows, out, metric, comp, uncertainty=uncertainty, bootstrap=boot, counts=counts)
    paths += block_heatmap(rows, out, metric, counts=counts)
    paths += txt2img_chart(rows, out, metric, bootstrap=boot, counts=counts)
    paths += contrib_chart(rows, out, bootstrap=boot, counts=counts, metric=metric)
    paths += denoiser_chart(rows, out, metric, bootstrap=boot, counts=counts)
    paths += head_heatmap(rows, out, metric, counts=counts)
    paths += image_strip(run_dir, table, out, metric=metric)
    return paths


def head_heatmap(table: pd.DataFrame, out: Path, metric: str = "clip", counts: tuple[int, int | None] | None = None) -> list[Path]:
    """Per-head effects (``--heads``): attention module × head; text heads at their strongest token role."""
    heads = table[table.kind.str.endswith("_head")]
    if heads.empty:
        return []
    eff = site_effects(heads, metric)
    eff["module"] = [Site.parse(s).attn_path for s in eff.site]
    eff["head"] = [Site.parse(s).head for s in eff.site]
    eff = eff.groupby(["component", "module", "head"], as_index=False).effect.max()  # text: max over token roles
    comps = list(dict.fromkeys(eff.component))
    fig, axes = plt.subplots(1, len(comps), figsize=(6 * len(comps), 0.35 * eff.module.nunique() + 2), squeeze=False)
    for ax, comp in zip(axes[0], comps):
        piv = eff[eff.component == comp].pivot_table(index="module", columns="head", values="effect", sort=False)
        sns.heatmap(piv, ax=ax, cmap="Reds", vmin=0, vmax=max(1.0, float(np.nanmax(piv.values))), cbar_kws={"label": f"indirect effect ({metric})"})
        ax.set_yticklabels([_short(f"{comp}:{m}") for m in piv.index], fontsize=6, rotation=0)
        ax.set_title(f"{comp} heads" + (" (strongest token role)" if is_text(comp) else ""), fontsize=9)
    fig.suptitle(f"{table.attribute.iloc[0]}: one attention head restored at a time; {counts_text(counts or pair_counts(table))}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "head_effects")


# ---------------------------------------------------------------- diffusion transformers (diffloc.plots_dit)
def block_heatmap(table: pd.DataFrame, out: Path, metric: str = "clip", counts: tuple[int, int | None] | None = None) -> list[Path]:
    """:func:`diffloc.plots_dit.block_heatmap`, saved through this module's ``_save``."""
    return plots_dit.block_heatmap(table, out, metric, counts, save=_save)


def txt2img_chart(table: pd.DataFrame, out: Path, metric: str = "clip", bootstrap: tuple[int, int] = (1000, 0),
                  counts: tuple[int, int | None] | None = None) -> list[Path]:
    """:func:`diffloc.plots_dit.txt2img_chart`, saved through this module's ``_save``."""
    return plots_dit.txt2img_chart(table, out, metric, bootstrap, counts, save=_save)


def contrib_chart(table: pd.DataFrame, out: Path, bootstrap: tuple[int, int] = (1000, 0),
                  counts: tuple[int, int | None] | None = None, metric: str = "clip") -> list[Path]:
    """:func:`diffloc.plots_dit.contrib_chart`, saved through this module's ``_save``."""
    return plots_dit.contrib_chart(table, out, bootstrap, counts, metric, save=_save)

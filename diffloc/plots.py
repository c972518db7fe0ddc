"""Figures of a trace, drawn from ``trace.parquet`` alone.

Usage::

    paths = plot_run("results/colour")      # text heatmaps, UNet chart, image strip (PNG + PDF)

- Text encoder: ROME-style heatmaps, layers × tokens, one panel per kind (Purples: residual
  state, Greens: MLP, Reds: attention). Colour is the mean restored score, its floor is the
  corrupted score, attribute tokens are starred. One figure for the first prompt (exact
  tokens) and one averaged over prompts by token role.
- UNet: mean indirect effect of every component in execution order, grouped by block.
- Image strip: clean, corrupted and the best restored runs of the first prompts.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from tracing.causal import site_effects  # noqa: E402
from tracing.errors import DifflocInputError  # noqa: E402
from tracing.io import read_strip, read_trace  # noqa: E402

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
TITLES = {"hidden": "residual state", "mlp": "MLP (fc2)", "attn": "self-attention (out_proj)"}
ROLES = ["bos", "before", "subject", "last_subject", "after", "eos"]
UNET_COLOURS = {"resnet": "#6a51a3", "attn1": "#cb181d", "attn2": "#fb6a4a", "ff": "#238b45"}


def _save(fig, path: Path) -> list[Path]:
    fig.savefig(path.with_suffix(".png"), dpi=130, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return [path.with_suffix(".png"), path.with_suffix(".pdf")]


def text_heatmap(table: pd.DataFrame, out: Path, metric: str = "clip", component: str = "text_encoder") -> list[Path]:
    """Layers × tokens heatmaps for the first prompt, and by token role over all prompts."""
    rows = table[table.component == component]
    if rows.empty:
        return []
    floor = table[f"{metric}_corrupted"].mean()
    clean = table[f"{metric}_clean"].mean()
    paths = []
    first = rows[rows.prompt_index == rows.prompt_index.min()]
    prompt = first.prompt.iloc[0]
    tokens = first.drop_duplicates("token").sort_values("token")
    labels = [f"{t}*" if r in ("subject", "last_subject") else t for t, r in zip(tokens.token_str, tokens.token_role)]
    for mode, data, xcol, xlabels, name in [
        ("prompt", first, "token", labels, f"{component}_heatmap"),
        ("roles", rows, "token_role", [r + ("*" if "subject" in r else "") for r in ROLES], f"{component}_heatmap_roles"),
    ]:
        own = table[table.prompt_index == first.prompt_index.iloc[0]] if mode == "prompt" else table
        floor, clean = own[f"{metric}_corrupted"].mean(), own[f"{metric}_clean"].mean()  # this prompt's own range
        fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * max(4, len(xlabels)) + 1.2), sharey=True)
        for ax, kind in zip(axes, ["hidden", "mlp", "attn"]):
            part = data[data.kind == kind]
            # average within each (prompt, seed) first, so prompts with more tokens of a role do not weigh more
            part = part.groupby(["prompt_index", "seed", xcol, "layer"], as_index=False)[f"{metric}_score"].mean()
            piv = part.pivot_table(index=xcol, columns="layer", values=f"{metric}_score", aggfunc="mean")
            if xcol == "token_role":
                piv = piv.reindex([r for r in ROLES if r in piv.index])
                ylabels = [r + ("*" if "subject" in r else "") for r in piv.index]
            else:
                ylabels = xlabels
            hm = sns.heatmap(piv, ax=ax, cmap=CMAPS[kind], vmin=floor, vmax=max(clean, piv.values.max()),
                             cbar_kws={"label": f"{metric} score"}, yticklabels=ylabels)
            hm.collections[0].colorbar.formatter.set_useOffset(False)
            hm.collections[0].colorbar.update_ticks()
            ax.set_title(f"restore {TITLES[kind]}")
            ax.set_xlabel("layer")
            ax.set_ylabel("token" if xcol == "token" else "token role (mean over prompts)")
        title = prompt if mode == "prompt" else f"{rows.attribute.iloc[0]}: {rows.prompt_index.nunique()} prompts"
        fig.suptitle(f"{component} trace — {title}\nfloor = corrupted {floor:.1f}, clean {clean:.1f}; * = attribute tokens", fontsize=10, y=1.0)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        paths += _save(fig, out / name)
    return paths


def unet_chart(table: pd.DataFrame, out: Path, metric: str = "clip") -> list[Path]:
    """Indirect effect per UNet component, execution order, grouped by block."""
    eff = site_effects(table[(table.component == "unet") | table.kind.isin(["clean", "corrupted"])], metric)
    eff = eff[eff.component == "unet"]
    if eff.empty:
        return []
    windows = eff[["window_start", "window_end"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(len(windows), 1, figsize=(max(10, 0.22 * eff.site.nunique() + 3), 4.8 * len(windows)), squeeze=False)
    for ax, (ws, we) in zip(axes[:, 0], windows):
        e = eff[(eff.window_start == ws) & (eff.window_end == we)].reset_index(drop=True)
        names = [s.split(":", 1)[1] for s in e.site]
        ax.bar(range(len(e)), e.effect, color=[UNET_COLOURS.get(k, "grey") for k in e.kind])
        blocks = [n.split(".attentions")[0].split(".resnets")[0] for n in names]
        for i in range(1, len(blocks)):
            if blocks[i] != blocks[i - 1]:
                ax.axvline(i - 0.5, color="k", lw=0.5, ls=":")
        starts = [i for i in range(len(blocks)) if i == 0 or blocks[i] != blocks[i - 1]]
        for i in starts:
            ax.text(i, 1.02, blocks[i], transform=ax.get_xaxis_transform(), fontsize=7, rotation=30, ha="left")
        ax.set_xticks(range(len(e)))
        ax.set_xticklabels([n.replace("transformer_blocks.", "tb").replace("attentions.", "at").replace("resnets.", "res") for n in names], rotation=90, fontsize=6)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"indirect effect ({metric})")
        win = "all steps" if ws < 0 else f"steps [{ws}, {we})"
        ax.set_title(f"UNet components restored at {win}", fontsize=9, pad=34, loc="left")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in UNET_COLOURS.values()]
    axes[0, 0].legend(handles, list(UNET_COLOURS), fontsize=7, loc="upper right")
    fig.suptitle(f"{table.attribute.iloc[0]}: UNet trace ({table.prompt_index.nunique()} prompts × {table.seed.nunique()} seeds)", fontsize=10, y=1.0)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, out / "unet_effects")


def _short(site: str) -> str:
    """Compact label for a site: 'L0 attn' for text layers, 'up1.at0.attn2' for UNet blocks."""
    comp, path = site.split(":", 1)
    path = path.replace("text_model.", "")
    if path.startswith("encoder.layers."):
        parts = path.split(".")
        kind = {"self_attn": "attn", "mlp": "mlp"}.get(parts[3], "") if len(parts) > 3 else "hidden"
        return f"L{parts[2]} {kind}"
    for a, b in (("down_blocks.", "down"), ("up_blocks.", "up"), ("mid_block", "mid"), ("attentions.", "at"),
                 ("resnets.", "res"), ("transformer_blocks.", "tb")):
        path = path.replace(a, b)
    return path


def image_strip(run_dir: Path, table: pd.DataFrame, out: Path, max_units: int = 4) -> list[Path]:
    """Clean, corrupted and best restored images for the first few units."""
    shards = sorted((run_dir / "shards").glob("*.npz"))[:max_units]
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
            name = info.kind if info.kind in ("clean", "corrupted") else _short(info.site)
            tok = f" @{info.token_str}" if info.token >= 0 else ""
            ax.set_title(f"{name}{tok}\nclip {info['clip_score']:.1f}", fontsize=6, wrap=True)
        axes[r, 0].text(-0.1, 0.5, unit, transform=axes[r, 0].transAxes, rotation=90, fontsize=6, va="center", ha="right")
    fig.suptitle("clean | corrupted | best restored", fontsize=9)
    return _save(fig, out / "image_strip")


def plot_run(run_dir: str | Path, metric: str = "clip") -> list[Path]:
    """Redraw every figure of a run from its table; returns the files written."""
    run_dir = Path(run_dir)
    path = run_dir / "trace.parquet"
    if not path.exists():
        raise DifflocInputError(f"no trace.parquet in {run_dir}; run `diffloc trace --out {run_dir}` first")
    table = read_trace(path)
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    paths = []
    for comp in sorted(c for c in table.component.unique() if c.startswith("text_encoder")):
        paths += text_heatmap(table, out, metric, comp)
    paths += unet_chart(table, out, metric)
    paths += image_strip(run_dir, table, out)
    return paths

"""Pieces every trace figure shares: pair counts for titles, the restore protocol, saving a figure.

Usage::

    from diffloc.plot_common import counts_text, pair_counts, protocol

    counts_text(pair_counts(table, run_dir))   # '2 clean/corrupted pairs, 1 informative'
    method, restore = protocol(table)          # ('exact', 'token')

:mod:`diffloc.plots` (text heatmaps, denoiser charts, ``plot_run``) and :mod:`diffloc.plots_dit`
(diffusion-transformer charts) draw on these; ``diffloc.plots`` re-exports the public ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from diffloc.tracing.io import read_meta  # noqa: E402
from diffloc.tracing.trace_config import DEFAULT_METHOD  # noqa: E402

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def pair_counts(table: pd.DataFrame, run_dir: str | Path | None = None, min_drop: float | None = None) -> tuple[int, int | None]:
    """(clean/corrupted pairs, informative pairs) of a run: from ``run_dir/causal_sites.json`` when it
    carries both counts, else from the table (:func:`diffloc.tracing.causal.pair_signal`, its scorer the
    table's first metric, ``min_drop`` from ``meta.json`` or 5). Informative: None when it cannot be told."""
    cfg: dict = {}
    if run_dir is not None:
        run_dir = Path(run_dir)
        try:
            data = json.loads((run_dir / "causal_sites.json").read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data.get("n_pairs"), int) and isinstance(data.get("n_informative"), int):
            return int(data["n_pairs"]), int(data["n_informative"])
        if (run_dir / "meta.json").exists():
            cfg = read_meta(run_dir / "meta.json").get("config", {})
    if min_drop is None:
        min_drop = float(cfg.get("min_drop", 5.0))
    return _table_counts(table, min_drop)


def _table_counts(table: pd.DataFrame, min_drop: float = 5.0) -> tuple[int, int | None]:
    from diffloc.tracing.causal import metric_names

    try:
        from diffloc.tracing.causal import pair_signal
    except ImportError:  # a causal module from before informative pairs
        pair_signal = None
    keys = [k for k in ("prompt_index", "seed", "noise_index") if k in table.columns]
    scorer = (metric_names(table) or [None])[0]
    if pair_signal is not None and scorer and f"{scorer}_clean" in table.columns and len(keys) == 3 and len(table):
        src = table if (table.kind == "clean").any() else table.assign(kind="clean")  # a table without its reference rows
        pairs = pair_signal(src, scorer, min_drop)
        return int(len(pairs)), int(pairs.informative.sum())
    return int(len(table[keys].drop_duplicates())) if keys else 0, None


def counts_text(counts: tuple[int, int | None]) -> str:
    """'2 clean/corrupted pairs, 1 informative' (the phrase every figure title carries)."""
    n, k = counts
    return f"{n} clean/corrupted pair{'' if n == 1 else 's'}, {'?' if k is None else k} informative"


def _save(fig, path: Path) -> list[Path]:
    fig.savefig(path.with_suffix(".png"), dpi=130, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return [path.with_suffix(".png"), path.with_suffix(".pdf")]


RESTORE_LABELS = {"token": "restore one token (the paper's protocol)", "suffix": "restore the token and every later position",
                  "span": "restore the attribute tokens through the token"}
RESTORE_AXIS = {"token": "token", "suffix": "first restored token (it and all later ones)", "span": "last token of the restored span"}


def protocol(table: pd.DataFrame) -> tuple[str, str]:
    """(method, restore mode) of a table; tables from before restore modes restored one token."""
    method = " + ".join(sorted(table.method.dropna().unique())) if "method" in table.columns else DEFAULT_METHOD
    restore = " + ".join(sorted(table.restore.dropna().unique())) if "restore" in table.columns and table.restore.notna().any() else "token"
    return method or DEFAULT_METHOD, restore


SCREEN_KINDS = ("attn_contrib",)  # rows that rank sites without restoring them: drawn by their own chart


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

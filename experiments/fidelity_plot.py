"""One figure style for exact-reader fidelity curves with Wilson intervals (training curves, the denoise probe).

Usage::

    from experiments.fidelity_plot import draw_curves
    draw_curves([("r2: lr 5e-4", [3500, 4000], [fid_a, fid_b])], ("object", "count"), "out.png",
                xlabel="training steps", title="{attr} fidelity (n = 100, Wilson 95 %)")

Each ``fid`` maps an attribute to ``{"rate": r, "ci": [lo, hi]}``; one panel per attribute, the 0.95 target dashed;
``legend_loc="below"`` puts one legend under the panels.
"""
from __future__ import annotations

from pathlib import Path


def draw_curves(series: list[tuple[str, list[float], list[dict]]], attrs, path: Path, xlabel: str, title: str,
                legend_loc: str = "lower right") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(attrs), figsize=(13, 3.8), sharey=True)
    for ax, attr in zip(axes, attrs):
        for label, xs, fids in series:
            y = [f[attr]["rate"] for f in fids]
            err = [[v - f[attr]["ci"][0] for v, f in zip(y, fids)], [f[attr]["ci"][1] - v for v, f in zip(y, fids)]]
            ax.errorbar(xs, y, yerr=err, marker="o", capsize=3, label=label)
        ax.axhline(0.95, color="grey", ls="--", lw=1)
        ax.set_title(title.format(attr=attr), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("exact-reader fidelity")
    if legend_loc == "below":                                    # many series: one legend under the panels
        rows = -(-len(series) // 3)
        fig.set_size_inches(13, 3.8 + 0.25 * rows)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7)
        fig.tight_layout(rect=(0, 0.06 * rows, 1, 1))
    else:
        axes[0].legend(fontsize=7, loc=legend_loc)
        fig.tight_layout()
    fig.savefig(path, dpi=115)
    plt.close(fig)

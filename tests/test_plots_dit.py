"""DiT figures: the block × stream matrix equals hand-computed effects, and every title carries the pair counts."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import diffloc.plots as plots
from diffloc.plots import (
    POOLED_BLOCK,
    block_heatmap,
    contrib_chart,
    contrib_per_block,
    counts_text,
    denoiser_chart,
    dit_block_matrix,
    dit_cell,
    pair_counts,
    plot_run,
    txt2img_chart,
)

COMP = "transformer"
# two clean/corrupted pairs: (prompt 0, seed 0) drops 10 points (informative), (prompt 1, seed 0) drops 1 (not)
PAIRS = {(0, 0): (30.0, 20.0), (1, 0): (25.0, 24.0)}
BLOCK_KINDS = {"attn.to_add_out": "attn_text", "attn.txt2img": "txt2img", "attn.to_out.0": "attn_image", "ff": "ff",
               "ff_context": "ff_context", "@text": "out_text", "@image": "out_image"}
SITE_KIND = {"txt2img": "other"}  # the kind the site table gives a txt2img slice


def _path(block: int, tail: str) -> str:
    return f"transformer_blocks.{block}{tail}" if tail.startswith("@") else f"transformer_blocks.{block}.{tail}"


def _score(pair: int, row: str, block: int) -> float:
    """A distinct restored score per (pair, row kind, block)."""
    return 20.0 + 3.0 * pair + 1.7 * block + 0.9 * list(plots.DIT_ROWS).index(row) + 0.3 * pair * block


def _base(pi: int, seed: int, method: str = "exact") -> dict:
    clean, corrupted = PAIRS[(pi, seed)]
    return dict(prompt_index=pi, prompt=f"p{pi}", attribute="colour", seed=seed, noise_index=0, unit=f"u{pi}", method=method,
                restore="token", layer=-1, token=-1, token_str="", token_role="", window_start=-1, window_end=-1,
                skipped_noop=False, skipped_duplicate=False, clip_clean=clean, clip_corrupted=corrupted)


def _row(base: dict, kind: str, site: str, score: float, component: str = COMP, **extra) -> dict:
    return dict(base, component=component, kind=kind, site=site, clip_score=score, **extra)


def synthetic_table(blocks: int = 2, contrib: bool = True) -> pd.DataFrame:
    """Clean, corrupted and one exact row per DiT site of ``blocks`` joint blocks (block 1 has no txt2img),
    plus a head row, and attn-contrib rows for every txt2img slice."""
    recs = []
    for pi, (pair_key, (clean, corrupted)) in enumerate(PAIRS.items()):
        base = _base(*pair_key)
        recs += [_row(base, "clean", "", clean, component="clean"), _row(base, "corrupted", "", corrupted, component="corrupted")]
        recs.append(_row(base, "pooled", f"{COMP}:time_text_embed", _score(pi, "pooled", POOLED_BLOCK)))
        for b in range(blocks):
            for tail, row in BLOCK_KINDS.items():
                if row == "txt2img" and b == 1:
                    continue  # not traced: a NaN cell
                recs.append(_row(base, SITE_KIND.get(row, row), f"{COMP}:{_path(b, tail)}", _score(pi, row, b)))
        recs.append(_row(base, "joint_head", f"{COMP}:transformer_blocks.0.attn.heads.1", 99.0))  # head_heatmap's, not ours
        if contrib:
            cb = _base(*pair_key, method="attn-contrib")
            for b in range(blocks):
                recs.append(_row(cb, "attn_contrib", f"{COMP}:transformer_blocks.{b}.attn.txt2img", np.nan,
                                 attn_contrib=0.01 * (b + 1) + 0.005 * pi))
    table = pd.DataFrame(recs)
    table["effect_clip"] = (table.clip_score - table.clip_corrupted) / (table.clip_clean - table.clip_corrupted)
    return table


def hand_effect(row: str, block: int) -> float:
    """Ratio of means over both pairs: (mean restored − mean corrupted) / (mean clean − mean corrupted)."""
    restored = np.mean([_score(pi, row, block) for pi in range(len(PAIRS))])
    clean = np.mean([c for c, _ in PAIRS.values()])
    corrupted = np.mean([k for _, k in PAIRS.values()])
    return (restored - corrupted) / (clean - corrupted)


def test_block_matrix_is_the_hand_computed_effect_per_kind_and_block():
    mat = dit_block_matrix(synthetic_table(), "clip", COMP, method="exact")
    assert list(mat.index) == ["pooled", "attn_text", "txt2img", "attn_image", "ff_context", "ff", "out_text", "out_image"]
    assert list(mat.columns) == [POOLED_BLOCK, 0, 1]
    want = pd.DataFrame(np.nan, index=mat.index, columns=mat.columns)
    want.loc["pooled", POOLED_BLOCK] = hand_effect("pooled", POOLED_BLOCK)
    for b in (0, 1):
        for row in BLOCK_KINDS.values():
            if not (row == "txt2img" and b == 1):
                want.loc[row, b] = hand_effect(row, b)
    np.testing.assert_allclose(mat.to_numpy(), want.to_numpy(), rtol=1e-12)
    assert np.isnan(mat.loc["txt2img", 1]) and np.isnan(mat.loc["ff", POOLED_BLOCK])
    # no method given: the attn-contrib rows (rankings, not restored runs) never enter the matrix
    np.testing.assert_allclose(dit_block_matrix(synthetic_table(), "clip", COMP).to_numpy(), want.to_numpy(), rtol=1e-12)


def test_dit_cells_of_every_family():
    assert dit_cell("transformer:transformer_blocks.3.attn.txt2img") == ("txt2img", 3)
    assert dit_cell("transformer:transformer_blocks.3@image") == ("out_image", 3)
    assert dit_cell("transformer:single_transformer_blocks.0.attn") == ("single_attn", 0)
    assert dit_cell("transformer:single_transformer_blocks.12@text") == ("single_out_text", 12)
    assert dit_cell("transformer:transformer_blocks.2.attn2") == ("attn2", 2)  # PixArt
    assert dit_cell("transformer:time_text_embed") == ("pooled", POOLED_BLOCK)
    for other in ("transformer:transformer_blocks.0.attn.heads.1", "unet:down_blocks.1.attentions.0.transformer_blocks.0.attn2",
                  "unet:mid_block.resnets.0", "text_encoder:encoder.layers.0.mlp.fc2"):
        assert dit_cell(other) is None, other


def test_flux_single_blocks_are_their_own_rows():
    base = _base(0, 0)
    clean, corrupted = PAIRS[(0, 0)]
    recs = [_row(base, "clean", "", clean, component="clean"), _row(base, "corrupted", "", corrupted, component="corrupted"),
            _row(base, "out_image", f"{COMP}:transformer_blocks.0@image", 25.0),
            _row(base, "attn_single", f"{COMP}:single_transformer_blocks.0.attn", 22.0),
            _row(base, "out_image", f"{COMP}:single_transformer_blocks.1@image", 28.0)]
    mat = dit_block_matrix(pd.DataFrame(recs), "clip", COMP)
    assert list(mat.index) == ["out_image", "single_attn", "single_out_image"]
    assert mat.loc["out_image", 0] == pytest.approx(0.5) and mat.loc["single_attn", 0] == pytest.approx(0.2)
    assert mat.loc["single_out_image", 1] == pytest.approx(0.8) and np.isnan(mat.loc["out_image", 1])


@pytest.fixture()
def captured(monkeypatch):
    """Figures the plot functions would save, by file stem, kept open."""
    import matplotlib.pyplot as plt

    figs = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(path.name, fig) and [])
    yield figs
    plt.close("all")


def _titles(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center")]
    return "\n".join(parts)


def test_titles_carry_pair_counts(tmp_path, captured):
    table = synthetic_table()
    assert pair_counts(table) == (2, 1)  # min_drop 5: the 10-point drop counts, the 1-point one does not
    want = counts_text((2, 1))
    assert want == "2 clean/corrupted pairs, 1 informative"
    block_heatmap(table, tmp_path)
    txt2img_chart(table, tmp_path, bootstrap=(50, 0))
    contrib_chart(table, tmp_path, bootstrap=(50, 0))
    denoiser_chart(table, tmp_path, bootstrap=(50, 0))
    assert set(captured) == {"transformer_blocks", "transformer_txt2img", "transformer_attn_contrib", "transformer_effects"}
    for name, fig in captured.items():
        assert want in _titles(fig), name
    # the heatmap shows the matrix: one annotation per traced cell, its value
    mat = dit_block_matrix(table, "clip", COMP, "exact")
    shown = sorted(float(t.get_text()) for t in captured["transformer_blocks"].axes[0].texts)
    np.testing.assert_allclose(shown, sorted(np.round(mat.stack().dropna().to_numpy(), 2)), atol=1e-9)


def test_txt2img_bars_are_the_bootstrap_effects(tmp_path, captured):
    from matplotlib.container import BarContainer

    from diffloc.tracing.stats import bootstrap_effects

    table = synthetic_table(blocks=3)
    txt2img_chart(table, tmp_path, bootstrap=(200, 0))
    ax = captured["transformer_txt2img"].axes[0]
    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    sel = table[(table.method == "exact") & table.site.str.endswith(".attn.txt2img")]
    ref = bootstrap_effects(sel, "clip", n=200, seed=0)
    np.testing.assert_allclose([b.get_height() for b in bars], ref.effect)  # blocks 0 and 2 (block 1 untraced)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2"]
    np.testing.assert_allclose(ref.effect, [hand_effect("txt2img", 0), hand_effect("txt2img", 2)])


def test_contribution_per_block_and_confirmed_sites():
    c = contrib_per_block(synthetic_table(blocks=3), COMP, bootstrap=(200, 0))
    assert list(c.block) == [0, 1, 2]
    np.testing.assert_allclose(c["mean"], [0.01 * (b + 1) + 0.0025 for b in range(3)])
    assert (c.lower <= c["mean"]).all() and (c["mean"] <= c.upper).all() and (c.upper > c.lower).all()
    assert list(c.confirmed) == [True, False, True]  # exact rows restore blocks 0 and 2's slices
    np.testing.assert_allclose(c.exact_effect[c.confirmed], [hand_effect("txt2img", 0), hand_effect("txt2img", 2)])


def test_plot_run_reads_counts_from_causal_sites_and_report_shows_them(tmp_path, captured):
    from diffloc.report import write_report
    from diffloc.tracing.io import write_json_format, write_trace

    run = tmp_path / "dit_run"
    run.mkdir()
    table = synthetic_table()
    write_trace(table, run / "trace.parquet")
    assert pair_counts(table, run) == (2, 1)  # no causal_sites.json: from the table
    write_json_format("causal_sites", {"threshold": 0.5, "metrics": ["clip"], "n_pairs": 7, "n_informative": 3,
                                       "clip": {"causal": [], "n_sites_scored": 0}}, run / "causal_sites.json")
    assert pair_counts(table, run) == (7, 3)
    plot_run(run)
    for name in ("transformer_blocks", "transformer_txt2img", "transformer_attn_contrib", "transformer_effects"):
        assert "7 clean/corrupted pairs, 3 informative" in _titles(captured[name]), name
    # the report: counts beside the run, the DiT figures in figure order with their captions
    figs = run / "figures"
    for stem in ("transformer_effects", "transformer_attn_contrib", "transformer_blocks", "transformer_txt2img"):
        captured[stem].savefig(figs / f"{stem}.png", dpi=40)
    page = write_report([run], tmp_path / "report.html").read_text()
    assert page.count("7 clean/corrupted pairs, 3 informative") >= 3  # contents, heading, section
    order = [page.index(f"<code>{s}.png</code>") for s in ("transformer_blocks", "transformer_txt2img", "transformer_attn_contrib",
                                                            "transformer_effects")]
    assert order == sorted(order)
    assert "block × stream" in page and "text → image slice" in page
    assert json.loads((run / "causal_sites.json").read_text())["n_informative"] == 3


def test_pixart_rows_in_block_order():
    base = _base(0, 0)
    clean, corrupted = PAIRS[(0, 0)]
    recs = [_row(base, "clean", "", clean, component="clean"), _row(base, "corrupted", "", corrupted, component="corrupted")]
    recs += [_row(base, k, f"{COMP}:transformer_blocks.{b}.{k}", 21.0 + b + i) for b in range(2) for i, k in enumerate(("attn1", "attn2", "ff"))]
    mat = dit_block_matrix(pd.DataFrame(recs), "clip", COMP)
    assert list(mat.index) == ["attn1", "attn2", "ff"] and list(mat.columns) == [0, 1]
    np.testing.assert_allclose(mat.to_numpy(), [[0.1, 0.2], [0.2, 0.3], [0.3, 0.4]])


def test_plot_run_draws_effects_over_the_informative_pairs_only(tmp_path, captured):
    """The txt2img bars of plot_run are the effects of pair (0, 0) alone: pair (1, 0) drops 1 point (< min_drop 5)."""
    from matplotlib.container import BarContainer

    from diffloc.tracing.io import write_trace

    run = tmp_path / "run"
    run.mkdir()
    table = synthetic_table(blocks=3)
    write_trace(table, run / "trace.parquet")
    plot_run(run)
    ax = captured["transformer_txt2img"].axes[0]
    bars = [b.get_height() for b in next(c for c in ax.containers if isinstance(c, BarContainer))]
    clean, corrupted = PAIRS[(0, 0)]
    one_pair = [(_score(0, "txt2img", b) - corrupted) / (clean - corrupted) for b in (0, 2)]
    np.testing.assert_allclose(bars, one_pair)
    assert not np.allclose(bars, [hand_effect("txt2img", 0), hand_effect("txt2img", 2)]), "vacuous: both pairs agree"
    assert "over 1 prompt × seed pairs" in _titles(captured["transformer_txt2img"])

"""HTML report: self-contained, shows every figure, and renders in headless Chromium."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffloc.plots import plot_run
from diffloc.report import write_report
from diffloc.tracing.causal import write_causal_sites
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig

PROMPTS = ("a photo of two [red] circles at the top on a plain background",)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def fake_eval_dir(folder: Path) -> Path:
    """An edit/evaluation folder shaped like ``diffloc edit`` + ``diffloc evaluate`` output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True)
    (folder / "edit.json").write_text(json.dumps({"base_model": "toy", "arch": "toy", "saved": "2026-11-25T00:00:00Z", "edits": [
        {"method": "quickfix", "site": "text_encoder:text_model.encoder.layers.0.self_attn.out_proj", "hash_before": "ab12",
         "hash_after": "cd34", "info": {"source": "red", "target": "blue"}, "file": "edits/000.safetensors"}]}))
    (folder / "summary.json").write_text(json.dumps({"model": "results/edited", "n_cases": 2, "seeds": 3, "scorer": "toy",
        "methods": {"unedited": {"efficacy": 0.1, "generalization": 0.2, "specificity": 0.95, "n_images": 30},
                    "edited": {"efficacy": 0.9, "generalization": 0.8, "specificity": 0.9, "n_images": 30}}}))
    rng = np.random.default_rng(0)
    pd.DataFrame({"method": ["unedited", "edited"] * 6, "split": ["efficacy", "generalization", "specificity"] * 4,
                  "clip_success": rng.random(12) > 0.5, "clip_score": rng.random(12) * 30}).to_parquet(folder / "eval.parquet")
    fig, axes = plt.subplots(2, 3, figsize=(5, 3.5))
    for ax in axes.flat:
        ax.imshow(rng.random((8, 8, 3)), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("before / after")
    fig.savefig(folder / "grid.png", dpi=80)
    plt.close(fig)
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory, pixel_model, scorer):
    root = tmp_path_factory.mktemp("report")
    cfg = TraceConfig(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0, 1), num_inference_steps=3, batch_size=64)
    run = root / "colour"
    table = run_sweep(cfg, run, model=pixel_model, scorer=scorer)
    # a random model's corruption moves nothing, so no pair is informative; this fixture tests the
    # page, not the science: count every pair (min_drop -inf) so entries and intervals exist to render
    write_causal_sites(table, run / "causal_sites.json", cfg.threshold, min_drop=float("-inf"), min_informative=1)
    plot_run(run, uncertainty=True)
    ev = fake_eval_dir(root / "eval")
    return write_report([run, ev], root / "report.html"), run, ev


def test_report_is_self_contained_and_has_every_figure(report):
    path, run, ev = report
    page = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), "external reference"
    assert "<script" not in page and "@import" not in page and "url(" not in page
    pngs = sorted((run / "figures").glob("*.png")) + [ev / "grid.png"]
    assert len(pngs) >= 4
    for p in pngs:
        assert p.name in page
        assert base64.b64encode(p.read_bytes()).decode() in page, f"{p.name} not inlined"
    assert page.count("<img ") == len(pngs)
    meta = json.loads((run / "meta.json").read_text())
    for text in (meta["scorer"]["id"], meta["scorer"]["formula"], meta["prompts"][0], "DDIMScheduler", "σ",
                 "Causal sites", "efficacy", "quickfix", "Contents", 'href="#colour"', 'href="#eval"'):
        assert text in page, text


def test_report_shows_intervals_and_each_figures_protocol(report):
    path, run, _ = report
    page = path.read_text()
    for text in ("95% interval</th>", "Split-half Spearman of the sites whose interval excludes 0, over 2 prompt × seed pairs",
                 "1000 resamples of prompt × seed pairs, seed 0", "lower bound &gt;= threshold", "whiskers: 95% bootstrap interval"):
        assert text in page, text
    for stem in ("text_encoder_heatmap", "text_encoder_heatmap_width", "text_encoder_heatmap_roles_width"):
        caption = re.search(rf"<code>{stem}\.png</code> — ([^<]*)</figcaption>", page)
        assert caption and "Protocol: method exact, restore token, layer window 1." in caption.group(1), stem
    assert re.search(r"<code>unet_effects\.png</code> — [^<]*Protocol: method exact\.</figcaption>", page)
    data = json.loads((run / "causal_sites.json").read_text())
    for e in data["clip"]["causal"]:
        lo, hi = e["interval"]
        assert f"[{lo:.3f}, {hi:.3f}]" in page
    for comp, agree in data["clip"]["split_half"]["agreement"].items():  # the halves' absolute agreement, as stored
        assert agree["mean_abs_diff"] is not None and f"{comp}: mean |Δ effect| {agree['mean_abs_diff']:.4g}" in page


def _captured(monkeypatch):
    """Figures the plot functions would save, kept open for inspection."""
    import diffloc.plots as plots

    figs = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(path.name, fig) and [])
    return figs


def test_unet_whiskers_are_the_bootstrap_interval(report, tmp_path, monkeypatch):
    from diffloc.plots import unet_chart
    from diffloc.tracing.io import read_trace
    from diffloc.tracing.stats import bootstrap_effects

    _, run, _ = report
    table = read_trace(run / "trace.parquet")
    figs = _captured(monkeypatch)
    unet_chart(table, tmp_path, bootstrap=(300, 0))
    ax = figs["unet_effects"].axes[0]
    from matplotlib.container import BarContainer

    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    segments = bars.errorbar.lines[2][0].get_segments()
    ref = bootstrap_effects(table[table.component == "unet"], "clip", n=300, seed=0)
    np.testing.assert_allclose([b.get_height() for b in bars], ref.effect)
    np.testing.assert_allclose([s[0][1] for s in segments], np.minimum(ref.lower, ref.effect))
    np.testing.assert_allclose([s[1][1] for s in segments], np.maximum(ref.upper, ref.effect))
    assert (ref.upper - ref.lower > 1e-6).any(), "two seeds: some interval must have width"


def test_heatmap_titles_name_restore_mode_and_method(report, tmp_path, monkeypatch):
    from diffloc.plots import text_heatmap
    from diffloc.tracing.io import read_trace

    _, run, _ = report
    table = read_trace(run / "trace.parquet")
    for tab, want in ((table.drop(columns="restore"), "exact · restore one token (the paper's protocol)"),
                      (table.assign(restore="suffix", method="exact"), "exact · restore the token and every later position")):
        figs = _captured(monkeypatch)
        text_heatmap(tab, tmp_path, uncertainty=True, bootstrap=(200, 0))
        assert set(figs) == {"text_encoder_heatmap", "text_encoder_heatmap_width", "text_encoder_heatmap_roles",
                             "text_encoder_heatmap_roles_width"}
        for fig in figs.values():
            assert want in fig._suptitle.get_text()
        width = figs["text_encoder_heatmap_roles_width"].axes[0].collections[0].get_array()
        assert np.nanmax(width) > 0, "the width heatmap shows some interval"


def test_cli_report_and_one_line_errors(report, tmp_path, capsys):
    from diffloc.cli.app import main

    _, run, ev = report
    out = tmp_path / "r.html"
    main(["report", str(run.parent), "--out", str(out)])  # the parent folder expands to both runs
    page = out.read_text()
    assert 'id="colour"' in page and 'id="eval"' in page
    for bad, msg in ((tmp_path / "missing", "is not a folder"), (tmp_path, "nothing to report")):
        with pytest.raises(SystemExit) as code:
            main(["report", str(bad), "--out", str(tmp_path / "x.html")])
        assert code.value.code == 2 and msg in capsys.readouterr().err


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    exe = chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _ink(png: Path) -> tuple[float, float]:
    """Fraction of non-white pixels and of coloured (saturated) pixels in a screenshot."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    nonwhite = (img.min(axis=2) < 0.92).mean()
    coloured = ((img.max(axis=2) - img.min(axis=2)) > 0.25).mean()
    return float(nonwhite), float(coloured)


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (apt-get install chromium; `make test` does it as root)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    path, run, ev = report
    page = path.read_text()
    n_img = page.count("<img ")
    # 1. every <img> decodes: a probe copy writes naturalWidth of each image into the DOM
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{const w=[...document.images].map(i=>i.naturalWidth);"
              "const d=document.createElement('pre');d.id='probe';d.textContent='PROBE'+JSON.stringify(w)+'END';"
              "document.body.appendChild(d);});</script>")
    probe.write_text(page.replace("</body>", script + "</body>"))
    res = _chromium(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], tmp_path)
    found = re.search(r"PROBE(\[.*?\])END", res.stdout)
    assert found, f"no probe in the DOM dump: {res.stderr[-500:]}"
    widths = json.loads(found.group(1))
    assert len(widths) == n_img and all(w > 100 for w in widths), widths
    # 2. the screenshot shows the figures: far more coloured ink than the same page without images
    shots = {}
    for name, html in (("report", page), ("no_images", re.sub(r"<img [^>]*>", "", page))):
        src = tmp_path / f"{name}.html"
        src.write_text(html)
        shot = tmp_path / f"{name}.png"
        res = _chromium([f"--screenshot={shot}", "--window-size=1200,4000", src.as_uri()], tmp_path)
        assert shot.exists() and shot.stat().st_size > 10_000, res.stderr[-500:]
        shots[name] = _ink(shot)
    nonwhite, coloured = shots["report"]
    assert nonwhite > 0.05 and coloured > 0.03, shots
    assert coloured > 3 * shots["no_images"][1] + 0.02, shots  # the figures, not the text, bring the colour


def test_demo_traces_its_chosen_prompts_first():
    from diffloc.demo import DEMO_FIRST
    from diffloc.demo import demo_prompts as _demo_prompts
    from diffloc.tracing.prompts import MarkedPrompt, attribute_prompts

    for attribute, first in DEMO_FIRST.items():
        got = [MarkedPrompt.parse(p) for p in _demo_prompts(attribute, 3)]
        shipped = attribute_prompts("toy", attribute)
        assert got[:2] == [shipped[i] for i in first]  # same text and same marked span
        assert len({p.text for p in got}) == 3

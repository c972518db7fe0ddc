"""One self-contained static HTML page summarising trace runs and edit evaluations.

Usage::

    write_report([Path("results/colour"), Path("results/eval")], Path("report.html"))
    diffloc report results/colour results/eval --out report.html

Every image is inlined as a base64 PNG and the CSS is inline, so the page has no external
references and can be mailed or archived as one file. A *trace run* folder (``meta.json``,
``trace.parquet``, ``causal_sites.json``, ``figures/``) shows its configuration, its figures
and its causal-site table. An *edit / evaluation* folder (``edit.json``, ``summary.json``,
``eval.parquet``, ``*.png``) shows whatever of those exists: JSON as tables, the evaluation
table summarised per method, PNGs inlined. A folder holding neither but with such folders
inside is expanded one level.
"""
from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

from diffloc.tracing.errors import DifflocInputError, InputFileError
from diffloc.tracing.io import atomic_write_bytes, read_json_format, read_meta, read_table
from diffloc.tracing.methods import method_of, options_from_config
from diffloc.tracing.trace_config import DEFAULT_METHOD

TRACE_MARKERS = ("meta.json", "trace.parquet", "causal_sites.json")
EDIT_MARKERS = ("edit.json", "summary.json", "eval.parquet")
FIGURE_ORDER = ("text_encoder_heatmap", "text_encoder_heatmap_width", "text_encoder_heatmap_roles", "text_encoder_heatmap_roles_width",
                "text_encoder_2_heatmap", "text_encoder_2_heatmap_width", "text_encoder_2_heatmap_roles",
                "text_encoder_2_heatmap_roles_width", "unet_effects", "transformer_effects", "image_strip")
FIGURE_CAPTIONS = {
    "text_encoder_heatmap": "Text encoder, the prompt with the largest corruption drop: restored score per layer × token (floor = corrupted score).",
    "text_encoder_heatmap_roles": "Text encoder, all prompts: restored score per layer × token role.",
    "text_encoder_2_heatmap": "Second text encoder, the prompt with the largest corruption drop.",
    "text_encoder_2_heatmap_roles": "Second text encoder, all prompts, by token role.",
    "unet_effects": "UNet: indirect effect of every component, in execution order; whiskers: 95% bootstrap interval over prompt × seed pairs.",
    "transformer_effects": "Transformer: indirect effect of every component, in execution order; whiskers: 95% bootstrap interval over prompt × seed pairs.",
    "image_strip": "Clean | corrupted | best restored images of the first units.",
}
WIDTH_CAPTION = "Width of the 95% bootstrap interval of each cell's indirect effect (the heatmap above)."
MAX_ROWS = 40

CSS = """
:root { --fg: #1d1d1f; --muted: #6e6e73; --line: #e3e3e8; --accent: #3d5a98; --bg-alt: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: #fff; }
main { max-width: 1080px; margin: 0 auto; padding: 2.5rem 1.5rem 4rem; }
h1 { font-size: 1.9rem; margin: 0 0 .25rem; letter-spacing: -.01em; }
h2 { font-size: 1.4rem; margin: 3rem 0 .5rem; padding-top: 1rem; border-top: 2px solid var(--fg); }
h3 { font-size: 1.05rem; margin: 1.8rem 0 .6rem; color: var(--accent); }
p.meta, .muted { color: var(--muted); font-size: .9rem; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85em; }
nav.toc { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px; padding: .8rem 1.2rem; margin: 1.5rem 0; }
nav.toc ol { margin: .3rem 0 0; padding-left: 1.3rem; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .88rem; }
th, td { text-align: left; padding: .3rem .7rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; background: var(--bg-alt); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv td.num { text-align: left; }
table.kv th { background: none; color: var(--muted); font-weight: 500; white-space: nowrap; }
.bar { display: inline-block; height: .6rem; background: var(--accent); border-radius: 2px; vertical-align: middle; margin-right: .4rem; }
figure { margin: 1rem 0 2rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: .85rem; margin-top: .4rem; }
ul.prompts { margin: .2rem 0 1rem; padding-left: 1.2rem; }
.scroll { overflow-x: auto; }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list, tuple)) for x in v):
        return ", ".join(_fmt(x) for x in v) if v else "—"
    if isinstance(v, dict) and all(not isinstance(x, (dict, list, tuple)) for x in v.values()):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _cell(v) -> str:
    cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    return f"<td{cls}>{_e(_fmt(v))}</td>"


def kv_table(pairs: dict) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>" for k, v in pairs.items())
    return f'<table class="kv">{rows}</table>'


def records_table(records: list[dict], columns: list[str] | None = None, index: str | None = None) -> str:
    """A table of dict rows (columns: their union, in first-seen order); long tables are cut."""
    columns = columns or list(dict.fromkeys(k for r in records for k in r if k != "__index__"))
    head = (f"<th>{_e(index)}</th>" if index is not None else "") + "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = ""
    for r in records[:MAX_ROWS]:
        first = f"<th>{_e(r.get('__index__', ''))}</th>" if index is not None else ""
        body += "<tr>" + first + "".join(_cell(r.get(c)) for c in columns) + "</tr>"
    more = f'<p class="muted">… {len(records) - MAX_ROWS} more rows not shown.</p>' if len(records) > MAX_ROWS else ""
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>{more}'


def _scalar(v) -> bool:
    return not isinstance(v, (dict, list)) or (isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v))


def json_html(obj, depth: int = 0) -> str:
    """Any JSON as tables: scalars as key/value rows, dicts of flat dicts and lists of flat dicts as grids."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return records_table(obj)  # nested values show as compact JSON in their cell
    if not isinstance(obj, dict):
        return f"<p>{_e(_fmt(obj))}</p>"
    if obj and all(isinstance(v, dict) and v and all(_scalar(x) for x in v.values()) for v in obj.values()):
        return records_table([dict(v, __index__=k) for k, v in obj.items()], index="")
    flat = {k: v for k, v in obj.items() if _scalar(v)}
    out = kv_table(flat) if flat else ""
    for k, v in obj.items():
        if k not in flat:
            tag = "h4" if depth else "h3"
            out += f"<{tag}>{_e(k)}</{tag}>" + json_html(v, depth + 1)
    return out


WIDE_PX = 2400  # wider PNGs (a UNet chart of hundreds of sites) keep half their size and scroll sideways


def img_tag(path: Path, alt: str) -> str:
    raw = path.read_bytes()
    width = int.from_bytes(raw[16:20], "big") if raw[:8] == b"\x89PNG\r\n\x1a\n" else 0  # IHDR width
    style = f' style="width:{width // 2}px;max-width:none"' if width > WIDE_PX else ""
    data = base64.b64encode(raw).decode("ascii")
    tag = f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}"{style}>'
    return f'<div class="scroll">{tag}</div>' if style else tag


def figure(path: Path, caption: str) -> str:
    wide = " (wide: scroll sideways)" if 'class="scroll"' in (tag := img_tag(path, path.stem)) else ""
    return f"<figure>{tag}<figcaption><code>{_e(path.name)}</code> — {_e(caption)}{wide}</figcaption></figure>"


def _sorted_pngs(folder: Path) -> list[Path]:
    order = {name: i for i, name in enumerate(FIGURE_ORDER)}
    return sorted(folder.glob("*.png"), key=lambda p: (order.get(p.stem, len(order)), p.name))


def trace_config(meta: dict) -> str:
    cfg = meta.get("config", {})
    sampler = meta.get("sampler", {})
    noise = meta.get("noise", {})
    scorer = meta.get("scorer", {})
    sigma = ", ".join(f"{c}: {s:.4g}" for c, s in noise.get("sigma", {}).items())
    rows = {
        "model": f"{meta.get('model', cfg.get('model'))} ({meta.get('arch', '?')})" + (f", {meta['source']}" if meta.get("source") else ""),
        "attribute": cfg.get("attribute"), "component": cfg.get("component"), "seeds": cfg.get("seeds"),
        "noise samples": cfg.get("noise_samples"),
        "sampler": f"{sampler.get('scheduler', '?')}, {sampler.get('num_inference_steps', '?')} steps, guidance {sampler.get('guidance_scale', '?')}",
        "corruption": f"Gaussian noise of {noise.get('scale', cfg.get('noise_scale'))} σ on the attribute tokens; σ = {sigma or '?'}",
        "noise seed": noise.get("seed_rule"),
        "layer window": cfg.get("layer_window"), "step windows": cfg.get("step_windows") or "all steps",
        "scorer": scorer.get("id"), "score formula": scorer.get("formula"), "ground truth": meta.get("ground_truth"),
        "threshold": cfg.get("threshold"), "units": meta.get("n_units"), "executor": cfg.get("executor"),
        "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
    }
    prompts = "".join(f"<li>{_e(p)}</li>" for p in meta.get("prompts", []))
    return kv_table(rows) + (f"<h3>Prompts ({len(meta.get('prompts', []))}; [brackets] mark the attribute)</h3><ul class=\"prompts\">{prompts}</ul>" if prompts else "")


def _caption(stem: str) -> str:
    return FIGURE_CAPTIONS.get(stem, WIDTH_CAPTION if stem.endswith("_width") else "")


def protocol_label(meta: dict, stem: str) -> str:
    """The protocol a figure shows: method and its options, and for text-encoder figures of a
    method that restores tokens the restore mode and layer window (the method object says which)."""
    cfg = meta.get("config", {})
    name = cfg.get("method", DEFAULT_METHOD)
    method = method_of(name)
    label = f"method {name}"
    if method is not None:
        label += method.describe(options_from_config(method, cfg))
    if (method is None or method.restores_tokens) and stem.startswith("text_encoder"):
        label += f", restore {cfg.get('restore', 'token')}, layer window {cfg.get('layer_window', 1)}"
    return f"Protocol: {label}."


def _split_half(half: dict | None) -> str:
    if not half:
        return ""
    per = ", ".join(f"{c} {_fmt(r)} ({half.get('n_sites', {}).get(c, '?')} sites)" for c, r in half.get("spearman", {}).items())
    agree = "; ".join(f"{c}: mean |Δ effect| {_fmt(a.get('mean_abs_diff'))} against a spread of {_fmt(a.get('spread'))}, "
                      f"causal sets overlap {_fmt(a.get('causal_jaccard'))}" for c, a in half.get("agreement", {}).items())
    return (f'<p class="muted">Split-half Spearman of the sites whose interval excludes 0, over {_e(half.get("n_pairs"))} '
            f"prompt × seed pairs: {_e(per or '—')}. Agreement of the halves' effects: {_e(agree or '—')}.</p>")


def causal_table(data: dict) -> str:
    boot = data.get("bootstrap") or {}
    out = kv_table({"rule": data.get("rule"), "threshold": data.get("threshold"), "clean score": data.get("clean"),
                    "corrupted score": data.get("corrupted"), "prompt × seed pairs": data.get("n_pairs"),
                    "bootstrap": f"{boot['n']} resamples of prompt × seed pairs, seed {boot['seed']}" if boot else None})
    for metric in data.get("metrics", []):
        entries = data.get(metric, {}).get("causal", [])
        n = data.get(metric, {}).get("n_sites_scored", "?")
        out += f"<h3>Causal sites by {_e(metric)} score: {len(entries)} of {_e(n)} scored sites</h3>"
        out += _split_half(data.get(metric, {}).get("split_half"))
        if not entries:
            out += '<p class="muted">No site reaches the threshold.</p>'
            continue
        rows = ""
        for e in entries[:MAX_ROWS]:
            eff = float(e.get("effect", 0.0))
            where = f"layer {e['layer']}, {e.get('token_role') or '—'}" if "layer" in e else "all steps"
            if "window" in e:
                where = f"steps [{e['window'][0]}, {e['window'][1]})"
            ci = e.get("interval")
            ci = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "—"
            rows += (f"<tr><td class=\"mono\">{_e(e.get('site'))}</td><td>{_e(e.get('component'))}</td><td>{_e(e.get('kind'))}</td>"
                     f"<td>{_e(where)}</td><td class=\"num\"><span class=\"bar\" style=\"width:{max(0.0, min(eff, 1.5)) * 60:.0f}px\"></span>{eff:.3f}</td>"
                     f"<td class=\"num\">{_e(ci)}</td></tr>")
        more = f'<p class="muted">… {len(entries) - MAX_ROWS} more causal sites in causal_sites.json.</p>' if len(entries) > MAX_ROWS else ""
        out += (f'<div class="scroll"><table><tr><th>site</th><th>component</th><th>kind</th><th>where</th><th>effect</th>'
                f'<th>95% interval</th></tr>{rows}</table></div>{more}')
    return out


def trace_section(folder: Path) -> str:
    out = ""
    meta = read_meta(folder / "meta.json") if (folder / "meta.json").exists() else {}
    if meta:
        out += "<h3>Configuration</h3>" + trace_config(meta)
    if (folder / "trace.parquet").exists():
        import pyarrow.parquet as pq

        out += f'<p class="muted">trace.parquet: {pq.ParquetFile(folder / "trace.parquet").metadata.num_rows} rows.</p>'
    figs = _sorted_pngs(folder / "figures") if (folder / "figures").is_dir() else []
    if figs:
        out += "<h3>Figures</h3>" + "".join(figure(p, f"{_caption(p.stem)} {protocol_label(meta, p.stem)}") for p in figs)
    elif (folder / "trace.parquet").exists():
        out += f'<p class="muted">No figures yet: run <code>diffloc plot {_e(folder)}</code>.</p>'
    if (folder / "causal_sites.json").exists():
        out += "<h3>Causal sites</h3>" + causal_table(read_json_format("causal_sites", folder / "causal_sites.json"))
    return out


def eval_table(path: Path) -> str:
    import pandas as pd

    table = read_table(path)
    out = f'<p class="muted">{path.name}: {len(table)} rows × {len(table.columns)} columns.</p>'
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    numeric += [c for c in table.columns if pd.api.types.is_bool_dtype(table[c])]
    if "method" in table.columns and numeric:
        keys = ["method"] + (["split"] if "split" in table.columns else [])
        means = table.groupby(keys, sort=False)[numeric].mean().reset_index()
        order = {m: i for i, m in enumerate(table.method.unique())}
        means = means.sort_values("method", key=lambda col: col.map(order), kind="stable")
        recs = [{k: (float(v) if isinstance(v, float) else v) for k, v in r.items()} for r in means.to_dict("records")]
        out += f"<h4>Mean per {' × '.join(keys)}</h4>" + records_table(recs)
    else:
        out += records_table(table.head(MAX_ROWS).to_dict("records"))
    return out


def edit_section(folder: Path) -> str:
    out = ""
    for name, title, fmt in (("edit.json", "Edits", "edit"), ("summary.json", "Evaluation summary", "summary")):
        if (folder / name).exists():
            out += f"<h3>{title} <span class=\"muted\">({name})</span></h3>" + json_html(read_json_format(fmt, folder / name), depth=1)
    if (folder / "eval.parquet").exists():
        out += "<h3>Evaluation table</h3>" + eval_table(folder / "eval.parquet")
    return out


def generic_section(folder: Path, skip: set[str]) -> str:
    """JSON files and PNGs of a folder that the trace / edit sections did not show."""
    out = ""
    for p in sorted(folder.glob("*.json")):
        if p.name not in skip:
            out += f"<h3>{_e(p.name)}</h3>" + json_html(json.loads(p.read_text()), depth=1)
    pngs = [p for p in _sorted_pngs(folder) if p.name not in skip]
    if pngs:
        out += "<h3>Images</h3>" + "".join(figure(p, "before / after" if "grid" in p.stem else "") for p in pngs)
    return out


def _kind(folder: Path) -> str | None:
    if any((folder / m).exists() for m in TRACE_MARKERS):
        return "trace run"
    if any((folder / m).exists() for m in EDIT_MARKERS):
        return "edit / evaluation"
    return None


def expand(dirs: list[Path]) -> list[Path]:
    """The folders to report: each given folder, or its direct subfolders that are runs."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise InputFileError(f"{d} is not a folder")
        if _kind(d):
            out.append(d)
            continue
        subs = [s for s in sorted(d.iterdir()) if s.is_dir() and _kind(s)]
        if not subs:
            raise DifflocInputError(f"nothing to report in {d}: expected {', '.join(TRACE_MARKERS + EDIT_MARKERS)} (or folders holding them)")
        out += subs
    return out


def section(folder: Path, anchor: str) -> str:
    kind = _kind(folder)
    body = trace_section(folder) if kind == "trace run" else ""
    body += edit_section(folder)
    body += generic_section(folder, skip={"meta.json", "causal_sites.json", "edit.json", "summary.json"})
    return f'<section id="{anchor}"><h2>{_e(folder.name)}</h2><p class="meta">{_e(kind)} · <code>{_e(folder)}</code></p>{body}</section>'


def write_report(dirs: list[Path], out: Path, title: str = "diffloc report") -> Path:
    """Write one self-contained HTML page for ``dirs`` (trace runs and edit evaluations) to ``out``."""
    from . import __version__

    folders = expand(dirs)
    anchors, sections, toc = set(), [], []
    for f in folders:
        base = re.sub(r"[^a-z0-9]+", "-", f.name.lower()).strip("-") or "run"
        anchor, i = base, 2
        while anchor in anchors:
            anchor, i = f"{base}-{i}", i + 1
        anchors.add(anchor)
        sections.append(section(f, anchor))
        toc.append(f'<li><a href="#{anchor}">{_e(f.name)}</a> <span class="muted">— {_e(_kind(f))}</span></li>')
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body><main><h1>{_e(title)}</h1>"
            f'<p class="meta">{len(folders)} folder(s) · generated {stamp} · diffloc {__version__}</p>'
            f'<nav class="toc"><strong>Contents</strong><ol>{"".join(toc)}</ol></nav>'
            + "".join(sections) + "</main></body></html>\n")
    out = Path(out)
    atomic_write_bytes(out, page.encode("utf-8"))
    out.chmod(0o644)  # a page to share, not a private temp file
    return out

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

Beside every trace run (its heading, the contents and its causal-site table) the page states how
many clean/corrupted pairs it holds and how many are informative (the corruption flips ground
truth or lowers the scorer by ``min_drop`` points): from ``causal_sites.json``, else counted
from ``trace.parquet`` (:func:`diffloc.plots.pair_counts`).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from diffloc.tracing.errors import DifflocInputError, InputFileError
from diffloc.tracing.io import atomic_write_bytes, read_json_format, read_meta, read_table
from diffloc.tracing.methods import method_of, options_from_config
from diffloc.tracing.trace_config import DEFAULT_METHOD

from .report_html import CSS, MAX_ROWS, _e, _fmt, figure, json_html, kv_table, records_table

TRACE_MARKERS = ("meta.json", "trace.parquet", "causal_sites.json")
EDIT_MARKERS = ("edit.json", "summary.json", "eval.parquet")
FIGURE_ORDER = ("text_encoder_heatmap", "text_encoder_heatmap_width", "text_encoder_heatmap_roles", "text_encoder_heatmap_roles_width",
                "text_encoder_2_heatmap", "text_encoder_2_heatmap_width", "text_encoder_2_heatmap_roles",
                "text_encoder_2_heatmap_roles_width", "transformer_blocks", "transformer_txt2img", "transformer_attn_contrib",
                "unet_attn_contrib", "unet_effects", "transformer_effects", "head_effects", "image_strip")
FIGURE_CAPTIONS = {
    "text_encoder_heatmap": "Text encoder, the prompt with the largest corruption drop: restored score per layer × token (floor = corrupted score).",
    "text_encoder_heatmap_roles": "Text encoder, all prompts: restored score per layer × token role.",
    "text_encoder_2_heatmap": "Second text encoder, the prompt with the largest corruption drop.",
    "text_encoder_2_heatmap_roles": "Second text encoder, all prompts, by token role.",
    "unet_effects": "UNet: indirect effect of every component, in execution order; whiskers: 95% bootstrap interval over prompt × seed pairs.",
    "transformer_effects": "Transformer: indirect effect of every component, in execution order; whiskers: 95% bootstrap interval over prompt × seed pairs.",
    "transformer_blocks": ("Transformer, block × stream: ratio-of-means indirect effect of each site, rows the site kinds in stream "
                           "order (pooled, text-stream attention, text → image slice, image-stream attention, ff_context, ff, the "
                           "two output streams), columns the blocks; 0 = corrupted, 1 = clean, grey = not traced. "
                           "Reds: attention, greens: feed-forward, purples: stream states."),
    "transformer_txt2img": ("Transformer, text → image slice of each block's joint attention (what the image queries read "
                            "from the prompt): indirect effect with its 95% bootstrap interval over prompt × seed pairs."),
    "transformer_attn_contrib": ("Attention contribution of the concept tokens per block (attn-contrib): mean raw ||W_o A V|| "
                                 "with a 95% bootstrap interval over prompt × seed pairs; outlined bars were confirmed by exact "
                                 "restoration, labelled with their effect."),
    "head_effects": "Per-head indirect effects: attention module × head.",
    "image_strip": "Clean | corrupted | best restored images of the first units.",
}
WIDTH_CAPTION = "Width of the 95% bootstrap interval of each cell's indirect effect (the heatmap above)."


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
    if stem in FIGURE_CAPTIONS:
        return FIGURE_CAPTIONS[stem]
    for suffix in ("_blocks", "_txt2img", "_attn_contrib", "_effects"):  # another denoiser component's name
        if stem.endswith(suffix):
            return FIGURE_CAPTIONS["transformer" + suffix].replace("Transformer", stem[: -len(suffix)], 1)
    return WIDTH_CAPTION if stem.endswith("_width") else ""


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
                    "corrupted score": data.get("corrupted"), "clean / corrupted pairs": data.get("n_pairs"),
                    "informative pairs": data.get("n_informative"), "informative when": data.get("informative_by"),
                    "bootstrap": f"{boot['n']} resamples of prompt × seed pairs, seed {boot['seed']}" if boot else None})
    for metric in data.get("metrics", []):
        part = data.get(metric, {})
        entries = part.get("causal", [])
        n = part.get("n_sites_scored", "?")
        out += f"<h3>Causal sites by {_e(metric)} score: {len(entries)} of {_e(n)} scored sites</h3>"
        if part.get("note"):  # too few informative pairs: nothing is called causal
            out += f'<p class="muted"><strong>{_e(part["note"])}</strong></p>'
        out += _split_half(part.get("split_half"))
        weak = part.get("not_enough_signal") or []
        if not entries and not weak:
            out += '<p class="muted">No site reaches the threshold.</p>'
            continue
        if entries:
            out += _entries_table(entries, "causal sites")
        if weak:
            out += (f'<p class="muted">{len(weak)} site(s) reach the threshold on too few informative pairs to be '
                    "called causal:</p>" + _entries_table(weak, "such sites"))
    return out


def _entries_table(entries: list[dict], what: str) -> str:
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
    more = f'<p class="muted">… {len(entries) - MAX_ROWS} more {what} in causal_sites.json.</p>' if len(entries) > MAX_ROWS else ""
    return (f'<div class="scroll"><table><tr><th>site</th><th>component</th><th>kind</th><th>where</th><th>effect</th>'
            f'<th>95% interval</th></tr>{rows}</table></div>{more}')


def pair_counts(folder: Path) -> tuple[int, int | None] | None:
    """(clean/corrupted pairs, informative pairs) of a trace run; None when it has neither a
    ``causal_sites.json`` with the counts nor a readable ``trace.parquet``."""
    data = {}
    if (folder / "causal_sites.json").exists():
        try:
            data = json.loads((folder / "causal_sites.json").read_text())
        except (OSError, ValueError):
            data = {}
    if isinstance(data.get("n_pairs"), int) and isinstance(data.get("n_informative"), int):
        return int(data["n_pairs"]), int(data["n_informative"])
    if (folder / "trace.parquet").exists():
        from diffloc.plots import pair_counts as counts_of
        from diffloc.tracing.io import read_trace

        try:
            return counts_of(read_trace(folder / "trace.parquet"), folder)
        except (OSError, ValueError, KeyError, DifflocInputError):
            pass
    return (int(data["n_pairs"]), None) if isinstance(data.get("n_pairs"), int) else None


def counts_label(counts: tuple[int, int | None] | None) -> str:
    """'2 clean/corrupted pairs, 1 informative' ('' without counts)."""
    if counts is None:
        return ""
    n, k = counts
    return f"{n} clean/corrupted pair{'' if n == 1 else 's'}, {'?' if k is None else k} informative"


def trace_section(folder: Path, counts: tuple[int, int | None] | None = None) -> str:
    out = ""
    if counts is not None:
        out += (f'<p class="pairs"><strong>{_e(counts_label(counts))}</strong> <span class="muted">(a pair is informative when '
                "its corruption flips ground truth or lowers the scorer by at least the run's min-drop points; "
                "only informative pairs can name a site causal)</span></p>")
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


def section(folder: Path, anchor: str, counts: tuple[int, int | None] | None = None) -> str:
    kind = _kind(folder)
    body = trace_section(folder, counts) if kind == "trace run" else ""
    body += edit_section(folder)
    body += generic_section(folder, skip={"meta.json", "causal_sites.json", "edit.json", "summary.json"})
    pairs = f" · {_e(counts_label(counts))}" if counts is not None else ""
    return f'<section id="{anchor}"><h2>{_e(folder.name)}</h2><p class="meta">{_e(kind)}{pairs} · <code>{_e(folder)}</code></p>{body}</section>'


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
        counts = pair_counts(f) if _kind(f) == "trace run" else None
        sections.append(section(f, anchor, counts))
        pairs = f", {_e(counts_label(counts))}" if counts is not None else ""
        toc.append(f'<li><a href="#{anchor}">{_e(f.name)}</a> <span class="muted">— {_e(_kind(f))}{pairs}</span></li>')
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

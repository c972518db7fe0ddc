"""HTML building blocks of the report page: escaping, key/value and record tables, JSON as tables,
embedded PNG figures, and the page's CSS.

Usage::

    from diffloc.report_html import figure, json_html, kv_table, records_table

    kv_table({"method": "exact", "pairs": 12})              # '<table class="kv">...'
    records_table([{"site": "unet:mid_block", "effect": 0.41}])
    json_html(json.loads(path.read_text()))                 # any JSON, as tables
    figure(Path("figures/unet_effects.png"), "caption")     # the PNG embedded as base64

:mod:`diffloc.report` assembles the page from these.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

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

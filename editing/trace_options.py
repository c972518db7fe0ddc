"""An edit launched from a trace: the editor's options read from ``causal_sites.json``.

Usage::

    opts = options_from_trace("results/colour", "quickfix")    # {'site': 'text_encoder:encoder.layers.0.self_attn.out_proj'}
    opts = options_from_trace("results/colour", "refact")      # {'layer': 0}
    opts = options_from_trace("results/colour", "crossattn")   # {'sites': [...attn2 sites...]}

Each editor edits one kind of trace state (:attr:`editing.editors.Editor.state`, e.g.
``text_encoder/attn``); the strongest causal state of that kind becomes its site. With no
causal state of the kind, the options are empty and the editor uses its default site.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from diffloc.tracing.causal import read_causal_sites

from .editors import parse_method


def options_from_trace(trace_dir: str | Path, label: str, say: Callable | None = None) -> dict:
    """Options for ``label``'s editor from the trace's strongest causal state of its kind."""
    editor, _ = parse_method(label)
    component, kind = editor.state.split("/")
    hits = read_causal_sites(trace_dir, component, kind)
    if not hits:
        opts: dict = {}
    elif kind == "mlp":
        opts = {"layer": hits[0]["layer"]}
    elif component == "unet":
        opts = {"sites": [h["site"] for h in hits]}
    else:
        opts = {"site": hits[0]["site"]}
    if say is not None:
        say(f"from trace {trace_dir}: {opts or 'no causal state of this kind; using the default site'}")
    return opts

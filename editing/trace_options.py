"""An edit launched from a trace: the editor's options read from ``causal_sites.json``.

Usage::

    opts = options_from_trace("results/colour", "quickfix")    # {'site': 'text_encoder:encoder.layers.0.self_attn.out_proj'}
    opts = options_from_trace("results/colour", "refact")      # {'layer': 0}
    opts = options_from_trace("results/colour", "crossattn")   # {'sites': [...attn2 sites...]}

Each editor reads one kind of trace state (:attr:`editing.protocol.Editor.reads`, e.g. the text
encoder's ``attn``); the trace's causal states of that kind, strongest first, go to the editor,
which picks its site from them (:meth:`editing.protocol.Editor.from_trace`). With no causal
state of the kind, the options are empty and the editor uses its default site.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from diffloc.tracing.causal import read_causal_sites

from .editors import parse_method


def trace_hits(trace_dir: str | Path, label: str, model=None) -> list[dict]:
    """The causal entries of ``label``'s editor's state kind in a trace run, strongest first.
    The denoiser's component is ``model``'s, or any registered family's when no model is given."""
    editor, _ = parse_method(label)
    kinds = getattr(editor, "hit_kinds", ()) or (editor.reads.kind,)  # a DiT editor may read several kinds (joint-attn)
    hits = [h for comp in editor.reads.components(model) for kind in kinds for h in read_causal_sites(trace_dir, comp, kind)]
    return sorted(hits, key=lambda h: -h["effect"])  # stable: the file's own order among equal effects


def options_from_trace(trace_dir: str | Path, label: str, say: Callable | None = None, model=None) -> dict:
    """Options for ``label``'s editor from the trace's strongest causal state of its kind."""
    editor, _ = parse_method(label)
    opts = editor.from_trace(trace_hits(trace_dir, label, model), model)
    if say is not None:
        say(f"from trace {trace_dir}: {opts or 'no causal state of this kind; using the default site'}")
    return opts

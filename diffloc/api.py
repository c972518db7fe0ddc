"""The notebook API: the CLI's three verbs at the package root.

Usage::

    import diffloc

    model = diffloc.load_model("toy")                       # a spec: toy, tiny-sd1, a folder, a file, a hub id
    run = diffloc.trace(model, "colour", out="results/colour", component="text_encoder", seeds=(0,))
    run.table.head()                                        # the tidy rows of trace.parquet (a DataFrame)
    run.causal_sites                                        # causal_sites.json, with intervals
    run.plot()                                              # figures under run.path / "figures"
    edited = diffloc.edit(model, from_trace=run, source="red", target="blue", out="results/red_blue")

``trace`` takes :class:`~diffloc.tracing.trace_config.TraceConfig`'s fields as keywords and
resumes a sweep whose folder already holds shards; ``edit`` picks the editor's site from the
run exactly as ``diffloc edit --from-trace`` does and saves the edited model beside its record.
Each function is the same code path as its CLI command, so results are identical.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def load_model(spec: str, dtype: str = "float32", device: str = "cpu"):
    """Load a model spec (``toy``, ``tiny-sd1``, a diffusers folder, a single file, a hub id)."""
    from diffloc.tracing.models import load_model as _load

    return _load(spec, dtype=dtype, device=device)


@dataclass
class Run:
    """A finished (or resumed) trace: its folder, table, causal sites and figures."""

    path: Path
    _table: Any = field(default=None, repr=False)

    @property
    def table(self):
        """The sweep's rows (``trace.parquet``) as a pandas DataFrame."""
        if self._table is None:
            from diffloc.tracing.io import read_trace

            self._table = read_trace(self.path / "trace.parquet")
        return self._table

    @property
    def causal_sites(self) -> dict:
        """``causal_sites.json``: the sites whose mean effect clears the threshold, with intervals."""
        return json.loads((self.path / "causal_sites.json").read_text())

    def plot(self, metric: str = "clip", uncertainty: bool = True) -> list[Path]:
        """Write the run's figures (heatmaps, effect charts, image strip); returns their paths."""
        from diffloc.plots import plot_run

        return plot_run(self.path, metric, uncertainty=uncertainty)


def trace(model, attribute: str, out: str | Path | None = None, scorer=None, **options) -> Run:
    """Trace ``attribute`` in ``model`` (a loaded Model, or a spec) into ``out`` (default: a new temp folder).

    ``options`` are TraceConfig fields (``method``, ``component``, ``seeds``, ``max_prompts``, ...).
    """
    from diffloc.tracing.sweep import run_sweep
    from diffloc.tracing.trace_config import TraceConfig

    if isinstance(model, str):
        model = load_model(model, dtype=options.get("dtype", "float32"), device=options.get("device", "cpu"))
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"diffloc-{attribute}-"))
    cfg = TraceConfig(model=model.source or model.name, attribute=attribute, **options)
    table = run_sweep(cfg, out, model=model, scorer=scorer)
    return Run(out, table)


def edit(model, source: str, target: str, out: str | Path, from_trace: Run | str | Path | None = None,
         method: str = "quickfix", **options):
    """Edit ``model`` in closed form (``method``: a registered editor), saving it to ``out``.

    ``from_trace`` (a :class:`Run` or a trace folder) picks the editor's site as
    ``diffloc edit --from-trace`` does; ``options`` are the editor's own options (``lam``, ``site``, ...).
    Returns the edited Model (the one passed in, edited in place; undo with ``diffloc undo``).
    """
    from diffloc.editing.editors import EDITORS
    from diffloc.editing.records import check_out_path, save_edited
    from diffloc.editing.trace_options import options_from_trace

    if isinstance(model, str):
        model = load_model(model)
    editor = EDITORS.get(method)
    check_out_path(Path(out), None)
    trace_dir = from_trace.path if isinstance(from_trace, Run) else from_trace
    opts = options_from_trace(Path(trace_dir), method, model=model) if trace_dir is not None else {}
    opts.update(options)
    records = editor.apply(model, source, target, opts)
    save_edited(model, records, Path(out), source=None)
    return model

"""Trace methods: how a sweep's units are planned and run, reached by name.

Usage::

    method = TRACE_METHODS.get(cfg.method)        # 'exact' (default), 'atp', 'ig', 'crossattn-swap', 'attn-contrib'
    opts = method.options(cfg)                    # its own frozen, validated options dataclass
    units = method.plan(cfg, model, prompts, n_steps)
    table, strip = method.run_unit(unit, ctx, cfg)  # one shard
    more = method.followup(cfg, ctx, table)       # a second phase planned from the first (default: none)

A method implements ``plan`` and ``run_unit`` and declares what the sweep, until-stable, the
report and the figures need to know, so none of them tests a method's name:

- ``Options``: a frozen dataclass of its own knobs (``TraceConfig.method_options`` holds their
  values), validated in ``__post_init__``; field ``metadata["help"]`` is the CLI help;
- ``measures``: its rows measure an effect (a restored or swapped run), not estimate one;
  causal sites and until-stable read the measured rows of a table (:func:`causal_rows`);
- ``skips_rows``: it may leave no-op rows out of a batch and marks them (``skipped_noop``);
- ``restores_tokens``: its text-encoder rows restore token positions (``--restore`` applies);
- ``describe(options)``: the protocol text of its options that figures and the report show;
- ``denoiser_title(table)``: the title of the denoiser effect chart (None: the default).

``run_unit`` returns a tidy table with the columns of ``trace.parquet`` (rows 0 and 1 the two
references; :mod:`tracing.rows` builds it) and an image strip. A new method is one object
registered here plus its tests; nothing in the sweep changes.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from .method_base import BaseMethod, NoOptions, TraceMethod, option_names, options_for
from .registry import Registry

__all__ = ["TRACE_METHODS", "TraceMethod", "BaseMethod", "NoOptions", "option_names", "options_for",
           "options_from_config", "method_of", "causal_rows", "skipping_rows"]


def options_from_config(method, config: Mapping[str, Any]) -> Any:
    """A method's options from a ``meta.json`` config: ``method_options``, or the flat keys older runs wrote."""
    names = option_names(method)
    legacy = {k: config[k] for k in names if k in config}
    return options_for(method, {**legacy, **(config.get("method_options") or {})})


def method_of(name: str | None):
    """The registered method of a table's ``method`` value (None, NaN or an unknown plug-in: None)."""
    return TRACE_METHODS.get(name) if isinstance(name, str) and name in TRACE_METHODS else None


def causal_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows causal sites are named from: those of methods that measure effects, else all rows
    (a screen without confirmation has only estimates)."""
    if "method" not in table.columns:
        return table
    measured = [m for m in table.method.dropna().unique() if getattr(method_of(m), "measures", False)]
    rows = table[table.method.isin(measured)]
    return rows if len(rows) else table


def skipping_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The restored rows of methods that may skip no-op rows (their ``skipped_*`` flags count)."""
    from .rows import REFERENCE_KINDS

    names = [m for m in table.method.dropna().unique() if getattr(method_of(m), "skips_rows", False)]
    return table[table.method.isin(names) & ~table.kind.isin(REFERENCE_KINDS)]


def _builtin(reg: Registry) -> None:
    from .attn_contrib import AttnContribMethod
    from .exact import ExactMethod
    from .locogen import CrossAttnSwapMethod
    from .screens import AtpMethod, IgMethod

    for method in (ExactMethod(), AtpMethod(), IgMethod(), CrossAttnSwapMethod(), AttnContribMethod()):
        reg.register(method.name, method)


TRACE_METHODS: Registry[TraceMethod] = Registry("trace method", loader=_builtin)

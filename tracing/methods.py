"""Trace methods: how a sweep's units are planned and run, reached by name.

Usage::

    method = TRACE_METHODS.get(cfg.method)        # 'exact' (default), ...
    units = method.plan(cfg, model, prompts, n_steps)
    table, strip = method.run_unit(unit, ctx, cfg)  # one shard

A method implements ``plan`` and ``run_unit``; the sweep (shards, resume, executors, merge,
causal sites) is the same for all. ``run_unit`` returns a tidy table with the columns of
``trace.parquet`` (rows 0 and 1 the clean and corrupted references) and an image strip.
A new method is one object registered here plus its tests; nothing in the sweep changes.
"""
from __future__ import annotations

from typing import Protocol

from .registry import Registry
from .trace_config import UnitContext


class TraceMethod(Protocol):
    name: str

    def plan(self, cfg, model, prompts, n_steps: int) -> list: ...

    def run_unit(self, unit, ctx: UnitContext, cfg) -> tuple: ...


def _builtin(reg: Registry) -> None:
    from .exact import ExactMethod
    from .locogen import CrossAttnSwapMethod
    from .screens import ScreenMethod

    reg.register("exact", ExactMethod())
    reg.register("atp", ScreenMethod("atp"))
    reg.register("ig", ScreenMethod("ig"))
    reg.register("crossattn-swap", CrossAttnSwapMethod())


TRACE_METHODS: Registry[TraceMethod] = Registry("trace method", loader=_builtin)

"""The trace-method protocol and its defaults (:mod:`tracing.methods` registers the methods).

Usage::

    class MyMethod(BaseMethod):
        name = "mine"
        Options = MyOptions          # a frozen dataclass validating in __post_init__
        def plan(self, cfg, model, prompts, n_steps): ...
        def run_unit(self, unit, ctx, cfg): ...

What each member means is documented in :mod:`tracing.methods`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Protocol

import pandas as pd

from .errors import ConfigError
from .trace_config import UnitContext


class TraceMethod(Protocol):
    name: str
    Options: type
    measures: bool
    skips_rows: bool
    restores_tokens: bool

    def options(self, cfg) -> Any: ...

    def plan(self, cfg, model, prompts, n_steps: int) -> list: ...

    def run_unit(self, unit, ctx: UnitContext, cfg) -> tuple: ...

    def followup(self, cfg, ctx: UnitContext, table: pd.DataFrame) -> list: ...

    def describe(self, options: Any) -> str: ...

    def denoiser_title(self, table: pd.DataFrame) -> str | None: ...


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


class BaseMethod:
    """Defaults of the protocol: no options, measured rows, no follow-up, nothing to describe."""

    name = ""
    Options: type = NoOptions
    measures = True
    skips_rows = False
    restores_tokens = True
    bench_scopes: tuple[str, ...] = ()  # bench screen scopes it is timed on against exact patching (diffloc.bench_screens)

    def options(self, cfg) -> Any:
        """``cfg.method_options`` as this method's options (one-line error for an unknown name or a bad value)."""
        return options_for(self, getattr(cfg, "method_options", None) or {})

    def followup(self, cfg, ctx: UnitContext, table: pd.DataFrame) -> list:
        return []

    def describe(self, options: Any) -> str:
        return ""

    def denoiser_title(self, table: pd.DataFrame) -> str | None:
        return None


def option_names(method) -> tuple[str, ...]:
    return tuple(f.name for f in fields(method.Options))


def options_for(method, given: Mapping[str, Any] | Any) -> Any:
    """``method.Options`` from a mapping (or an instance of it), validated."""
    if isinstance(given, method.Options):
        return given
    if not isinstance(given, Mapping):
        raise ConfigError(f"method options must be a mapping of option name to value, got {type(given).__name__}")
    unknown = sorted(set(given) - set(option_names(method)))
    if unknown:
        allowed = ", ".join(option_names(method)) or "none"
        raise ConfigError(f"--method {method.name} has no option {', '.join(unknown)}; allowed: {allowed}")
    return method.Options(**given)

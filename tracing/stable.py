"""Stability as a planned quantity: add seeds to a sweep until its site ranking holds still.

Usage::

    cfg = TraceConfig(model="toy", attribute="count", component="denoiser", seeds=(0, 1))
    table, history = run_until_stable(cfg, "results/count", target=0.9, max_seeds=8)
    # history: [{'n_seeds': 2, 'spearman': {'clip': {'unet': 0.71}, ...}, 'met': False}, {'n_seeds': 4, ...}, ...]

Each round runs (or resumes) :func:`tracing.sweep.run_sweep` with the seeds so far; units are
keyed by seed, so a round only computes the new seeds' units. After each round the split-half
Spearman of the sites with a real effect (95% interval excludes 0; :func:`tracing.causal.uncertainty`)
is measured per traced component and metric. The sweep stops when every one reaches ``target``,
or at ``max_seeds``; otherwise ``round_seeds`` new seeds (the next integers above the largest)
are added. A component with fewer than three sites with a real effect has no ranking to
stabilise and does not hold the loop. ``OUT/stability.json`` (format ``stability/1``) keeps the
history (read it with ``tracing.io.read_json_format("stability", path)``); a rerun with the same
arguments replays the rounds from the finished shards.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from .causal import metric_names, uncertainty
from .errors import ConfigError
from .io import write_json_format
from .methods import causal_rows
from .trace_config import TraceConfig

MIN_SITES = 3  # fewer sites with a real effect: no rank correlation to reach
RULE = ("after each round: split-half Spearman over prompt x seed pairs of the sites whose 95% bootstrap interval excludes 0, "
        "per component and metric; stable when each reaches the target (a component with fewer than 3 such sites does not hold the loop)")


def check_stable_options(cfg: TraceConfig, target: float, max_seeds: int, round_seeds: int) -> None:
    """One-line :class:`ConfigError` for options outside their range."""
    if not 0 < target <= 1:  # NaN fails too
        raise ConfigError(f"--until-stable must be a rank correlation in (0, 1], got {target}")
    if not max_seeds >= len(cfg.seeds):
        raise ConfigError(f"--max-seeds must be >= the {len(cfg.seeds)} starting seed(s), got {max_seeds}")
    if not round_seeds >= 1:
        raise ConfigError(f"seeds per round must be >= 1, got {round_seeds}")


def next_seeds(seeds: Sequence[int], k: int) -> list[int]:
    """``k`` new seeds: the next integers above the largest one."""
    top = max(seeds)
    return list(range(top + 1, top + 1 + k))


def judge(table: pd.DataFrame, target: float, bootstrap: int = 1000, bootstrap_seed: int = 0,
          metrics: Sequence[str] | None = None) -> dict:
    """One round's verdict: split-half Spearman and sites ranked per metric and component, and ``met``."""
    table = causal_rows(table)  # screens: judge the measured (confirmed) rows, as causal_sites.json does
    entry: dict = {"n_pairs": 0, "spearman": {}, "n_sites": {}, "met": True}
    for metric in metrics or metric_names(table):
        _, half = uncertainty(table, metric, bootstrap, bootstrap_seed)
        entry["n_pairs"] = half["n_pairs"]
        entry["spearman"][metric], entry["n_sites"][metric] = half["spearman"], half["n_sites"]
        below = [c for c, rho in half["spearman"].items() if half["n_sites"][c] >= MIN_SITES and (rho is None or rho < target)]
        entry["met"] = entry["met"] and half["n_pairs"] >= 2 and not below
    return entry


def run_until_stable(cfg: TraceConfig, out: str | Path, target: float = 0.9, max_seeds: int = 8, round_seeds: int = 2,
                     stability_metrics: Sequence[str] | None = None, **run_sweep_kw) -> tuple[pd.DataFrame, list[dict]]:
    """Run ``cfg``'s sweep into ``out``, adding ``round_seeds`` seeds per round until stable or ``max_seeds``.

    ``stability_metrics``: the metrics that must reach ``target`` (default: every metric the
    table scores, CLIP and ground truth on the toy). ``run_sweep_kw`` go to every
    :func:`tracing.sweep.run_sweep` call (``model``, ``scorer``, ``progress``, ``executor_kw``,
    ``metrics``); the model and scorer load once when not given. Returns the last round's table
    and the history of rounds.
    """
    from .sweep import run_sweep

    check_stable_options(cfg, target, max_seeds, round_seeds)
    out = Path(out)
    kw = dict(run_sweep_kw)
    if kw.get("model") is None:
        from .models import load_model

        kw["model"] = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    if kw.get("scorer") is None:
        from .scoring import default_scorer, load_scorer

        kw["scorer"] = load_scorer(default_scorer(cfg.scorer, kw["model"]), device=cfg.device)
    seeds, history = list(cfg.seeds), []
    while True:
        table = run_sweep(replace(cfg, seeds=tuple(seeds)), out, **kw)
        history.append({"n_seeds": len(seeds), "seeds": list(seeds),
                        **judge(table, target, cfg.bootstrap, cfg.bootstrap_seed, stability_metrics)})
        done = history[-1]["met"] or len(seeds) >= max_seeds
        record = {"target": target, "max_seeds": max_seeds, "round_seeds": round_seeds, "rule": RULE,
                  "stable": history[-1]["met"], "finished": done, "history": history}
        write_json_format("stability", record, out / "stability.json")
        if done:
            return table, history
        seeds += next_seeds(seeds, min(round_seeds, max_seeds - len(seeds)))

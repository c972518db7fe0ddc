"""Stability as a planned quantity: add seeds to a sweep until enough informative pairs rank its sites the same way.

Usage::

    diffloc trace --model toy --attribute count --component unet --until-stable 0.9 --max-seeds 8 --min-informative 8 --out results/count

    cfg = TraceConfig(model="toy", attribute="count", component="denoiser", seeds=(0, 1), min_informative=8, min_drop=5)
    table, history = run_until_stable(cfg, "results/count", target=0.9, max_seeds=8)
    # history: [{'n_seeds': 2, 'n_pairs': 24, 'n_informative': 7, 'spearman': {'clip': {'text_encoder': 0.71}, ...}, 'met': False}, ...]

Each round runs (or resumes) :func:`tracing.sweep.run_sweep` with the seeds so far; units are
keyed by seed, so a round only computes the new seeds' units (every new seed adds a pair per
prompt and noise sample). After each round the pairs are counted (``n_pairs``) and so are the
*informative* ones (``n_informative``; :func:`tracing.causal.pair_signal`: the corruption flips
ground truth or lowers the scorer by at least ``cfg.min_drop`` points). Only informative pairs
count, toward the minimum and in the rankings: the split-half Spearman of the sites with a real
effect (95% interval excludes 0; :func:`tracing.causal.uncertainty`) is measured over the
informative pairs, per traced component and metric. The sweep stops when at least
``cfg.min_informative`` informative pairs exist *and* every ranking reaches ``target``, or at
``max_seeds``; otherwise ``round_seeds`` new seeds (the next integers above the largest) are
added. A component with fewer than three sites with a real effect has no ranking to stabilise
and does not hold the loop. Each round prints one line with ``n_pairs`` and ``n_informative``.
``OUT/stability.json`` (format ``stability/1``) keeps the history, every round with its
``n_pairs`` and ``n_informative`` (read it with ``tracing.io.read_json_format("stability",
path)``); a rerun with the same arguments replays the rounds from the finished shards.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from .auto_noise import say
from .causal import informative_rows, metric_names, pair_signal, uncertainty
from .errors import ConfigError
from .io import write_json_format
from .methods import causal_rows
from .trace_config import TraceConfig

MIN_SITES = 3  # fewer sites with a real effect: no rank correlation to reach
RULE = ("after each round: count the informative pairs (prompt x seed x noise sample whose corruption flips gt or lowers the scorer "
        "by >= min_drop points); split-half Spearman over the informative pairs of the sites whose 95% bootstrap interval excludes 0, "
        "per component and metric; stable when at least min_informative informative pairs exist and each Spearman reaches the target "
        "(a component with fewer than 3 such sites does not hold the loop)")


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
          metrics: Sequence[str] | None = None, min_drop: float = 5.0, min_informative: int = 8) -> dict:
    """One round's verdict: ``n_pairs`` (all pairs), ``n_informative`` (:func:`tracing.causal.pair_signal`, by the
    table's scorer and ``min_drop``), split-half Spearman and sites ranked per metric and component over the
    informative pairs, and ``met``: at least ``min_informative`` informative pairs and every ranking at ``target``."""
    table = causal_rows(table)  # screens: judge the measured (confirmed) rows, as causal_sites.json does
    names = metric_names(table)
    pairs = pair_signal(table, names[0], min_drop)
    n_inf = int(pairs.informative.sum())
    entry: dict = {"n_pairs": int(len(pairs)), "n_informative": n_inf, "spearman": {}, "n_sites": {}, "met": n_inf >= min_informative}
    used = informative_rows(table, names[0], min_drop)
    for metric in metrics or names:
        if not n_inf:  # nothing to rank: no informative pair yet
            entry["spearman"][metric], entry["n_sites"][metric], entry["met"] = {}, {}, False
            continue
        _, half = uncertainty(used, metric, bootstrap, bootstrap_seed)
        entry["spearman"][metric], entry["n_sites"][metric] = half["spearman"], half["n_sites"]
        below = [c for c, rho in half["spearman"].items() if half["n_sites"][c] >= MIN_SITES and (rho is None or rho < target)]
        entry["met"] = entry["met"] and half["n_pairs"] >= 2 and not below
    return entry


def round_line(entry: dict, target: float, min_informative: int, next_step: str) -> str:
    """One progress line of a round: its pairs, informative pairs, rankings, and what comes next."""
    ranks = "; ".join(f"{m}: " + (", ".join(f"{c} {rho}" for c, rho in sp.items()) or "none")
                      for m, sp in entry["spearman"].items())
    return (f"until-stable: {entry['n_seeds']} seeds, n_pairs {entry['n_pairs']}, n_informative {entry['n_informative']} "
            f"(need {min_informative}); split-half Spearman {ranks or 'none'} (target {target}) -> {next_step}")


def run_until_stable(cfg: TraceConfig, out: str | Path, target: float = 0.9, max_seeds: int = 8, round_seeds: int = 2,
                     stability_metrics: Sequence[str] | None = None, report: Callable[[str], None] | None = None,
                     **run_sweep_kw) -> tuple[pd.DataFrame, list[dict]]:
    """Run ``cfg``'s sweep into ``out``, adding ``round_seeds`` seeds per round until stable or ``max_seeds``.

    Stable: at least ``cfg.min_informative`` informative pairs (by ``cfg.min_drop``) and the
    split-half rankings over them at ``target`` (:func:`judge`). ``stability_metrics``: the
    metrics that must reach ``target`` (default: every metric the table scores, CLIP and ground
    truth on the toy). ``report``: called with one progress line per round (default: stderr,
    silent under ``--quiet``). ``run_sweep_kw`` go to every
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
    seeds, history, report = list(cfg.seeds), [], report or say
    while True:
        table = run_sweep(replace(cfg, seeds=tuple(seeds)), out, **kw)
        history.append({"n_seeds": len(seeds), "seeds": list(seeds), **judge(table, target, cfg.bootstrap, cfg.bootstrap_seed,
                                                                             stability_metrics, cfg.min_drop, cfg.min_informative)})
        done = history[-1]["met"] or len(seeds) >= max_seeds
        record = {"target": target, "max_seeds": max_seeds, "round_seeds": round_seeds, "rule": RULE,
                  "min_drop": cfg.min_drop, "min_informative": cfg.min_informative,
                  "stable": history[-1]["met"], "finished": done, "history": history}
        write_json_format("stability", record, out / "stability.json")
        more = min(round_seeds, max_seeds - len(seeds))
        report(round_line(history[-1], target, cfg.min_informative, "stable" if history[-1]["met"] else
                          f"add {more} seed(s)" if not done else f"not stable at --max-seeds {max_seeds}"))
        if done:
            return table, history
        seeds += next_seeds(seeds, more)

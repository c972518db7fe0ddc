"""Benchmark of a text-encoder sweep: gradient screens against exact patching, and what skipping no-ops saves.

Usage::

    result = bench_screens("toy")                                  # one prompt × seed of the toy
    result["screen_over_exact"]["atp"]["text_encoder"], result["naive_over_sweep_text"]

All figures are ratios measured in this one run, on the same prompt, seed and corruption:

- ``screen_over_exact[method][scope]``: wall time of one screen (``atp``, ``ig``; on a DiT's
  ``denoiser`` scope also ``attn-contrib``, Zarei et al.'s one-forward ranking: every method whose
  ``bench_scopes`` names the scope, in registry order) over every site of ``scope`` ÷ the exact sweep of the same sites (every unit of one prompt × seed, no-op
  rows skipped as the sweep does). Scopes (:func:`screen_scopes`): UNet models ``text_encoder``
  (layer × token × kind) and, where the model has heads, ``heads`` (every text-encoder and UNet
  attention head); DiT models ``denoiser`` (every block state: each block's streams, attention
  and feed-forward outputs) and ``heads`` (the denoiser's sites and every one of its heads).
- ``naive_over_sweep_text`` (UNet models): one pipeline call per restored row, as the reference codes do
  (each re-running its clean and corrupted passes; no row is skipped), ÷ the batched sweep
  with no-op rows skipped. The naive time is measured on ``naive_sample`` rows spread over
  the table and scaled to all rows (a naive call costs the same for every row).
- ``peak_mem_ratio_screen``: peak memory of an ``atp`` screen of the first scope ÷ plain
  generation of the same batch (one prompt with classifier-free guidance), as in
  :mod:`diffloc.bench_trace`.
- ``skipped_noop`` (UNet models): rows the exact text sweep did not generate (no-ops and
  duplicates), of all rows.

Timings are read from ``clock`` (default ``time.perf_counter``; two reads around each timed
block, in the order exact, atp, ig per scope, then the naive rows) and peaks from
``peak(fn, repeats) -> {"tensors", "rss"}`` (default :func:`diffloc.bench_memory.median_peak`),
so tests can pass known ones and check every figure against hand-computed values.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffloc.tracing.corruption import noise_seed
from diffloc.tracing.methods import TRACE_METHODS
from diffloc.tracing.sampler import generate, initial_latents, make_corruption, patched_generate
from diffloc.tracing.sweep import prepare
from diffloc.tracing.trace_config import TraceConfig

from .bench_memory import median_peak, mem_figures

Clock = Callable[[], float]


def _sweep_seconds(cfg: TraceConfig, ctx, clock: Clock = time.perf_counter) -> tuple[float, list]:
    method = TRACE_METHODS.get(cfg.method)
    units = method.plan(cfg, ctx.model, ctx.prompts, ctx.scfg.num_inference_steps)
    t = clock()
    tables = [method.run_unit(u, ctx, cfg)[0] for u in units]
    return clock() - t, tables


def _naive_seconds(cfg: TraceConfig, ctx, sample: int, clock: Clock = time.perf_counter) -> tuple[float, int]:
    """Seconds per naive row (one call each, clean + corrupted + that row), and the row count."""
    units = TRACE_METHODS.get("exact").plan(cfg, ctx.model, ctx.prompts, ctx.scfg.num_inference_steps)
    rows = [r for u in units for r in u.rows]
    pick = [rows[i] for i in np.linspace(0, len(rows) - 1, min(sample, len(rows))).round().astype(int)]
    prompt = ctx.prompts[0]
    corruption = make_corruption(ctx.model, prompt.positions(ctx.model.tokenizer),
                                 torch.Generator().manual_seed(noise_seed(cfg.seeds[0], 0)), cfg.noise_scale)
    t = clock()
    for r in pick:
        patched_generate(ctx.model, prompt.text, [r.restore], corruption, torch.Generator().manual_seed(cfg.seeds[0]), ctx.scfg)
    return (clock() - t) / len(pick), len(rows)


def _screen_mem(cfg: TraceConfig, ctx, repeats: int, peak: Callable = median_peak) -> dict:
    model, prompt = ctx.model, ctx.prompts[0]
    lat = initial_latents(model, torch.Generator().manual_seed(cfg.seeds[0]))
    method = TRACE_METHODS.get("atp")
    unit = method.plan(replace(cfg, method="atp"), model, ctx.prompts, ctx.scfg.num_inference_steps)[0]
    mem_screen = peak(lambda: method.run_unit(unit, ctx, replace(cfg, method="atp")), repeats)
    with torch.no_grad():
        mem_plain = peak(lambda: generate(model, [prompt.text], cfg=ctx.scfg, latents=lat), repeats)
    mem = mem_figures("screen", mem_screen, mem_plain)
    return {"peak_mem_ratio_screen": mem["ratio"], "peak_mem_mb_screen": mem["mb"], "peak_rss_mb_screen": mem["rss_mb"]}


def bench_screens(spec: str = "toy", model=None, scorer=None, attribute: str = "colour", naive_sample: int = 12,
                  repeats: int = 1, heads: bool = True, batch_size: int = 128, steps: int | None = None,
                  text_kinds: tuple[str, ...] | None = None, scorer_spec: str = "auto", device: str = "cpu",
                  dtype: str = "float32", clock: Clock = time.perf_counter, peak: Callable = median_peak) -> dict:
    """Time screens and exact sweeps of one prompt × seed (see the module docstring).

    ``text_kinds`` limits the text-encoder scope to some states (e.g. ``("attn",)``) where the
    full exact sweep would take too long; the screens then cover the same sites.
    """
    base = TraceConfig(model=spec, attribute=attribute, component="text_encoder", max_prompts=1, seeds=(0,),
                       batch_size=batch_size, num_inference_steps=steps, scorer=scorer_spec, device=device, dtype=dtype,
                       **({"text_kinds": tuple(text_kinds)} if text_kinds else {}))
    ctx = screen_context(base, model, scorer)
    scopes = screen_scopes(ctx.model, heads)
    out: dict = {"screen_over_exact": {}, "seconds": {}, "screen_scopes": list(scopes)}
    for scope, over in scopes.items():
        figs = scope_figures(replace(base, **over), ctx, scope, clock)
        for name, ratios in figs.pop("screen_over_exact").items():
            out["screen_over_exact"].setdefault(name, {}).update(ratios)
        out["seconds"].update(figs.pop("seconds"))
        out.update(figs)
    if "text_encoder" in scopes:
        out.update(text_figures(base, ctx, naive_sample, repeats, out["seconds"]["exact_text_encoder"], clock, peak))
    else:
        out.update(denoiser_figures(replace(base, **scopes["denoiser"]), ctx, repeats, peak))
    return out


def screen_scopes(model, heads: bool = True) -> dict[str, dict]:
    """The scopes :func:`bench_screens` times for ``model``, each as TraceConfig overrides (module docstring)."""
    if model.family.screen_scope == "text_encoder":
        return {"text_encoder": {}, **({"heads": {"component": "all", "heads": True}} if heads and _has_heads(model) else {})}
    den = {"component": "denoiser"}
    return {"denoiser": den, **({"heads": {**den, "heads": True}} if heads and model.sites.heads(model.family.denoiser) else {})}


def screen_context(base: TraceConfig, model=None, scorer=None):
    """The sweep context (model, scorer, prompts, sampler config) every timing below shares."""
    with tempfile.TemporaryDirectory() as tmp:
        runner, _ = prepare(base, Path(tmp), model, scorer)
        return runner.context()


def scope_figures(cfg: TraceConfig, ctx, scope: str, clock: Clock = time.perf_counter) -> dict:
    """Exact sweep, ``atp`` and ``ig`` over the sites of ``cfg`` (``scope`` names the figures)."""
    out: dict = {"screen_over_exact": {}, "seconds": {}}
    t_exact, tables = _sweep_seconds(cfg, ctx, clock)
    out["seconds"][f"exact_{scope}"] = round(t_exact, 3)
    out[f"rows_{scope}"] = int(sum(len(t) - 2 for t in tables))
    if scope == "text_encoder":
        noop = int(sum(t.skipped_noop.sum() for t in tables))
        dup = int(sum(t.skipped_duplicate.sum() for t in tables))
        out["skipped_noop"] = {"rows": out["rows_text_encoder"], "skipped": noop + dup, "noop": noop, "duplicate": dup}
    for name in [n for n in TRACE_METHODS.names() if scope in TRACE_METHODS.get(n).bench_scopes]:
        t_screen, _ = _sweep_seconds(replace(cfg, method=name), ctx, clock)
        out["seconds"][f"{name}_{scope}"] = round(t_screen, 3)
        out["screen_over_exact"].setdefault(name, {})[scope] = round(t_screen / t_exact, 4)
    return out


def text_figures(base: TraceConfig, ctx, naive_sample: int, repeats: int, t_exact_text: float,
                 clock: Clock = time.perf_counter, peak: Callable = median_peak) -> dict:
    """``naive_over_sweep_text``, the screen's peak memory, and the setup they were measured in."""
    per_row, n_rows = _naive_seconds(base, ctx, naive_sample, clock)
    out = {"naive_over_sweep_text": round(per_row * n_rows / t_exact_text, 2),
           "naive_text_estimated_s": round(per_row * n_rows, 2)}
    out.update(_screen_mem(base, ctx, repeats, peak))
    out["screen_setup"] = _setup(base, ctx, naive_sample)
    out["screen_targets"] = {"atp text_encoder": "<= 0.1", "atp heads": "<= 0.05", "naive_over_sweep_text": ">= 3",
                             "peak_mem_ratio_screen": "<= 3"}
    return out


def denoiser_figures(cfg: TraceConfig, ctx, repeats: int, peak: Callable = median_peak) -> dict:
    """DiT models: the screen's peak memory over the denoiser's sites, and the setup."""
    out = _screen_mem(cfg, ctx, repeats, peak)
    out["screen_setup"] = {k: v for k, v in _setup(cfg, ctx, None).items() if k != "text_kinds"}
    out["screen_targets"] = {"atp denoiser": "<= 0.1", "atp heads": "<= 0.05", "attn-contrib denoiser": "<= 0.02",
                             "peak_mem_ratio_screen": "<= 3"}
    return out


def _setup(cfg: TraceConfig, ctx, naive_sample: int | None) -> dict:
    return {"model": ctx.model.name, "attribute": cfg.attribute, "prompt": ctx.prompts[0].marked,
            "steps": ctx.scfg.num_inference_steps, "ig_steps": _ig_steps(cfg), "naive_sample": naive_sample,
            "text_kinds": list(cfg.text_kinds), "batch_size": cfg.batch_size,
            "device": str(ctx.model.device), "threads": torch.get_num_threads()}


def _ig_steps(base: TraceConfig) -> int | None:
    """The ``ig`` screen's path points, from its own options (``base.method_options`` when base is an ig sweep)."""
    ig = TRACE_METHODS.get("ig")
    cfg = base if TRACE_METHODS.get(base.method) is ig else replace(base, method="ig", method_options={})
    return getattr(ig.options(cfg), "ig_steps", None)


def _has_heads(model) -> bool:
    return bool(getattr(model.sites, "heads", None))

"""Full-size models on one GPU, random weights: the sweep and screen benchmarks of docs/gpu_runbook.md.

Usage::

    python -m experiments.gpu_bench --out results/reference/gpu_bench --budget 420          # on a GPU machine
    python -m experiments.gpu_bench --family random-sd3 --family random-flux@4 --dtype bfloat16 \
        --out results/reference/gpu_bench_dit --budget 540                              # the DiTs at 1024²
    python -m experiments.gpu_bench --family tiny-sd1 --family tiny-sdxl --device cpu --dtype float32 \
        --scorer ViT-B-32/random --out /tmp/gb                                          # the same code on the CPU
    python -m experiments.gpu_bench --family tiny-sd3 --device cpu --dtype float32 --steps 1 --scorer toy --out /tmp/gb

A sweep's speed and memory depend on the shapes, not the weights, so the published configs are
built with random weights (``random-sd1``, ``random-sdxl``; ``random-sd3`` = SD3-medium's MM-DiT,
``random-flux`` = FLUX.1-dev, ``random-pixart`` = PixArt-Σ XL, each at its native 1024²) and
scored by a random-weight CLIP (``ViT-L-14-336/random``). Stages run in priority order, each
one's figures written to ``<out>/<family>.json`` as soon as it ends (a run cut short keeps what
it measured):

1. ``trace``: :func:`diffloc.bench_trace.bench_trace` (sweep over plain, naive over sweep, peak
   memory above the weights, ms per image at the sweep's batch); ``weights_mb`` and ``pixels``
   beside it.
2. ``screens_text`` (UNet models) / ``screens_denoiser`` (DiT models): ``atp`` and ``ig`` against
   the exact sweep of one prompt × seed over the text encoder's states (with the no-op skipping)
   or over every block state of the denoiser, and the screen's peak memory
   (:mod:`diffloc.bench_screens`, :func:`~diffloc.bench_screens.screen_scopes`).
3. ``screens_heads``: the same over every attention head (UNet: text encoder and UNet; DiT: the
   denoiser's sites and heads).

A stage whose estimated time (its rows × the measured time per image) exceeds the budget left
is narrowed to the attention states (``text_kinds=("attn",)``, text scope) or skipped, and the
file says so.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from diffloc.tracing.screens import IgOptions

IG_STEPS = IgOptions().ig_steps  # the ig screen's default points on the path

STEPS = {"random-sd1": 20, "random-sd2": 20, "random-sdxl": 10, "random-sd3": 10, "random-flux": 4, "random-pixart": 10}
ROWS = {"random-sd1": 32, "random-sd2": 32, "random-sdxl": 8, "random-sd3": 8, "random-flux": 4, "random-pixart": 16}
STAGES = ("trace", "screens_text", "screens_denoiser", "screens_heads")


def _write(out: Path, family: str, figures: dict) -> None:
    path = out / f"{family}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures, indent=1, default=str))
    os.replace(tmp, path)


def _rows(cfg, ctx) -> int:
    from diffloc.tracing.methods import TRACE_METHODS

    units = TRACE_METHODS.get("exact").plan(cfg, ctx.model, ctx.prompts, ctx.scfg.num_inference_steps)
    return sum(len(u.rows) for u in units)


def _stage(figures: dict, name: str, fn) -> None:
    t = time.perf_counter()
    try:
        figures[name] = fn()
    except Exception as err:  # a failed stage is recorded; the next one still runs
        figures[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
    figures[name + "_s"] = round(time.perf_counter() - t, 1)
    print(f"  {name}: {time.perf_counter() - t:.1f} s", flush=True)


def run_family(spec: str, out: Path, deadline: float, device: str, dtype: str, steps: int | None,
               scorer_spec: str = "ViT-L-14-336/random", stages: tuple[str, ...] = STAGES) -> dict:
    """Every stage for one model spec, within ``deadline`` (a ``time.monotonic()`` value)."""
    from diffloc.bench_screens import screen_context
    from diffloc.tracing.scoring import load_scorer
    from diffloc.tracing.trace_config import TraceConfig

    steps = steps or STEPS.get(spec, 10)
    figures, model = _build(spec, device, dtype, steps, scorer_spec)
    scorer = load_scorer(scorer_spec, device=device)
    _trace_stage(figures, spec, model, steps, stages, device)
    if figures["dtype"] != dtype:  # the trace stage fell back to bfloat16
        dtype, model = figures["dtype"], figures.pop("_model")
    figures.pop("_model", None)
    _write(out, spec, figures)
    ms = (figures["trace"].get("ms_per_image") or 1000.0) / 1000
    base = TraceConfig(model=spec, attribute="colour", component="text_encoder", max_prompts=1, seeds=(0,),
                       batch_size=64, num_inference_steps=steps, device=device, dtype=dtype)
    ctx = screen_context(base, model, scorer)
    for name, cfg in _screen_stages(base, model, stages):
        _screen_stage(figures, name, cfg, ctx, ms, deadline)
        _write(out, spec, figures)
    _write(out, spec, figures)
    model = ctx = None  # free the card before the next spec
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return figures


def _build(spec: str, device: str, dtype: str, steps: int, scorer_spec: str) -> tuple[dict, object]:
    from diffloc.tracing.models import load_model

    t0 = time.perf_counter()
    model = load_model(spec, dtype=dtype, device=device)
    figures: dict = {"model": spec, "dtype": dtype, "steps": steps, "scorer": scorer_spec, "build_s": round(time.perf_counter() - t0, 1),
                     "versions": {"torch": torch.__version__, **_versions()},
                     "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "pixels": model.sample_size * (8 if model.vae is not None else 1), "weights_mb": _weights_mb(model)}
    print(f"{spec}: built in {figures['build_s']} s ({figures['weights_mb']} MB of weights)", flush=True)
    return figures, model


def _weights_mb(model) -> float:
    parts = [*model.modules.values(), *([model.vae] if model.vae is not None else [])]
    return round(sum(p.numel() * p.element_size() for m in parts for p in m.parameters()) / 2**20, 1)


def _trace_stage(figures: dict, spec: str, model, steps: int, stages: tuple[str, ...], device: str) -> None:
    """``trace`` (or, without it, the time per image the estimates need); float16 overflow: again in bfloat16."""
    from diffloc.bench_trace import bench_trace
    from diffloc.tracing.models import load_model

    if "trace" not in stages:  # time per image for the estimates below, from one plain batch of 16
        figures["trace"] = {"ms_per_image": _plain_ms(model, steps)}
        return
    _stage(figures, "trace", lambda: bench_trace(spec, rows=ROWS.get(spec, 8), repeats=1, model=model, steps=steps))
    if "NonFiniteError" in str(figures["trace"].get("error", "")) and figures["dtype"] == "float16":
        # random weights can overflow float16 where trained ones do not; bfloat16 has float32's range
        figures["float16_error"], figures["dtype"] = figures["trace"]["error"], "bfloat16"
        model = figures["_model"] = load_model(spec, dtype="bfloat16", device=device)
        _stage(figures, "trace", lambda: bench_trace(spec, rows=ROWS.get(spec, 8), repeats=1, model=model, steps=steps))


def _screen_stages(base, model, stages: tuple[str, ...]) -> list[tuple[str, object]]:
    """(stage name, sweep config) of the screen scopes this model has (:func:`diffloc.bench_screens.screen_scopes`)."""
    from diffloc.bench_screens import screen_scopes

    named = {"text_encoder": "screens_text", "denoiser": "screens_denoiser", "heads": "screens_heads"}
    return [(named[scope], replace(base, **over)) for scope, over in screen_scopes(model).items() if named[scope] in stages]


def _screen_stage(figures: dict, name: str, cfg, ctx, ms: float, deadline: float) -> None:
    """One screen stage, narrowed or skipped when its estimate exceeds the time left."""
    from diffloc.bench_screens import denoiser_figures, scope_figures, text_figures

    left = deadline - time.monotonic()
    est = 1.15 * ms * _rows(cfg, ctx) + 8 * ms * IG_STEPS  # exact rows; ig ≈ 8 images' time per pass
    if est > left and name == "screens_text":
        cfg = replace(cfg, text_kinds=("attn",))
        est = 1.15 * ms * _rows(cfg, ctx) + 8 * ms * IG_STEPS
        figures["screens_text_narrowed"] = "text_kinds=('attn',): the three kinds' sweep would not fit the budget"
    if est > left:
        figures[name] = {"skipped": f"estimated {est:.0f} s > {left:.0f} s left"}
        return
    scope = name.removeprefix("screens_").replace("text", "text_encoder")

    def measure():
        got = scope_figures(cfg, ctx, scope)
        if scope == "text_encoder":
            got.update(text_figures(cfg, ctx, 8, 1, got["seconds"]["exact_text_encoder"]))
        elif scope == "denoiser":
            got.update(denoiser_figures(cfg, ctx, 1))
        return got

    _stage(figures, name, measure)


@torch.no_grad()
def _plain_ms(model, steps: int) -> float:
    from diffloc.bench_trace import _time
    from diffloc.tracing.sampler import SamplerConfig, generate

    cfg = SamplerConfig.for_model(model, num_inference_steps=steps)
    seconds = _time(lambda: generate(model, ["a photo of a red car"] * 16, torch.Generator().manual_seed(0), cfg), 1)
    return round(1000 * seconds / 16, 2)


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("diffusers", "transformers", "open_clip_torch")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", action="append",
                    help="model specs in order, SPEC or SPEC@STEPS (default: random-sd1, random-sdxl; "
                         "DiTs: random-sd3, random-flux, random-pixart)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all families together")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--steps", type=int, default=None,
                    help="denoising steps (default: STEPS, e.g. 20 for SD 1.x, 10 for SDXL and SD3, 4 for FLUX)")
    ap.add_argument("--stage", action="append", choices=STAGES, help="stages to run (default: all)")
    ap.add_argument("--scorer", default="ViT-L-14-336/random", help="open_clip name/pretrained ('random': random weights)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    families = args.family or ["random-sd1", "random-sdxl"]
    start = time.monotonic()
    for k, spec in enumerate(families):
        share = (args.budget - (time.monotonic() - start)) / (len(families) - k)  # what is left, split evenly
        spec, _, own_steps = spec.partition("@")  # random-sdxl@5: this family at 5 steps
        run_family(spec, args.out, time.monotonic() + share, args.device, args.dtype, int(own_steps) if own_steps else args.steps, args.scorer,
                   tuple(args.stage or STAGES))
    print(f"done in {time.monotonic() - start:.0f} s -> {args.out}", flush=True)


if __name__ == "__main__":
    main()

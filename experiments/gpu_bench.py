"""Full-size Stable Diffusion on one GPU, random weights: the sweep and screen benchmarks of README's GPU runbook.

Usage::

    python -m experiments.gpu_bench --out results/reference/gpu_bench --budget 420          # on a GPU machine
    python -m experiments.gpu_bench --family tiny-sd1 --family tiny-sdxl --device cpu --dtype float32 \
        --scorer ViT-B-32/random --out /tmp/gb                                          # the same code on the CPU

A sweep's speed and memory depend on the shapes, not the weights, so the published configs are
built with random weights (``random-sd1``, ``random-sdxl``) and scored by a random-weight CLIP
(``ViT-L-14-336/random``). Stages run in priority order, each one's figures written to
``<out>/<family>.json`` as soon as it ends (a run cut short keeps what it measured):

1. ``trace``: :func:`diffloc.bench_trace.bench_trace` (sweep over plain, naive over sweep, peak
   memory, images per second at the sweep's batch).
2. ``screens_text``: ``atp`` and ``ig`` against the exact text-encoder sweep of one prompt × seed,
   the no-op skipping and the screen's peak memory (:mod:`diffloc.bench_screens`).
3. ``screens_heads``: the same over every attention head (text encoder and UNet).

A stage whose estimated time (its rows × the measured time per image) exceeds the budget left
is narrowed to the attention states (``text_kinds=("attn",)``) or skipped, and the file says so.
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

STEPS = {"random-sd1": 20, "random-sd2": 20, "random-sdxl": 10}
ROWS = {"random-sd1": 32, "random-sd2": 32, "random-sdxl": 8}
STAGES = ("trace", "screens_text", "screens_heads")


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
    from diffloc.bench_screens import scope_figures, screen_context, text_figures
    from diffloc.bench_trace import bench_trace
    from diffloc.tracing.models import load_model
    from diffloc.tracing.scoring import load_scorer
    from diffloc.tracing.trace_config import TraceConfig

    steps = steps or STEPS.get(spec, 10)
    t0 = time.perf_counter()
    model = load_model(spec, dtype=dtype, device=device)
    scorer = load_scorer(scorer_spec, device=device)
    figures: dict = {"model": spec, "dtype": dtype, "steps": steps, "scorer": scorer_spec, "build_s": round(time.perf_counter() - t0, 1),
                     "versions": {"torch": torch.__version__, **_versions()},
                     "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print(f"{spec}: built in {figures['build_s']} s", flush=True)
    if "trace" in stages:
        _stage(figures, "trace", lambda: bench_trace(spec, rows=ROWS.get(spec, 8), repeats=1, model=model, steps=steps))
    else:  # time per image for the estimates below, from one plain batch of 16
        figures["trace"] = {"ms_per_image": _plain_ms(model, steps)}
    if "NonFiniteError" in str(figures["trace"].get("error", "")) and dtype == "float16":
        # random weights can overflow float16 where trained ones do not; bfloat16 has float32's range
        figures["float16_error"], dtype = figures["trace"]["error"], "bfloat16"
        model = load_model(spec, dtype=dtype, device=device)
        figures["dtype"] = dtype
        _stage(figures, "trace", lambda: bench_trace(spec, rows=ROWS.get(spec, 8), repeats=1, model=model, steps=steps))
    _write(out, spec, figures)
    ms = (figures["trace"].get("ms_per_image") or 1000.0) / 1000
    base = TraceConfig(model=spec, attribute="colour", component="text_encoder", max_prompts=1, seeds=(0,),
                       batch_size=64, num_inference_steps=steps, device=device, dtype=dtype)
    ctx = screen_context(base, model, scorer)
    for name, cfg in (("screens_text", base), ("screens_heads", replace(base, component="all", heads=True))):
        if name not in stages:
            continue
        left = deadline - time.monotonic()
        est = 1.15 * ms * _rows(cfg, ctx) + 8 * ms * IG_STEPS  # exact rows; ig ≈ 8 images' time per pass
        if est > left and name == "screens_text":
            cfg = replace(cfg, text_kinds=("attn",))
            est = 1.15 * ms * _rows(cfg, ctx) + 8 * ms * IG_STEPS
            figures["screens_text_narrowed"] = "text_kinds=('attn',): the three kinds' sweep would not fit the budget"
        if est > left:
            figures[name] = {"skipped": f"estimated {est:.0f} s > {left:.0f} s left"}
            continue
        scope = "text_encoder" if name == "screens_text" else "heads"

        def measure(cfg=cfg, scope=scope):
            got = scope_figures(cfg, ctx, scope)
            if scope == "text_encoder":
                got.update(text_figures(cfg, ctx, 8, 1, got["seconds"]["exact_text_encoder"]))
            return got

        _stage(figures, name, measure)
        _write(out, spec, figures)
    _write(out, spec, figures)
    model = ctx = None  # free the card before the next spec
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return figures


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
                    help="model specs in order, SPEC or SPEC@STEPS (default: random-sd1, random-sdxl)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all families together")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20 for SD 1.x/2.x, 10 for SDXL)")
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

"""``diffloc trace``, ``diffloc plot`` and ``diffloc bench trace``.

Usage::

    diffloc trace --model toy --attribute colour --out results/colour
    diffloc trace --model toy --attribute count --component unet --step-window 0:10 --step-window 10:20
    diffloc trace --model toy --attribute colour --executor ray --workers 2 --out results/colour
    diffloc trace --model toy --attribute colour --method ig --confirm-top 8 --out results/colour_ig
    diffloc trace --model toy --attribute colour --restore suffix --bootstrap 1000 --out results/colour_suffix
    diffloc trace --model toy --attribute style --method crossattn-swap --window 2 --out results/style_swap
    diffloc trace --model toy --attribute count --component unet --until-stable 0.9 --max-seeds 8 --out results/count
    diffloc plot results/colour --uncertainty
    diffloc bench trace --out results/bench_trace.json
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from diffloc.tracing.errors import UsageError

from .common import progress_bar, say


def _windows(specs: list[str] | None) -> tuple[tuple[int, int], ...] | None:
    if not specs:
        return None
    out = []
    for s in specs:
        try:
            a, b = (int(x) for x in s.split(":"))
        except ValueError:
            raise UsageError(f"bad step window {s!r}; expected START:END, e.g. 0:10") from None
        out.append((a, b))
    return tuple(out)


def trace(
    model: str = typer.Option("toy", "--model", "-m", help="Model spec (toy, tiny-sd1, folder, file, hub id)."),
    attribute: str = typer.Option(..., "--attribute", "-a", help="object, colour, style, viewpoint, count or action."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (resumes if it holds the same sweep)."),
    component: str = typer.Option("all", help="text_encoder, unet or all."),
    prompt_file: Optional[Path] = typer.Option(None, help="Marked prompts, one per line: 'a photo of a [red] circle'."),
    max_prompts: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    seeds: List[int] = typer.Option([0, 1], "--seed", help="Initial-noise seeds (repeat the flag)."),
    noise_samples: int = typer.Option(1, help="Corruption noise samples per prompt and seed."),
    noise_scale: float = typer.Option(3.0, help="Noise std in units of the token-embedding std σ (ROME: 3)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model's)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default: the model's)."),
    layer_window: int = typer.Option(1, help="Text encoder: restore this many adjacent layers per row (ROME uses 10)."),
    step_window: Optional[List[str]] = typer.Option(None, help="UNet: restore only in steps START:END (repeat for several)."),
    batch_size: int = typer.Option(64, help="Restored rows per batched sampler call."),
    scorer: str = typer.Option("auto", help="CLIP scorer: auto (toy for the toy world, else ViT-L-14-336/openai), toy, or open_clip name/pretrained."),
    executor: str = typer.Option("local", help="local (in-process) or ray (pip install 'diffloc[ray]')."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local one."),
    workers: int = typer.Option(2, help="Ray workers, one model each (executor ray)."),
    threshold: float = typer.Option(0.5, help="Mean indirect effect a site needs to be named causal."),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    method: str = typer.Option("exact", help="exact (restore each site), atp or ig (gradient screens), crossattn-swap (LocoGen)."),
    ig_steps: int = typer.Option(8, help="Method ig: points on the path from corrupted to clean."),
    confirm_top: int = typer.Option(0, help="Screens: also trace the K best-screened sites exactly (causal_sites.json names only those)."),
    restore: str = typer.Option("token", help="Text encoder: token (one position), suffix (it and every later one) or span (attribute tokens through an end)."),
    span_end: Optional[int] = typer.Option(None, help="Restore span: the one end token (-1: through all padding); default every end."),
    heads: bool = typer.Option(False, help="Also trace every attention head as its own site."),
    text_kind: List[str] = typer.Option(["hidden", "attn", "mlp"], "--text-kind", help="Text-encoder states to restore: hidden, attn, mlp (repeat the flag)."),
    window: int = typer.Option(2, help="Method crossattn-swap: cross-attention layers per sliding window (LocoGen: 2)."),
    swap: str = typer.Option("value", help="Method crossattn-swap: the altered prompt sets another value (value) or drops it (remove)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples of prompt x seed pairs for the 95% intervals."),
    until_stable: Optional[float] = typer.Option(None, help="Add seeds in rounds until the split-half Spearman of real effects reaches this, in (0, 1]."),
    max_seeds: int = typer.Option(8, help="With --until-stable: stop at this many seeds."),
    plot: bool = typer.Option(True, help="Draw the figures when the sweep ends."),
) -> None:
    """Causal tracing sweep for one attribute: clean, corrupted and restored runs, scored by CLIP.

    Example: diffloc trace --model toy --attribute colour --out results/colour
    """
    from diffloc.tracing.prompts import load_prompt_file
    from diffloc.tracing.sweep import run_sweep
    from diffloc.tracing.trace_config import TraceConfig

    prompts = tuple(p.marked for p in load_prompt_file(prompt_file)) if prompt_file else ()
    cfg = TraceConfig(model=model, attribute=attribute, component=component, prompts=prompts, max_prompts=max_prompts,
                      seeds=tuple(seeds), noise_samples=noise_samples, noise_scale=noise_scale, num_inference_steps=steps,
                      guidance_scale=guidance, layer_window=layer_window, step_windows=_windows(step_window),
                      batch_size=batch_size, scorer=scorer, executor=executor, threshold=threshold, dtype=dtype, device=device,
                      method=method, ig_steps=ig_steps, confirm_top=confirm_top, restore=restore, span_end=span_end, heads=heads, text_kinds=tuple(text_kind),
                      window=window, swap=swap, bootstrap=bootstrap)
    executor_kw = dict(address=ray_address, num_workers=workers) if executor == "ray" else None
    if executor == "ray":
        from diffloc.tracing.executors import import_ray

        import_ray()  # one-line error before any model loads when Ray is missing
    if until_stable is None:
        table = run_sweep(cfg, out, progress=progress_bar(f"trace {attribute}"), executor_kw=executor_kw)
    else:
        from diffloc.tracing.stable import run_until_stable

        table, history = run_until_stable(cfg, out, target=until_stable, max_seeds=max_seeds,
                                          progress=progress_bar(f"trace {attribute}"), executor_kw=executor_kw)
        say(f"stability: {history[-1]}")
    say(f"{len(table)} rows -> {out / 'trace.parquet'}")
    say(f"causal sites -> {out / 'causal_sites.json'}")
    if plot:
        from diffloc.plots import plot_run

        paths = plot_run(out, uncertainty=True)
        say(f"figures -> {out / 'figures'} ({len(paths)} files)")


def plot(run: Path = typer.Argument(..., help="A trace output folder."), metric: str = typer.Option("clip", help="clip or gt."),
         uncertainty: bool = typer.Option(False, help="Also draw each heatmap's 95% interval width.")) -> None:
    """Redraw a run's figures from its trace.parquet alone.

    Example: diffloc plot results/colour
    """
    from diffloc.plots import plot_run

    if metric not in ("clip", "gt"):
        raise UsageError(f"unknown metric {metric!r}; allowed: clip, gt")
    for p in plot_run(run, metric, uncertainty=uncertainty):
        say(str(p))


def bench_trace(
    out: Path = typer.Option(..., "--out", "-o", help="JSON file to write."),
    model: str = typer.Option("toy", "--model", "-m", help="Any model spec; random-sd1 / random-sdxl: full size, random weights."),
    rows: int = typer.Option(32, help="Restored rows per batch."),
    repeats: int = typer.Option(3, help="Timed repeats (median is reported)."),
    screens: bool = typer.Option(True, help="Also time gradient screens against exact text-encoder and head sweeps."),
    heads: bool = typer.Option(True, help="Screens: also time every attention head as a site."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model's)."),
    scorer: str = typer.Option("auto", help="Screens' CLIP scorer; ViT-L-14-336/random for random-weight models."),
    screen_batch: int = typer.Option(128, help="Screens: restored rows per sampler call of the exact sweeps."),
) -> None:
    """Sweep cost against plain batched generation, and screens against exact sweeps, as ratios of one run.

    Example: diffloc bench trace --out results/bench_trace.json
    Example: diffloc bench trace --model random-sd1 --device cuda --dtype float16 --steps 20 --scorer ViT-L-14-336/random --out sd1.json
    """
    from diffloc.bench_trace import bench_trace as run
    from diffloc.tracing.io import write_plain_json
    from diffloc.tracing.models import load_model

    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    loaded = load_model(model, dtype=dtype, device=device)
    result = run(model, rows=rows, repeats=repeats, model=loaded, steps=steps)
    if screens:
        from diffloc.bench_screens import bench_screens

        result.update(bench_screens(model, model=loaded, heads=heads, batch_size=screen_batch, steps=steps,
                                    scorer_spec=scorer, device=device, dtype=dtype))
    write_plain_json(result, out)
    for k, v in result.items():
        if not isinstance(v, dict):
            say(f"{k}: {v}")
    say(f"-> {out}")

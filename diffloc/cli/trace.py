"""``diffloc trace``, ``diffloc plot`` and ``diffloc bench trace``.

Usage::

    diffloc trace --model toy --attribute colour --out results/colour
    diffloc trace --model toy --attribute count --component unet --step-window 0:10 --step-window 10:20
    diffloc trace --model toy --attribute colour --executor ray --workers 2 --out results/colour
    diffloc plot results/colour
    diffloc bench trace --out results/bench_trace.json
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tracing.errors import UsageError

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
    plot: bool = typer.Option(True, help="Draw the figures when the sweep ends."),
) -> None:
    """Causal tracing sweep for one attribute: clean, corrupted and restored runs, scored by CLIP.

    Example: diffloc trace --model toy --attribute colour --out results/colour
    """
    from tracing.prompts import load_prompt_file
    from tracing.sweep import run_sweep
    from tracing.trace_config import TraceConfig

    prompts = tuple(p.marked for p in load_prompt_file(prompt_file)) if prompt_file else ()
    cfg = TraceConfig(model=model, attribute=attribute, component=component, prompts=prompts, max_prompts=max_prompts,
                      seeds=tuple(seeds), noise_samples=noise_samples, noise_scale=noise_scale, num_inference_steps=steps,
                      guidance_scale=guidance, layer_window=layer_window, step_windows=_windows(step_window),
                      batch_size=batch_size, scorer=scorer, executor=executor, threshold=threshold, dtype=dtype, device=device)
    executor_kw = dict(address=ray_address, num_workers=workers) if executor == "ray" else None
    if executor == "ray":
        from tracing.executors import import_ray

        import_ray()  # one-line error before any model loads when Ray is missing
    table = run_sweep(cfg, out, progress=progress_bar(f"trace {attribute}"), executor_kw=executor_kw)
    say(f"{len(table)} rows -> {out / 'trace.parquet'}")
    say(f"causal sites -> {out / 'causal_sites.json'}")
    if plot:
        from diffloc.plots import plot_run

        paths = plot_run(out)
        say(f"figures -> {out / 'figures'} ({len(paths)} files)")


def plot(run: Path = typer.Argument(..., help="A trace output folder."), metric: str = typer.Option("clip", help="clip or gt.")) -> None:
    """Redraw a run's figures from its trace.parquet alone.

    Example: diffloc plot results/colour
    """
    from diffloc.plots import plot_run

    if metric not in ("clip", "gt"):
        raise UsageError(f"unknown metric {metric!r}; allowed: clip, gt")
    for p in plot_run(run, metric):
        say(str(p))


def bench_trace(
    out: Path = typer.Option(..., "--out", "-o", help="JSON file to write."),
    model: str = typer.Option("toy", "--model", "-m"),
    rows: int = typer.Option(32, help="Restored rows per batch."),
    repeats: int = typer.Option(3, help="Timed repeats (median is reported)."),
) -> None:
    """Sweep cost against plain batched generation: sweep_over_plain, naive_over_sweep, peak_mem_ratio.

    Example: diffloc bench trace --out results/bench_trace.json
    """
    from diffloc.bench_trace import bench_trace as run
    from tracing.io import write_plain_json

    result = run(model, rows=rows, repeats=repeats)
    write_plain_json(result, out)
    for k, v in result.items():
        if not isinstance(v, dict):
            say(f"{k}: {v}")
    say(f"-> {out}")

"""``diffloc trace``, ``diffloc plot`` and ``diffloc bench trace``.

Usage::

    diffloc trace --model toy --attribute colour --out results/colour
    diffloc trace --model toy --attribute count --component unet --step-window 0:10 --step-window 10:20
    diffloc trace --model toy --attribute colour --executor ray --workers 2 --out results/colour
    diffloc trace --model toy --attribute colour --method ig --confirm-top 8 --out results/colour_ig
    diffloc trace --model toy --attribute colour --restore suffix --bootstrap 1000 --out results/colour_suffix
    diffloc trace --model toy --attribute style --method crossattn-swap --window 2 --out results/style_swap
    diffloc trace --model tiny-sd3 --attribute colour --method crossattn-swap --swap-input text-stream --scorer toy --out results/sd3_stream
    diffloc trace --model tiny-sd3 --attribute colour --text-encoder text_encoder_3 --scorer toy --out results/sd3_t5
    diffloc trace --model toy --attribute count --component unet --until-stable 0.9 --max-seeds 8 --out results/count
    diffloc trace --model toy --attribute colour --noise-scale auto --out results/colour_auto
    diffloc plot results/colour --uncertainty
    diffloc bench trace --out results/bench_trace.json
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, List, Optional

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


def _noise_scale(spec: str) -> float | str:
    """``--noise-scale``: a number of σ, or any other word as given (TraceConfig allows ``auto`` and names what is allowed)."""
    try:
        return float(spec)
    except (TypeError, ValueError):
        return spec


#: fields whose CLI value is parsed before it reaches TraceConfig (and its CLI type)
PARSERS = {"step_windows": (Optional[List[str]], _windows), "noise_scale": (str, _noise_scale)}


def _cli_type(hint: Any) -> Any:
    """The typer type of a config field's type hint: tuples become lists, ``X | None`` Optional[X]."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint):
        return Optional[_cli_type(args[0])]
    if typing.get_origin(hint) is tuple:
        return List[args[0]]
    return hint


def _flag(name: str, meta: dict) -> list[str]:
    return [meta.get("flag", "--" + name.replace("_", "-")), *([meta["short"]] if "short" in meta else [])]


def config_parameters() -> list[inspect.Parameter]:
    """One typer option per TraceConfig field (name, default and help from the dataclass)."""
    from diffloc.tracing.trace_config import TraceConfig

    hints = typing.get_type_hints(TraceConfig)
    params = []
    for f in fields(TraceConfig):
        meta = dict(f.metadata)
        if meta.get("cli", True) is False:
            continue
        kind, _ = PARSERS.get(f.name, (_cli_type(hints[f.name]), None))
        default = ... if meta.get("required") else (list(f.default) if isinstance(f.default, tuple) else f.default)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                        default=typer.Option(default, *_flag(f.name, meta), help=meta.get("help", ""))))
    return params


def method_parameters() -> tuple[list[inspect.Parameter], dict[str, list[str]]]:
    """One typer option per field of every trace method's options dataclass (default None: the method's own)."""
    from diffloc.tracing.methods import TRACE_METHODS

    owners: dict[str, list[str]] = {}
    found: dict[str, Any] = {}
    for name in TRACE_METHODS.names():
        opts = TRACE_METHODS.get(name).Options
        hints = typing.get_type_hints(opts)
        for f in fields(opts):
            owners.setdefault(f.name, []).append(name)
            found.setdefault(f.name, (f, hints[f.name]))
    params = []
    for key, (f, hint) in found.items():
        default = f.default if f.default is not MISSING else None
        help = f"Method {', '.join(owners[key])}: {f.metadata.get('help', '')} Default: {default}."
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[hint],
                                        default=typer.Option(None, "--" + key.replace("_", "-"), help=help)))
    return params, owners


def _cli_only() -> list[inspect.Parameter]:
    def p(name, kind, option):
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=option)

    return [
        p("out", Path, typer.Option(..., "--out", "-o", help="Output folder (resumes if it holds the same sweep).")),
        p("prompt_file", Optional[Path], typer.Option(None, help="Marked prompts, one per line: 'a photo of a [red] circle'.")),
        p("ray_address", Optional[str], typer.Option(None, help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local one.")),
        p("workers", int, typer.Option(2, help="Ray workers, one model each (executor ray).")),
        p("until_stable", Optional[float], typer.Option(None, help="Add seeds in rounds until --min-informative informative pairs exist and the split-half "
                                                                   "Spearman of real effects over them reaches this, in (0, 1].")),
        p("max_seeds", int, typer.Option(8, help="With --until-stable: stop at this many seeds.")),
        p("plot", bool, typer.Option(True, help="Draw the figures when the sweep ends.")),
    ]


def build_config(values: dict, owners: dict[str, list[str]]):
    """A TraceConfig (and the method's validated options) from the parsed options, before any work starts."""
    from diffloc.tracing.methods import TRACE_METHODS
    from diffloc.tracing.prompts import load_prompt_file
    from diffloc.tracing.trace_config import TraceConfig

    given = {k: values.pop(k) for k in owners if values.get(k) is not None}
    for k in owners:
        values.pop(k, None)
    method = values["method"]
    for k in given:
        if method not in owners[k]:
            raise UsageError(f"--{k.replace('_', '-')} is an option of method {', '.join(owners[k])}; --method {method} has none")
    for name, (_, parse) in PARSERS.items():
        values[name] = parse(values.get(name))
    prompt_file = values.pop("prompt_file", None)
    prompts = tuple(p.marked for p in load_prompt_file(prompt_file)) if prompt_file else ()
    cfg_keys = {f.name for f in fields(TraceConfig)}
    cfg = TraceConfig(prompts=prompts, method_options=given,
                      **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in cfg_keys})
    TRACE_METHODS.get(cfg.method).options(cfg)  # one-line error for a bad option value
    return cfg


def trace(**values: Any) -> None:
    """Causal tracing sweep for one attribute: clean, corrupted and restored runs, scored by CLIP.

    Example: diffloc trace --model toy --attribute colour --out results/colour
    """
    from diffloc.tracing.sweep import run_sweep

    out, until_stable, max_seeds, plot = values.pop("out"), values.pop("until_stable"), values.pop("max_seeds"), values.pop("plot")
    ray_address, workers = values.pop("ray_address"), values.pop("workers")
    cfg = build_config(values, method_parameters()[1])
    executor_kw = dict(address=ray_address, num_workers=workers) if cfg.executor == "ray" else None
    if cfg.executor == "ray":
        from diffloc.tracing.executors import import_ray

        import_ray()  # one-line error before any model loads when Ray is missing
    bar = progress_bar(f"trace {cfg.attribute}")
    if until_stable is None:
        table = run_sweep(cfg, out, progress=bar, executor_kw=executor_kw)
    else:
        from diffloc.tracing.stable import run_until_stable

        table, history = run_until_stable(cfg, out, target=until_stable, max_seeds=max_seeds, progress=bar, executor_kw=executor_kw)
        say(f"stability: {history[-1]}")
    say(f"{len(table)} rows -> {out / 'trace.parquet'}")
    say(f"causal sites -> {out / 'causal_sites.json'}")
    if plot:
        from diffloc.plots import plot_run

        paths = plot_run(out, uncertainty=True)
        say(f"figures -> {out / 'figures'} ({len(paths)} files)")


def _signature() -> inspect.Signature:
    cfg = config_parameters()
    first = [q for q in cfg if q.name in ("model", "attribute")]
    return inspect.Signature([*first, _cli_only()[0], *[q for q in cfg if q not in first], *method_parameters()[0], *_cli_only()[1:]])


trace.__signature__ = _signature()


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
    model: str = typer.Option("toy", "--model", "-m", help="Any model spec; random-sd1 / random-sdxl / random-sd3 / random-flux: full size, random weights; tiny-sd3 / tiny-flux: the CPU replicas (--scorer toy)."),
    rows: int = typer.Option(32, help="Restored rows per batch."),
    repeats: int = typer.Option(3, help="Timed repeats (median is reported)."),
    screens: bool = typer.Option(True, help="Also time gradient screens against exact sweeps: of the text encoder (UNet models) or of every denoiser block state (DiT models)."),
    heads: bool = typer.Option(True, help="Screens: also time every attention head as a site (DiT: the denoiser's heads)."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model's)."),
    scorer: str = typer.Option("auto", help="Screens' CLIP scorer; ViT-L-14-336/random for random-weight models."),
    screen_batch: int = typer.Option(128, help="Screens: restored rows per sampler call of the exact sweeps."),
) -> None:
    """Sweep cost against plain batched generation, and screens against exact sweeps, as ratios of one run.

    Example: diffloc bench trace --out results/bench_trace.json
    Example: diffloc bench trace --model random-sd1 --device cuda --dtype float16 --steps 20 --scorer ViT-L-14-336/random --out sd1.json
    Example: diffloc bench trace --model tiny-sd3 --scorer toy --steps 4 --repeats 1 --no-heads --out sd3_cpu.json
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

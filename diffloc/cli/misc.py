"""``diffloc sites``, ``diffloc report`` and ``diffloc demo``.

Usage::

    diffloc sites --model tiny-sd1 --component unet
    diffloc sites --model toy --heads
    diffloc report results/colour results/eval --out report.html
    diffloc demo --out results/demo
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from diffloc.tracing.errors import UsageError
from diffloc.tracing.families import denoiser_slots

from .common import progress_bar, say


def sites(
    model: str = typer.Option("toy", "--model", "-m", help="Model spec: toy, tiny-sd1, tiny-sd2, tiny-sdxl, a folder, a file or a hub id."),
    component: str = typer.Option("all", help=f"text_encoder, text_encoder_2, {' / '.join(denoiser_slots())} (the denoiser) or all."),
    heads: bool = typer.Option(False, "--heads", help="Also list every attention head as a site."),
) -> None:
    """List the sites tracing sweeps over, one per line: site, kind.

    Example: diffloc sites --model tiny-sd1 --component unet
    """
    from diffloc.tracing.models import load_model

    m = load_model(model)
    allowed = ("all",) + tuple(m.modules)
    if component not in allowed:
        raise UsageError(f"unknown component {component!r}; allowed: {', '.join(allowed)}")
    listed = list(m.sites.all_sites())
    if heads:
        listed += [s for comp in m.modules for s in m.sites.heads(comp)]
    rows = [(str(s), s.component, s.kind) for s in listed if component in ("all", s.component)]
    for site, _, kind in rows:
        typer.echo(f"{site}\t{kind}")
    counts: dict = {}
    for _, comp, kind in rows:
        counts[(comp, kind)] = counts.get((comp, kind), 0) + 1
    summary = ", ".join(f"{c}/{k}: {n}" for (c, k), n in counts.items())
    typer.echo(f"# {m.name} ({m.arch}): {len(rows)} sites; {summary}", err=True)


def report(
    dirs: List[Path] = typer.Argument(..., help="Trace run and edit/evaluation folders (or folders holding them)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    title: str = typer.Option("diffloc report", help="Page title."),
) -> None:
    """Write a static HTML report (figures inlined, no external links) for one or more runs.

    Example: diffloc report results/colour results/eval --out report.html
    """
    from diffloc.report import write_report

    path = write_report(list(dirs), out, title=title)
    say(f"-> {path} ({path.stat().st_size / 1e6:.1f} MB)")


def demo(
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="Output folder (resumes traces if it exists)."),
    model: str = typer.Option("toy", "--model", "-m", help="Model spec (the toy world by default)."),
    prompts: int = typer.Option(2, help="Prompts traced per attribute (the shipped sets have 12)."),
    seeds: int = typer.Option(2, help="Seeds per prompt (two give the intervals something to resample)."),
    eval_seeds: int = typer.Option(6, help="Seeds per prompt when evaluating the edit."),
) -> None:
    """Trace colour (suffix mode), localise style (LocoGen), edit from the trace, evaluate, write the report.

    Example: diffloc demo --out results/demo
    """
    from diffloc.demo import run_demo

    path = run_demo(out, model=model, prompts=prompts, seeds=seeds, eval_seeds=eval_seeds, progress=progress_bar("demo"), say=say)
    say(f"report: {path}")

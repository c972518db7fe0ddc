"""``diffloc report``: one self-contained HTML page for trace runs and edit evaluations.

Usage::

    diffloc report results/colour results/eval --out report.html
    diffloc report results --out report.html      # every run folder inside results/
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .cli import app, say


@app.command("report")
def report_cmd(
    dirs: List[Path] = typer.Argument(..., help="Trace run and edit/evaluation folders (or folders holding them)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    title: str = typer.Option("diffloc report", help="Page title."),
) -> None:
    """Write a static HTML report (figures inlined, no external links) for one or more runs.

    Example: diffloc report results/colour results/eval --out report.html
    """
    from .report import write_report

    path = write_report(list(dirs), out, title=title)
    say(f"-> {path} ({path.stat().st_size / 1e6:.1f} MB)")

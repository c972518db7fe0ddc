"""What every command module shares: quiet mode, printing and progress bars.

Usage::

    say("figures -> results/colour/figures")       # silent under --quiet
    run_sweep(cfg, out, progress=progress_bar("trace colour"))
"""
from __future__ import annotations

import os

import typer

QUIET = {"on": False}


def say(msg: str) -> None:
    if not QUIET["on"]:
        typer.echo(msg)


def set_quiet(on: bool) -> None:
    QUIET["on"] = on
    if on:  # read by code outside the CLI (toy training bars)
        os.environ["DIFFLOC_QUIET"] = "1"


def progress_bar(desc: str):
    """A tqdm factory showing units done, rate and time left; silent under --quiet."""
    from tqdm import tqdm

    return lambda total, initial=0: tqdm(total=total, initial=initial, desc=desc, unit="unit", disable=QUIET["on"], dynamic_ncols=True)

"""The ``diffloc`` command line.

Usage::

    diffloc sites --model tiny-sd1
    diffloc trace --model toy --attribute colour --out results/colour
    diffloc plot results/colour
    diffloc edit --method quickfix --from-trace results/colour --source red --target blue --model toy --out results/edited
    diffloc bench trace --out results/bench_trace.json

Bad input (unknown model, site, attribute, window ...) prints one line ``error: ...`` naming
the bad value and what is allowed, and exits with code 2, without a traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, help="diffloc: localise and edit knowledge in text-to-image diffusion models.")
toy_app = typer.Typer(no_args_is_help=True, help="The embedded toy world: train and evaluate its model and scorer.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON (ratios measured in one run).")
app.add_typer(toy_app, name="toy")
app.add_typer(bench_app, name="bench")

QUIET = {"on": False}


class UsageError(ValueError):
    """Bad command-line input; reported as one line with exit code 2."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffloc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (for scripts)."),
) -> None:
    QUIET["on"] = quiet
    if quiet:  # read by code outside the CLI (toy training bars)
        os.environ["DIFFLOC_QUIET"] = "1"


def say(msg: str) -> None:
    if not QUIET["on"]:
        typer.echo(msg)


@app.command()
def sites(
    model: str = typer.Option("toy", "--model", "-m", help="Model spec: toy, tiny-sd1, tiny-sd2, tiny-sdxl, a folder, a file or a hub id."),
    component: str = typer.Option("all", help="text_encoder, text_encoder_2, unet or all."),
) -> None:
    """List the sites tracing sweeps over, one per line: site, component, kind.

    Example: diffloc sites --model tiny-sd1 --component unet
    """
    from .models import load_model

    m = load_model(model)
    allowed = ("all",) + tuple(m.modules)
    if component not in allowed:
        raise UsageError(f"unknown component {component!r}; allowed: {', '.join(allowed)}")
    rows = [r for r in m.sites.rows() if component in ("all", r[1])]
    for site, comp, kind in rows:
        typer.echo(f"{site}\t{kind}")
    counts = {}
    for _, comp, kind in rows:
        counts[(comp, kind)] = counts.get((comp, kind), 0) + 1
    summary = ", ".join(f"{c}/{k}: {n}" for (c, k), n in counts.items())
    typer.echo(f"# {m.name} ({m.arch}): {len(rows)} sites; {summary}", err=True)


def _register_commands() -> None:
    """Commands living in other modules register themselves on ``app``."""
    from . import cli_demo, cli_toy, cli_trace  # noqa: F401
    from . import cli_report  # noqa: F401

    try:
        from editing import cli as _edit_cli  # noqa: F401
    except ImportError:  # editing not installed alongside
        pass


def _quiet_libraries() -> None:
    """Library progress bars and advice lines are noise on a CLI's stderr; keep ours only."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app, turning known input errors into one line and exit code 2."""
    from .models import ModelSpecError
    from .sites import SiteError

    _quiet_libraries()
    _register_commands()
    known = (UsageError, ModelSpecError, SiteError, FileNotFoundError, FileExistsError, ValueError, LookupError)
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except known as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        typer.echo(f"error: {msg}", err=True)
        sys.exit(2)
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":  # `python -m tracing.cli`: run the imported module's app, where commands register
    from tracing.cli import main as _main

    _main()

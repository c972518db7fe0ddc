"""The ``diffloc`` command line: the one place that builds the typer app. Nothing imports it.

Usage::

    diffloc sites --model tiny-sd1
    diffloc trace --model toy --attribute colour --out results/colour
    diffloc plot results/colour
    diffloc edit --method quickfix --from-trace results/colour --source red --target blue --model toy --out results/edited
    diffloc bench trace --out results/bench_trace.json
    diffloc --debug trace ...          # tracebacks for input errors too

Bad input raises :class:`tracing.errors.DifflocInputError` (or :class:`tracing.sites.SiteError`;
see ``tracing/errors.py`` for the hierarchy), printed as one line ``error: ...`` with exit
code 2. Any other exception is a bug and shows its traceback. Command functions live
in ``diffloc.cli.trace``, ``diffloc.cli.edit`` and ``diffloc.cli.misc`` and know nothing of
this app; worlds add their own sub-apps (``diffloc toy ...``) through the world registry.
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

from diffloc.tracing.errors import DifflocInputError
from diffloc.tracing.sites import SiteError
from diffloc.tracing.worlds import WORLDS

from .. import __version__
from . import edit, misc, trace
from .common import set_quiet

DEBUG = {"on": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffloc {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (for scripts)."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of input errors too."),
) -> None:
    set_quiet(quiet)
    DEBUG["on"] = debug


def build_app() -> typer.Typer:
    """The app: every command registered here, world sub-apps mounted by name."""
    kw = dict(no_args_is_help=True, rich_markup_mode=None)  # help texts keep literal [brackets]
    app = typer.Typer(add_completion=False, help="diffloc: localise and edit knowledge in text-to-image diffusion models.", **kw)
    bench = typer.Typer(help="Benchmarks that write JSON (ratios measured in one run).", **kw)
    app.callback()(_root)
    for fn in (misc.sites, trace.trace, trace.plot, edit.edit, edit.diagnose_cmd, edit.undo, edit.evaluate, misc.report, misc.demo):
        app.command(fn.__name__.removesuffix("_cmd"))(fn)
    bench.command("trace")(trace.bench_trace)
    bench.command("edit")(edit.bench_edit)
    app.add_typer(bench, name="bench")
    for name in WORLDS.names():
        sub = WORLDS.get(name).cli()
        if sub is not None:
            app.add_typer(sub, name=name)
    return app


def _no_library_bars() -> None:
    """Loading bars of transformers / diffusers / the hub are noise on a CLI's stderr. Only their
    progress bars go: warnings and log messages are left as the libraries emit them."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


def _usage_errors() -> tuple:
    """click's usage errors (unknown option, missing value): typer >= 0.29 vendors click as
    ``typer._click``, whose exceptions are not ``click``'s own; older typer raises ``click``'s."""
    import click

    kinds = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as Vendored
    except ImportError:
        return tuple(kinds)
    return tuple(kinds + [Vendored])


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: input errors become one line and exit code 2; bugs keep their traceback."""
    _no_library_bars()
    app = build_app()
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except (DifflocInputError, SiteError) as err:  # bad input: tracing/errors.py lists the types
        if DEBUG["on"]:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        typer.echo(f"error: {msg}", err=True)
        sys.exit(2)
    except _usage_errors() as err:  # click's usage errors: one line too, with their exit code (2)
        if DEBUG["on"]:
            raise
        typer.echo(f"error: {err.format_message()} (see --help)", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()

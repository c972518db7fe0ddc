"""diffloc, the application: edit evaluation, figures, the HTML report, benchmarks and the CLI.

Usage::

    from diffloc.evaluate import evaluate_methods, summarise
    from diffloc.plots import plot_run
    from diffloc.report import write_report

The libraries underneath are ``tracing`` (core: sites, hooks, models, io, worlds; then the
sampler, sweeps, metrics and screens) and ``editing`` (closed forms and editors). Imports point
down only: ``diffloc`` may import both, ``editing`` imports ``tracing``, and nothing imports
``diffloc.cli`` (tests/test_architecture.py enforces it). See docs/architecture.md.
"""
__version__ = "0.2.0"

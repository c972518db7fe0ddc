"""diffloc: find where a text-to-image diffusion model stores an attribute, then edit it there.

Usage::

    import diffloc
    model = diffloc.load_model("toy")
    run = diffloc.trace(model, "colour", out="results/colour")
    run.table, run.causal_sites, run.plot()
    diffloc.edit(model, from_trace=run, source="red", target="blue", out="results/red_blue")

Packages (one import root; imports point down only, tests/test_architecture.py enforces it):
``diffloc.tracing`` (core: sites, families, hooks, models, io, worlds; then the sampler, sweeps,
metrics and screens), ``diffloc.editing`` (closed forms and editors), and the application here
(evaluation, figures, the HTML report, benchmarks, and ``diffloc.cli``, which nothing imports).
The toy world is the plug-in ``diffloc_toy``. See docs/architecture.md.
"""
__version__ = "0.3.0"

from .api import Run, edit, load_model, trace  # noqa: E402,F401  (light: every import inside is lazy)

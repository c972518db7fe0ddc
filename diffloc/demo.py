"""The whole story on the embedded toy world, in one call (what ``make demo`` runs).

Usage::

    report = run_demo(Path("results/demo"))          # diffloc demo --out results/demo

1. trace colour over the text encoder in ``suffix`` mode (a token and every later one restored:
   the toy UNet reads all 77 positions and layer 0 copies the attribute into every later
   token, so single-token restorations stay at the floor, see README) and over the UNet,
   2 prompts × 2 seeds, with bootstrap intervals;
2. localise style with LocoGen's cross-attention swap (windows of 2 attn2 layers);
3. edit from the colour trace (Diff-QuickFix with UCE's preserve term at layer-0 out_proj:
   red -> blue; keys, values and preserved captions from the edit case);
4. evaluate the edited model (efficacy, generalization, specificity; CLIP and ground truth),
5. on the toy world, trace colour on toy-dit too (the MM-DiT of the same world: every denoiser site,
   counterfactual corruption red -> blue/green/yellow, seed 0): blocks × streams and the text -> image slice,
6. write one HTML report with every figure, and return its path.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from diffloc.editing.cases import load_cases
from diffloc.editing.editors import Method, edit_case
from diffloc.editing.records import save_edited
from diffloc.editing.trace_options import options_from_trace
from diffloc.tracing.methods import TRACE_METHODS
from diffloc.tracing.models import load_model
from diffloc.tracing.prompts import attribute_prompts
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig

from .evaluate_run import run_evaluate
from .plots import plot_run
from .report import write_report

DEMO = {"edit": "colour-red-blue", "cases": "experiments/cases/toy_edits.jsonl"}
#: The demo's sweeps: run name -> (attribute, TraceConfig overrides); component ``denoiser`` is
#: the model's denoiser, whatever its family calls it.
DEMO_RUNS = {
    "trace_colour": ("colour", dict(component="all", restore="suffix", text_kinds=("hidden", "attn"))),
    "swap_style": ("style", dict(component="denoiser", method="crossattn-swap", method_options={"window": 2})),
}
#: Toy prompts traced first: at seed 0 their corruption changes what the image shows (measured on
#: the shipped model: colour prompts 2 and 5 turn blue/green objects red/yellow, object 1 and 6 lose
#: 18-20 CLIP points), so a 2-prompt demo has a drop to restore.
DEMO_FIRST = {"colour": (2, 5), "object": (1, 6)}


def demo_prompts(attribute: str, n: int) -> tuple[str, ...]:
    """The toy set's marked prompts, DEMO_FIRST ones first; the first ``n``."""
    ps = attribute_prompts("toy", attribute)
    first = DEMO_FIRST.get(attribute, ())
    order = list(first) + [i for i in range(len(ps)) if i not in first]
    return tuple(ps[i].marked for i in order[:n])


def _dit_trace(run: Path, prompts: int, progress: Callable | None) -> Path:
    """Colour on toy-dit: every denoiser site, each prompt against the other colours, seed 0."""
    cfg = TraceConfig(model="toy-dit", attribute="colour", prompts=demo_prompts("colour", prompts), seeds=(0,), batch_size=128,
                      component="denoiser", corrupt="replace")
    run_sweep(cfg, run, progress=progress)
    plot_run(run, uncertainty=True)
    return run


def run_demo(out: Path, model: str = "toy", prompts: int = 2, seeds: int = 2, eval_seeds: int = 6,
             progress: Callable | None = None, say: Callable = print) -> Path:
    """Trace, localise, edit from the trace, evaluate, report; returns the report's path."""
    t0 = time.perf_counter()
    m = load_model(model)
    if m.world != "toy":
        say(f"note: {m.name} is not the toy world; ground-truth scores are off and the toy scorer may not fit it")
    runs = []
    for name, (attribute, overrides) in DEMO_RUNS.items():
        chosen = demo_prompts(attribute, prompts) if m.world == "toy" else ()
        cfg = TraceConfig(model=model, attribute=attribute, prompts=chosen, max_prompts=None if chosen else prompts,
                          seeds=tuple(range(seeds)), batch_size=128, **overrides)
        run = out / name
        run_sweep(cfg, run, model=m, progress=progress)
        plot_run(run, uncertainty=True)
        runs.append(run)
        method = TRACE_METHODS.get(cfg.method)
        how = f"restore {cfg.restore}{method.describe(method.options(cfg))}"
        say(f"[{time.perf_counter() - t0:5.0f}s] {cfg.method} {attribute} ({how}) -> {run}")
    case = next(c for c in load_cases(DEMO["cases"]) if c["id"] == DEMO["edit"])  # its in-grammar edit templates
    method = Method("quickfix", preserve=True)  # Diff-QuickFix with the case's preserve captions
    opts = options_from_trace(runs[0], method.editor, say=say, model=m)
    edited = out / "edited_quickfix"
    if not (edited / "edit.json").exists():
        records = edit_case(method, m, case, {method.editor: opts})
        save_edited(m, records, edited, source=m.source)
    say(f"[{time.perf_counter() - t0:5.0f}s] edited {case['source']} -> {case['target']} ({method.label}) at "
        f"{opts.get('site', 'layer-0 out_proj')} -> {edited}")
    run_evaluate(str(edited), Path(DEMO["cases"]), out / "eval_quickfix", [], eval_seeds, None, "toy", progress=progress, say=say)
    say(f"[{time.perf_counter() - t0:5.0f}s] evaluated -> {out / 'eval_quickfix'}")
    if m.world == "toy" and model == "toy":
        runs.append(_dit_trace(out / "dit_colour", prompts, progress))
        say(f"[{time.perf_counter() - t0:5.0f}s] exact colour on toy-dit (replace, every denoiser site) -> {runs[-1]}")
    report = write_report(runs + [edited, out / "eval_quickfix"], out / "report.html")
    say(f"[{time.perf_counter() - t0:5.0f}s] done.")
    return report

"""``diffloc edit``, ``diffloc undo``, ``diffloc evaluate`` and ``diffloc bench edit``.

Usage::

    diffloc edit --method quickfix --from-trace results/colour --source red --target blue --model toy --out results/edited
    diffloc undo --model results/edited --out results/restored
    diffloc evaluate --model toy --cases experiments/cases/toy_edits.jsonl --out results/eval
    diffloc evaluate --model results/edited --cases experiments/cases/toy_edits.jsonl --out results/eval_edited
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from editing.corpus import read_corpus
from editing.editors import EDITORS, method_labels
from editing.trace_options import options_from_trace
from tracing.errors import UsageError
from tracing.sites import Site

from .common import progress_bar, say

def method_options(method: str, model, site: Optional[str], layer: Optional[int], lam: Optional[float], corpus: Optional[Path], from_trace: Optional[Path]) -> dict:
    """Editor options from --from-trace, --site, --layer, --lam and --corpus."""
    opts = options_from_trace(from_trace, method, say=say) if from_trace else {}
    if site is not None:
        opts = {"site": site} if method == "quickfix" else {"sites": [site]} if method == "crossattn" else opts
        if method == "refact":
            s = Site.parse(site)
            if s.kind != "mlp":
                raise UsageError(f"refact edits an MLP fc2 (text_encoder:encoder.layers.N.mlp.fc2); got {site}")
            opts = {"layer": s.layer}
    if layer is not None:
        if method != "refact":
            raise UsageError("--layer applies to --method refact; use --site for the other methods")
        opts["layer"] = layer
    if lam is not None:
        if method == "refact":
            raise UsageError("--lam applies to quickfix and crossattn; refact is a rank-one update")
        opts["lam"] = lam
    if method == "refact":
        opts["corpus"], opts["contrastive"] = read_corpus(corpus, model)
    return opts


def edit(
    method: str = typer.Option(..., help="quickfix, refact or crossattn."),
    source: str = typer.Option(..., help="The concept words to edit, as they appear in prompts (e.g. 'Van Gogh')."),
    target: str = typer.Option(..., help="What the source should become (e.g. 'a painting')."),
    model: str = typer.Option("toy", "--model", "-m", help="Model spec, or an edited folder (edits stack)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the edited model (never the source)."),
    from_trace: Optional[Path] = typer.Option(None, help="A trace folder: edit its strongest causal state of the method's kind."),
    site: Optional[str] = typer.Option(None, help="Edit this site instead (e.g. text_encoder:encoder.layers.0.self_attn.out_proj)."),
    layer: Optional[int] = typer.Option(None, help="refact: text-encoder layer of the fc2 to edit."),
    lam: Optional[float] = typer.Option(None, help="Regulariser λ (quickfix 0.01, crossattn 0.1)."),
    corpus: Optional[Path] = typer.Option(None, help="refact: caption file for the covariance (default: toy captions / shipped SD captions)."),
    templates: Optional[Path] = typer.Option(None, help="File of edit prompts, one per line, '{}' where the concept goes (default: the paper's 'A photo of {}' set)."),
    preserve: Optional[Path] = typer.Option(None, help="quickfix / crossattn: file of captions whose keys must keep their values (UCE's preservation)."),
    targets: Optional[Path] = typer.Option(None, help="quickfix / crossattn: file of target prompts, one per template line, target words in [brackets] ('[two] red triangles at the top'); default: the templates filled with --target."),
) -> None:
    """Edit a model in closed form and save it beside an edit.json record.

    Example: diffloc edit --method quickfix --from-trace results/colour --source red --target blue --model toy --out results/edited
    """
    from editing.records import check_out_path, load_records, save_edited
    from tracing.models import load_model

    EDITORS.get(method)  # one line naming the registered editors
    check_out_path(out, model if Path(model).exists() else None)
    m = load_model(model)
    _check_in_vocab(m, source)
    previous = load_records(model) if (Path(model) / "edit.json").exists() else []
    opts = method_options(method, m, site, layer, lam, corpus, from_trace)
    if templates is not None:
        opts["templates"] = read_templates(templates)
    if preserve is not None:
        if method not in ("quickfix", "crossattn"):
            raise UsageError(f"--preserve applies to --method quickfix or crossattn, not {method}")
        opts["preserve"] = _lines(preserve, "preserve")
    if targets is not None:
        if method not in ("quickfix", "crossattn"):
            raise UsageError(f"--targets applies to --method quickfix or crossattn, not {method}")
        if templates is None:
            raise UsageError("--targets pairs one target prompt with each line of --templates; give --templates too")
        opts["targets"] = _lines(targets, "targets")
    records = EDITORS.get(method).apply(m, source, target, **opts)
    save_edited(m, previous + records, out, source=model if Path(model).exists() else None)
    for r in records:
        say(f"{r.method} {r.site}: {json.dumps({k: v for k, v in r.info.items() if k in ('n_pairs', 'seconds', 'final_p', 'layer', 'lambda')})}")
    say(f"edited model -> {out} (edit.json lists {len(previous) + len(records)} weight edits)")


def _lines(path: Path, what: str) -> list[str]:
    if not path.exists():
        raise UsageError(f"{what} file {path} does not exist")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise UsageError(f"{what} file {path} has no lines")
    return lines


def read_templates(path: Path) -> list[str]:
    """Edit templates from a file: one per line, each with exactly one '{}' slot."""
    lines = _lines(path, "templates")
    bad = [t for t in lines if t.count("{}") != 1]
    if bad:
        raise UsageError(f"template {bad[0]!r} in {path} needs exactly one '{{}}' where the concept goes")
    return lines


def _check_in_vocab(model, source: str) -> None:
    ids = model.tokenizer(source, add_special_tokens=False).input_ids
    if not ids:
        raise UsageError(f"source {source!r} tokenises to nothing; give the words as they appear in prompts")


def undo(
    model: Path = typer.Option(..., "--model", "-m", help="An edited model folder (has edit.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the restored model."),
    steps: int = typer.Option(0, help="Undo only the last N weight edits (0: all)."),
) -> None:
    """Undo edits bit-exactly (checked against the recorded SHA-256 of the original weights).

    Example: diffloc undo --model results/edited --out results/restored
    """
    from editing.records import check_out_path, load_records, save_edited, undo_edit
    from tracing.models import load_model

    check_out_path(out, str(model))
    records = load_records(model)
    m = load_model(str(model))
    n = len(records) if steps == 0 else steps
    if not 0 < n <= len(records):
        raise UsageError(f"--steps {steps} out of range; this model has {len(records)} weight edits")
    for rec in reversed(records[len(records) - n :]):
        undo_edit(m, rec)
    save_edited(m, records[: len(records) - n], out, source=str(model))
    say(f"undid {n} weight edits -> {out}")


def evaluate(
    model: str = typer.Option("toy", "--model", "-m", help="A model spec, or an edited folder (its edits are evaluated)."),
    cases: Path = typer.Option(Path("experiments/cases/toy_edits.jsonl"), help="Edit cases (JSONL)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: eval.parquet, summary.json, grids."),
    method: List[str] = typer.Option(list(method_labels()), "--method", help="Methods to evaluate on a clean model (repeat): quickfix, quickfix+preserve, refact, crossattn."),
    seeds: int = typer.Option(10, help="Seeds per prompt (ReFACT used 25)."),
    max_cases: Optional[int] = typer.Option(None, help="Use only the first N cases."),
    scorer: str = typer.Option("toy", help="CLIP scorer (toy, or open_clip name/pretrained)."),
    refact_layer: Optional[int] = typer.Option(None, help="ReFACT's text-encoder layer (default: the paper's layer 7 of 12, scaled)."),
) -> None:
    """Efficacy, generalization and specificity (CLIP, and ground truth on the toy world).

    Example: diffloc evaluate --model toy --cases experiments/cases/toy_edits.jsonl --out results/eval
    """
    from diffloc.evaluate_run import run_evaluate

    run_evaluate(model, cases, out, method, seeds, max_cases, scorer, refact_layer=refact_layer, progress=progress_bar("evaluate"), say=say)


def bench_edit(out: Path = typer.Option(..., "--out", "-o", help="JSON file to write.")) -> None:
    """Closed-form edit timings: quickfix_ms_sd_sized, quickfix_ms_toy, refact_s_toy.

    Example: diffloc bench edit --out results/bench_edit.json
    """
    from diffloc.bench_edit import bench_edit_all
    from tracing.io import write_plain_json

    result = bench_edit_all()
    write_plain_json(result, out)
    for k, v in result.items():
        if not isinstance(v, dict):
            say(f"{k}: {v}")
    say(f"-> {out}")

"""``diffloc edit``, ``diffloc diagnose``, ``diffloc undo``, ``diffloc evaluate`` and ``diffloc bench edit``.

Usage::

    diffloc edit --method quickfix --from-trace results/colour --source red --target blue --model toy --out results/edited
    diffloc undo --model results/edited --out results/restored
    diffloc evaluate --model toy --cases experiments/cases/toy_edits.jsonl --out results/eval
    diffloc evaluate --model results/edited --cases experiments/cases/toy_edits.jsonl --out results/eval_edited
    diffloc evaluate --cases experiments/cases/toy_edits.jsonl --method quickfix --preserve --together 4 --out results/eval_4
    diffloc edit --method quickfix --cases experiments/cases/toy_edits.jsonl --case-preserve --out results/edited_many
    diffloc diagnose --model toy --source red --target blue --layer 0 --out results/diagnosis
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from diffloc.editing.corpus import read_corpus
from diffloc.editing.editors import EDITORS, layer_editors, takers
from diffloc.editing.trace_options import options_from_trace
from diffloc.tracing.errors import UsageError
from diffloc.tracing.io import read_lines
from diffloc.tracing.sites import Site

from .common import progress_bar, say


def batched() -> tuple[str, ...]:
    """Names of the editors with a one-solve batch (``run_many``)."""
    return tuple(n for n in EDITORS.names() if EDITORS.get(n).run_many is not None)


def _defaults(option: str) -> str:
    """``quickfix 0.01, crossattn 0.1``: each editor's default of ``option``."""
    from dataclasses import fields

    out = []
    for n in takers(option):
        out += [f"{n} {f.default}" for f in fields(EDITORS.get(n).options_type) if f.name == option]
    return ", ".join(out)


def _for(option: str) -> str:
    """``quickfix / crossattn: `` — the editors whose options take ``option``, for help texts."""
    return " / ".join(takers(option)) + ": "


def _or(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _only_for(editor, option: str, flag: str) -> None:
    """--flag applies to the editors whose options have the field ``option``."""
    if option not in editor.takes:
        raise UsageError(f"{flag} applies to --method {_or(takers(option))}, not {editor.name}")


def method_options(editor, model, site: Optional[str], layer: Optional[int], lam: Optional[float], corpus: Optional[Path],
                   from_trace: Optional[Path], read_corpus_file: bool = True) -> dict:
    """Editor options from --from-trace, --site, --layer, --lam and --corpus."""
    opts = options_from_trace(from_trace, editor.name, say=say, model=model) if from_trace else {}
    if site is not None:
        model.module(site)  # a site the model lacks (a head past its block's heads, a T5 path on CLIP) is one line naming it
        opts = editor.from_site(site)
    if layer is not None:
        if editor.site_option != "layer":
            raise UsageError(f"--layer applies to --method {_or(e.name for e in layer_editors())}; use --site for the other methods")
        opts["layer"] = layer
    if lam is not None:
        _only_for(editor, "lam", "--lam")
        opts["lam"] = lam
    if read_corpus_file and "corpus" in editor.takes:
        opts["corpus"], _ = read_corpus(corpus, model)  # C from the corpus; candidates are the target and source (ReFACT's best)
    return opts


def edit(
    method: str = typer.Option(..., help=f"{_or(EDITORS.names())}."),
    source: Optional[str] = typer.Option(None, help="The concept words to edit, as they appear in prompts (e.g. 'Van Gogh')."),
    target: Optional[str] = typer.Option(None, help="What the source should become (e.g. 'a painting')."),
    model: str = typer.Option("toy", "--model", "-m", help="Model spec, or an edited folder (edits stack)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the edited model (never the source)."),
    from_trace: Optional[Path] = typer.Option(None, help="A trace folder: edit its strongest causal state of the method's kind."),
    site: Optional[str] = typer.Option(None, help="Edit this site instead (e.g. text_encoder:encoder.layers.0.self_attn.out_proj)."),
    layer: Optional[int] = typer.Option(None, help=f"{_for('layer')}text-encoder layer to edit."),
    lam: Optional[float] = typer.Option(None, help=f"Regulariser λ ({_defaults('lam')})."),
    corpus: Optional[Path] = typer.Option(None, help=f"{_for('corpus')}caption file for the covariance (default: toy captions / shipped SD captions)."),
    templates: Optional[Path] = typer.Option(None, help="File of edit prompts, one per line, '{}' where the concept goes (default: the paper's 'A photo of {}' set)."),
    preserve: Optional[Path] = typer.Option(None, help=f"{_for('preserve')}file of captions whose keys must keep their values (UCE's preservation)."),
    preserve_mode: Optional[str] = typer.Option(None, help=f"{_for('preserve_mode')}soft (UCE's term, default) or nullspace (the update avoids the preserve keys: their outputs stay exact)."),
    nullspace_rtol: Optional[float] = typer.Option(None, help=f"{_for('nullspace_rtol')}with --preserve-mode nullspace: preserved directions with singular value below rtol·σ_max are left free for the edit (default 1e-5: exact to float32 rounding; raise it when the preserve keys fill the layer's input)."),
    targets: Optional[Path] = typer.Option(None, help=f"{_for('targets')}file of target prompts, one per template line, target words in [brackets] ('[two] red triangles at the top'); default: the templates filled with --target."),
    cases: Optional[Path] = typer.Option(None, help="A cases file (JSONL, as experiments/cases/toy_edits.jsonl): apply all its edits, in one closed-form solve (" + ", ".join(batched()) + ")."),
    sequential: bool = typer.Option(False, help="With --cases: apply the edits one after another (every method), each its own undoable record."),
    case_preserve: bool = typer.Option(False, help="With --cases: use the cases' preserve captions (all cases together, minus those that name another case's source)."),
    diagnose: bool = typer.Option(False, "--diagnose", help="Before editing, patch the target prompts' text-encoder states into the source prompts (subject / after it / all positions) and write diagnosis.json with the editor it recommends."),
    diagnose_seeds: int = typer.Option(3, help="--diagnose: seeds per edit prompt."),
) -> None:
    """Edit a model in closed form and save it beside an edit.json record.

    Example: diffloc edit --method quickfix --from-trace results/colour --source red --target blue --model toy --out results/edited
    Example: diffloc edit --method quickfix --cases experiments/cases/toy_edits.jsonl --case-preserve --model toy --out results/edited_many
    """
    from diffloc.editing.records import check_out_path, load_records, save_edited
    from diffloc.tracing.models import load_model

    editor = EDITORS.get(method)  # one line naming the registered editors
    chosen = _chosen_cases(cases, source, target, sequential, case_preserve, templates, targets)
    if cases is not None and not sequential and editor.run_many is None:
        raise UsageError(f"{method} has no batched solve; add --sequential, or use {_or(batched())}")
    check_out_path(out, model if Path(model).exists() else None)
    m = load_model(model)
    for s in ([source] if chosen is None else [c["source"] for c in chosen]):
        _check_in_vocab(m, s)
    previous = load_records(model) if (Path(model) / "edit.json").exists() else []
    opts = method_options(editor, m, site, layer, lam, corpus, from_trace)
    _file_options(opts, editor, templates, preserve, targets)
    if preserve_mode is not None:
        _only_for(editor, "preserve_mode", "--preserve-mode")
        opts["preserve_mode"] = preserve_mode
    if nullspace_rtol is not None:
        _only_for(editor, "nullspace_rtol", "--nullspace-rtol")
        opts["nullspace_rtol"] = nullspace_rtol
    found = _diagnose(m, editor, opts, source, target, chosen, diagnose_seeds) if diagnose else None
    if chosen is None:
        records = editor.apply(m, source, target, opts)
    else:
        from diffloc.editing.batch import apply_cases
        from diffloc.editing.editors import Method

        label = Method(method, case_preserve)
        records = apply_cases(m, label, chosen, {method: opts}, sequential=sequential)
    save_edited(m, previous + records, out, source=model if Path(model).exists() else None)
    if found is not None:
        from diffloc.editing.diagnose import write_diagnosis

        write_diagnosis(found[0] if len(found) == 1 else found, out / "diagnosis.json")
    for r in records:
        say(f"{r.method} {r.site}: {json.dumps({k: v for k, v in r.info.items() if k in ('n_pairs', 'n_edits', 'seconds', 'final_p', 'layer', 'lambda', 'nullspace_dim')})}")
    say(f"edited model -> {out} (edit.json lists {len(previous) + len(records)} weight edits)")


def _chosen_cases(cases: Optional[Path], source, target, sequential: bool, case_preserve: bool, templates, targets,
                  together: bool = True):
    """The cases of --cases (checked for conflicts when they go into one model: ``together``), or None for a
    --source/--target edit."""
    if cases is None:
        if source is None or target is None:
            raise UsageError("give --source and --target, or --cases FILE")
        if sequential or case_preserve:
            raise UsageError("--sequential and --case-preserve apply to --cases FILE")
        return None
    if source is not None or target is not None or templates is not None or targets is not None:
        raise UsageError("--cases FILE carries each edit's source, target, templates and targets; drop --source/--target/--templates/--targets")
    from diffloc.editing.batch import check_conflicts
    from diffloc.editing.cases import load_cases

    chosen = load_cases(cases)
    if not chosen:
        raise UsageError(f"cases file {cases} holds no cases")
    if together:
        check_conflicts(chosen, where=str(cases))
    return chosen


def _file_options(opts: dict, editor, templates, preserve, targets) -> None:
    if templates is not None:
        opts["templates"] = read_templates(templates)
    if preserve is not None:
        _only_for(editor, "preserve", "--preserve")
        opts["preserve"] = _lines(preserve, "preserve")
    if targets is not None:
        _only_for(editor, "targets", "--targets")
        if templates is None:
            raise UsageError("--targets pairs one target prompt with each line of --templates; give --templates too")
        opts["targets"] = _lines(targets, "targets")
    if "templates" in opts and "targets" in opts and len(opts["targets"]) != len(opts["templates"]):
        raise UsageError(f"{len(opts['targets'])} target prompts for {len(opts['templates'])} templates; give one target prompt per template")


def _diagnose(model, editor, opts: dict, source, target, chosen, seeds: int, max_prompts: int = 4) -> list[dict]:
    """Diagnose each edit (the first ``max_prompts`` edit prompts × ``seeds``) at the site ``editor`` would edit."""
    from diffloc.editing.diagnose import diagnose, diagnosis_line, patch_site
    from diffloc.tracing.scoring import default_scorer, load_scorer
    from diffloc.tracing.worlds import world_of

    site = editor.site_of(model, opts)
    patch_site(model, site)  # a denoiser site other than the text entry is a one-line error before anything runs
    if seeds < 1:
        raise UsageError(f"--diagnose-seeds must be >= 1, got {seeds}")
    world = world_of(model)
    truth = world if world.has_readers else None
    scorer = None if truth is not None else load_scorer(default_scorer("auto", model))
    todo = [(source, target, opts.get("templates"), opts.get("targets"))] if chosen is None else \
        [(c["source"], c["target"], c.get("templates"), c.get("targets")) for c in chosen]
    found = []
    for s, t, tpl, tgt in todo:
        tpl, tgt = (tpl[:max_prompts] if tpl else None), (tgt[:max_prompts] if tgt else None)
        d = diagnose(model, s, t, site, templates=tpl, targets=tgt, seeds=range(seeds), scorer=scorer, truth=truth)
        say(diagnosis_line(d))
        if d["recommended"] not in (None, editor.name):
            say(f"  note: {d['reason']}")
        found.append(d)
    return found


def diagnose_cmd(
    model: str = typer.Option("toy", "--model", "-m", help="Model spec, or an edited folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for diagnosis.json."),
    source: Optional[str] = typer.Option(None, help="The concept words to edit."),
    target: Optional[str] = typer.Option(None, help="What the source should become."),
    cases: Optional[Path] = typer.Option(None, help="Diagnose every case of a cases file (JSONL) instead."),
    max_cases: Optional[int] = typer.Option(None, help="With --cases: only the first N."),
    method: str = typer.Option(layer_editors()[0].name, help="The editor whose site is diagnosed (a layer-keyed editor: its layer; the others: their --site)."),
    site: Optional[str] = typer.Option(None, help="A text-encoder edit site (its layer's residual is patched)."),
    layer: Optional[int] = typer.Option(None, help=f"{_for('layer')}the layer."),
    templates: Optional[Path] = typer.Option(None, help="File of edit prompts with a '{}' slot (default: the paper's)."),
    targets: Optional[Path] = typer.Option(None, help="File of marked target prompts, one per template line."),
    seeds: int = typer.Option(3, help="Seeds per edit prompt."),
    max_prompts: int = typer.Option(4, help="Edit prompts per case (the first N templates)."),
) -> None:
    """Before editing: can the target prompt's own text-encoder state, patched at the subject, after it or everywhere, make the target appear?

    Example: diffloc diagnose --model toy --source red --target blue --layer 0 --out results/diagnosis
    """
    from diffloc.tracing.models import load_model

    editor = EDITORS.get(method)
    chosen = _chosen_cases(cases, source, target, False, False, templates, targets, together=False)  # each case on its own
    if max_prompts < 1:
        raise UsageError(f"--max-prompts must be >= 1, got {max_prompts}")
    m = load_model(model)
    if site is not None:
        m.module(site)  # a site the model lacks is one line naming it (not silently its layer number)
    if editor.site_option == "layer":  # any text-encoder site names its layer
        opts = {"layer": layer if site is None else Site.parse(site).layer}
    else:
        opts = method_options(editor, m, site, layer, None, None, None, read_corpus_file=False)
    _file_options(opts, editor, templates, None, targets)
    from diffloc.editing.diagnose import write_diagnosis

    found = _diagnose(m, editor, opts, source, target, None if chosen is None else chosen[:max_cases], seeds, max_prompts)
    write_diagnosis(found[0] if len(found) == 1 else found, out / "diagnosis.json")
    say(f"-> {out / 'diagnosis.json'}")


def _lines(path: Path, what: str) -> list[str]:
    lines = read_lines(path, what)
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
    from diffloc.editing.records import check_out_path, load_records, save_edited, undo_edit
    from diffloc.tracing.models import load_model

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
    method: List[str] = typer.Option([], "--method", help=f"Methods to evaluate on a clean model (repeat; default: every editor that can edit the model, with and without +preserve): {', '.join(EDITORS.names())}; <editor>+preserve adds the cases' preserve captions (or use --preserve); <editor>+nullspace keeps them exactly (preserve mode nullspace)."),
    seeds: int = typer.Option(10, help="Seeds per prompt (ReFACT used 25)."),
    max_cases: Optional[int] = typer.Option(None, help="Use only the first N cases."),
    scorer: str = typer.Option("toy", help="CLIP scorer (toy, or open_clip name/pretrained)."),
    refact_layer: Optional[int] = typer.Option(None, help="ReFACT's text-encoder layer (default: the paper's layer 7 of 12, scaled)."),
    preserve: bool = typer.Option(False, help="Give every method that takes them the cases' preserve captions (rows labelled <editor>+preserve)."),
    together: int = typer.Option(1, help="Evaluate each case on a model carrying N edits at once: groups of N consecutive cases (the last holds the remainder)."),
    sequential: bool = typer.Option(False, help="With --together: apply a group's edits one after another instead of in one solve."),
    nullspace_rtol: Optional[float] = typer.Option(None, help=f"{_for('nullspace_rtol')}+nullspace's rank threshold: preserved directions with singular value below rtol·σ_max are left free (default 1e-5: exact to float32 rounding)."),
) -> None:
    """Efficacy, generalization and specificity (CLIP, and ground truth on the toy world).

    Example: diffloc evaluate --model toy --cases experiments/cases/toy_edits.jsonl --out results/eval
    """
    from diffloc.evaluate_run import run_evaluate

    run_evaluate(model, cases, out, method, seeds, max_cases, scorer, refact_layer=refact_layer, progress=progress_bar("evaluate"), say=say,
                 preserve=preserve, together=together, sequential=sequential, nullspace_rtol=nullspace_rtol)


def bench_edit(out: Path = typer.Option(..., "--out", "-o", help="JSON file to write.")) -> None:
    """Closed-form edit timings: quickfix_ms_sd_sized, nullspace_ms_sd_sized, context_embedder_ms_flux_sized, quickfix_ms_toy, refact_s_toy.

    Example: diffloc bench edit --out results/bench_edit.json
    """
    from diffloc.bench_edit import bench_edit_all
    from diffloc.tracing.io import write_plain_json

    result = bench_edit_all()
    write_plain_json(result, out)
    for k, v in result.items():
        if not isinstance(v, dict):
            say(f"{k}: {v}")
    say(f"-> {out}")

"""Edit cases: one JSONL line per edit, with its evaluation prompts and edit prompts.

Usage::

    cases = load_cases("experiments/cases/toy_edits.jsonl")
    case_prompts(cases[0])     # [("edit", {...}), ("positive", {...}) x5, ("negative", {...}) x5]

A case has ``id``, ``attribute``, ``source``, ``target``, ``edit`` (the edit prompt),
``positives`` and ``negatives`` (prompts ``{"prompt", "new"}``), and optionally
``new_value`` (the attribute value the edit should produce, for exact readers), ``templates``
(edit prompts with a ``{}`` slot), ``targets`` (one marked target prompt per template) and
``preserve`` (captions whose keys keep their values). ``load_cases`` checks that edit,
target and preserve prompts never equal an evaluation prompt.
"""
from __future__ import annotations

from pathlib import Path

from diffloc.tracing.errors import InputFileError
from diffloc.tracing.io import read_jsonl

from .records import EditError


def load_cases(path: str | Path) -> list[dict]:
    """Edit cases from a JSONL file; each needs id, attribute, source, target, edit, positives, negatives."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"cases file {path} does not exist")
    cases = []
    for n, c in read_jsonl(path, "cases"):
        if not isinstance(c, dict):
            raise EditError(f"{path}:{n}: a case is a JSON object, got {type(c).__name__}")
        missing = [k for k in ("id", "attribute", "source", "target", "edit", "positives", "negatives") if k not in c]
        if missing:
            raise EditError(f"{path}:{n}: case lacks {', '.join(missing)}")
        absent = [p["prompt"] for p in [c["edit"], *c["positives"]] if c["source"] not in p["prompt"]]
        if absent:
            raise EditError(f"{path}:{n}: source {c['source']!r} is not in the prompt {absent[0]!r}")
        slotless = [t for t in c.get("templates", []) if t.count("{}") != 1]
        if slotless:
            raise EditError(f"{path}:{n}: template {slotless[0]!r} needs exactly one '{{}}' slot for the concept")
        leaked = {t.replace("{}", c["source"]) for t in c.get("templates", [])} & {p["prompt"] for _, p in case_prompts(c)}
        if leaked:
            raise EditError(f"{path}:{n}: edit template gives the evaluation prompt {sorted(leaked)[0]!r}; keep them disjoint")
        targets = c.get("targets")
        if targets is not None and len(targets) != len(c.get("templates", [])):
            raise EditError(f"{path}:{n}: {len(targets)} targets for {len(c.get('templates', []))} templates; give one per template")
        for t in targets or []:
            if t.count("[") != 1 or t.count("]") != 1:
                raise EditError(f"{path}:{n}: target {t!r} must mark the target words once, e.g. 'a photo of [two] red circles'")
        told = {t.replace("[", "").replace("]", "") for t in targets or []} & {p["prompt"] for _, p in case_prompts(c)}
        if told:
            raise EditError(f"{path}:{n}: target {sorted(told)[0]!r} is an evaluation prompt; keep them disjoint")
        kept = set(c.get("preserve", [])) & {p["prompt"] for _, p in case_prompts(c)}
        if kept:
            raise EditError(f"{path}:{n}: preserve caption {sorted(kept)[0]!r} is an evaluation prompt; keep them disjoint")
        cases.append(c)
    return cases


def case_prompts(case: dict) -> list[tuple[str, dict]]:
    return [("edit", case["edit"])] + [("positive", p) for p in case["positives"]] + [("negative", p) for p in case["negatives"]]

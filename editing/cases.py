"""Edit cases: one JSONL line per edit, with its evaluation prompts and edit prompts.

Usage::

    cases = load_cases("experiments/cases/toy_edits.jsonl")     # checks every rule below
    case_prompts(cases[0])     # [("edit", {...}) x (1 + len(edit_variants)), ("positive", {...}) x5, ("negative", {...}) x5]
    load_cases(dev_path, disjoint_from=test_path)                # a dev set sharing no prompt with the test set
    cases = complete_cases(cases, get_world("toy"))              # templates/targets/preserve from the world's grammar

A case has ``id``, ``attribute``, ``source``, ``target``, ``edit`` (the edit prompt),
``positives`` and ``negatives`` (prompts ``{"prompt", "new"}``), and optionally
``edit_variants`` (more edit prompts, the same split as ``edit``: efficacy rests on them all),
``new_value`` (the attribute value the edit should produce, for exact readers), ``templates``
(edit prompts with a ``{}`` slot), ``targets`` (one marked target prompt per template) and
``preserve`` (captions whose keys keep their values).

What ``load_cases`` refuses (one-line :class:`~editing.records.EditError` naming the file, line,
case and prompt):

* edit, target and preserve prompts equal to one of the case's evaluation prompts (strings);
* a template that describes the same *scene* as any evaluation prompt (edit prompts,
  positives, negatives) of *any* case in the file: the world's ``parse_caption`` of the filled
  template equals the prompt's and is complete (every attribute named), whatever the wording.
  Otherwise a many-edits run puts an evaluated case's own scene into another case's solve.
  Needs a world that parses captions: ``world`` (a name or object); by default the registered
  worlds with exact readers are asked, and the first that parses the file's first edit prompt
  completely is used (a file no world parses, e.g. Stable Diffusion cases, gets the string
  checks only);
* with ``disjoint_from`` (the test set's path or cases), an evaluation prompt that is also an
  evaluation prompt of the other set (:func:`check_disjoint`): a dev set for choosing methods
  must not peek at the test set.

:func:`complete_cases` gives a case without ``templates`` or ``targets`` those of its world:
captions of the world's corpus holding the source word, whose scene is no evaluation prompt of
any case, as templates; their counterfactuals with the target value (``world.counterfactuals``,
in the caption's own grammar: 'one red [circle]' → 'one red [square]', '[one] red circle' →
'[two] red circles') as targets; and with the attribute's other values as preserve captions. A
world without a corpus grammar leaves them absent, and the editors use the papers' templates.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any, Sequence

from diffloc.tracing.errors import InputFileError
from diffloc.tracing.io import read_jsonl

from .records import EditError

#: Templates drawn per case by :func:`complete_cases` (the hand-written toy cases carry 12).
N_TEMPLATES = 12


def case_prompts(case: dict) -> list[tuple[str, dict]]:
    """(split, prompt) of every evaluation prompt: the edit prompt and its variants, positives, negatives."""
    edits = [case["edit"], *case.get("edit_variants", [])]
    return [("edit", p) for p in edits] + [("positive", p) for p in case["positives"]] + [("negative", p) for p in case["negatives"]]


def _filled(template: str, source: str) -> str:
    return template.replace("{}", source)


def _plain(marked: str) -> str:
    return marked.replace("[", "").replace("]", "")


# ----------------------------------------------------------------------------- scenes
def _parser_world(world: Any, cases: Sequence[dict]):
    """The world whose parse decides scenes: ``world`` (a name or object), or the first registered
    world with readers that parses the first case's edit prompt completely; None if none does."""
    from diffloc.tracing.worlds import WORLDS, get_world

    if world is not None:
        return get_world(world) if isinstance(world, str) else world
    if not cases:
        return None
    for name in WORLDS.names():
        w = WORLDS.get(name)
        if not getattr(w, "has_readers", False):
            continue
        try:
            if set(w.parse_caption(cases[0]["edit"]["prompt"])) == set(w.attributes):
                return w
        except Exception:  # noqa: BLE001 (a world that cannot parse this file's captions is not its world)
            continue
    return None


def scene(world: Any, text: str) -> frozenset | None:
    """The scene a caption describes (its complete parse), or None where the parse is incomplete."""
    attrs = world.parse_caption(_plain(text))
    return frozenset(attrs.items()) if set(attrs) == set(world.attributes) else None


def evaluation_scenes(world: Any, cases: Sequence[dict]) -> dict[frozenset, tuple[str, str]]:
    """{scene: (case id, prompt)} of every evaluation prompt of ``cases`` (the first one wins)."""
    out: dict[frozenset, tuple[str, str]] = {}
    for c in cases:
        for _, p in case_prompts(c):
            s = scene(world, p["prompt"])
            if s is not None:
                out.setdefault(s, (c.get("id", c["source"]), p["prompt"]))
    return out


# ----------------------------------------------------------------------------- loading
def _check_case(path: Path, n: int, c: Any) -> None:
    if not isinstance(c, dict):
        raise EditError(f"{path}:{n}: a case is a JSON object, got {type(c).__name__}")
    missing = [k for k in ("id", "attribute", "source", "target", "edit", "positives", "negatives") if k not in c]
    if missing:
        raise EditError(f"{path}:{n}: case lacks {', '.join(missing)}")
    if not isinstance(c.get("edit_variants", []), list):
        raise EditError(f"{path}:{n}: case {c['id']!r}: edit_variants must be a list of prompts {{\"prompt\", \"new\"}}")
    absent = [p["prompt"] for s, p in case_prompts(c) if s != "negative" and c["source"] not in p["prompt"]]
    if absent:
        raise EditError(f"{path}:{n}: source {c['source']!r} is not in the prompt {absent[0]!r}")
    evaluated = {p["prompt"] for _, p in case_prompts(c)}
    slotless = [t for t in c.get("templates", []) if t.count("{}") != 1]
    if slotless:
        raise EditError(f"{path}:{n}: template {slotless[0]!r} needs exactly one '{{}}' slot for the concept")
    leaked = {_filled(t, c["source"]) for t in c.get("templates", [])} & evaluated
    if leaked:
        raise EditError(f"{path}:{n}: case {c['id']!r}: edit template gives the evaluation prompt {sorted(leaked)[0]!r}; keep them disjoint")
    targets = c.get("targets")
    if targets is not None and len(targets) != len(c.get("templates", [])):
        raise EditError(f"{path}:{n}: {len(targets)} targets for {len(c.get('templates', []))} templates; give one per template")
    for t in targets or []:
        if t.count("[") != 1 or t.count("]") != 1:
            raise EditError(f"{path}:{n}: target {t!r} must mark the target words once, e.g. 'a photo of [two] red circles'")
    told = {_plain(t) for t in targets or []} & evaluated
    if told:
        raise EditError(f"{path}:{n}: case {c['id']!r}: target {sorted(told)[0]!r} is an evaluation prompt; keep them disjoint")
    kept = set(c.get("preserve", [])) & evaluated
    if kept:
        raise EditError(f"{path}:{n}: case {c['id']!r}: preserve caption {sorted(kept)[0]!r} is an evaluation prompt; keep them disjoint")


def check_scenes(cases: Sequence[dict], world: Any = None, where: str = "", lines: Sequence[int] | None = None) -> None:
    """One-line error if a template of any case describes the scene of an evaluation prompt of any case."""
    world = _parser_world(world, cases)
    if world is None:
        return
    scenes = evaluation_scenes(world, cases)
    for i, c in enumerate(cases):
        for t in c.get("templates", []):
            hit = scenes.get(scene(world, _filled(t, c["source"])))
            if hit is not None:
                at = f"{where}:{lines[i]}: " if where and lines else (f"{where}: " if where else "")
                whose = "its own" if hit[0] == c.get("id", c["source"]) else f"case {hit[0]!r}'s"
                raise EditError(f"{at}case {c.get('id', c['source'])!r}: template {t!r} describes the same scene as {whose} "
                                f"evaluation prompt {hit[1]!r}; draw another template")


def check_disjoint(cases: Sequence[dict], other: Sequence[dict], where: str = "the dev set", other_name: str = "the test set") -> None:
    """One-line error if an evaluation prompt of ``cases`` is also one of ``other``."""
    theirs = {p["prompt"]: c.get("id", c["source"]) for c in other for _, p in case_prompts(c)}
    for c in cases:
        for _, p in case_prompts(c):
            if p["prompt"] in theirs:
                raise EditError(f"{where}: case {c.get('id', c['source'])!r} evaluates {p['prompt']!r}, an evaluation prompt of "
                                f"{other_name} (case {theirs[p['prompt']]!r}); keep the two sets disjoint")


def load_cases(path: str | Path, world: Any = None, disjoint_from: "str | Path | Sequence[dict] | None" = None) -> list[dict]:
    """Edit cases from a JSONL file; each needs id, attribute, source, target, edit, positives, negatives.

    ``world``: the world whose caption parse decides scene overlap (default: found, see the
    module docstring); ``disjoint_from``: another case file (or its cases) that must share no
    evaluation prompt with this one."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"cases file {path} does not exist")
    cases, lines = [], []
    for n, c in read_jsonl(path, "cases"):
        _check_case(path, n, c)
        cases.append(c)
        lines.append(n)
    check_scenes(cases, world, where=str(path), lines=lines)
    if disjoint_from is not None:
        other = load_cases(disjoint_from, world) if isinstance(disjoint_from, (str, Path)) else list(disjoint_from)
        name = str(disjoint_from) if isinstance(disjoint_from, (str, Path)) else "the other set"
        check_disjoint(cases, other, where=str(path), other_name=name)
    return cases


# ----------------------------------------------------------------------------- completion
def _values(world: Any, case: dict) -> tuple[str | None, str | None]:
    """(old value, new value) of the case's attribute, from the case or the world's parse of its words."""
    old = case.get("old_value") or world.parse_caption(case["source"]).get(case["attribute"])
    new = case.get("new_value") or world.parse_caption(case["target"]).get(case["attribute"])
    return old, new


def _word(text: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(text)}(?!\w)")


def world_prompts(case: dict, world: Any, excluded: set, n: int = N_TEMPLATES) -> dict:
    """``templates``, ``targets`` and ``preserve`` for ``case`` from its world's grammar: ``n``
    captions of the world's corpus holding the source word (scenes not in ``excluded``, distinct
    scenes first, then other wordings of them; spread over the corpus by a seed from the case's id), their counterfactual with the
    target value (marked) and with every other value (preserve). {} where the world has no
    ``counterfactuals`` or too few captions qualify."""
    counterfactuals = getattr(world, "counterfactuals", None)
    if counterfactuals is None:
        return {}
    import numpy as np

    attribute, source = case["attribute"], case["source"]
    old, new = _values(world, case)
    word = _word(source)
    evaluated = {p["prompt"] for _, p in case_prompts(case)}
    pool = [t for t in world.corpus() if word.search(t) and t not in evaluated]
    rng = np.random.default_rng(zlib.crc32(case.get("id", source).encode()))
    chosen, seen, used = [], set(), set()
    order = [pool[int(i)] for i in rng.permutation(len(pool))]
    for repeat in (False, True):  # one caption per scene first, then other wordings of the same scenes
        for text in order:
            if len(chosen) == n:
                break
            s = scene(world, text)
            if text in used or s is None or s in excluded or (s in seen and not repeat) or dict(s).get(attribute) != old:
                continue
            marked = word.sub(f"[{source}]", text, count=1)
            alternatives = dict(counterfactuals(marked, attribute))
            if new not in alternatives:
                continue
            seen.add(s), used.add(text)
            chosen.append((word.sub("{}", text, count=1), alternatives[new], [_plain(m) for v, m in alternatives.items() if v != new]))
    if not chosen:
        return {}
    preserve = list(dict.fromkeys(p for _, _, ps in chosen for p in ps if p not in evaluated))
    return {"templates": [c[0] for c in chosen], "targets": [c[1] for c in chosen], "preserve": preserve}


def complete_cases(cases: Sequence[dict], world: Any = None, n: int = N_TEMPLATES) -> list[dict]:
    """Copies of ``cases`` where a case without ``templates`` or ``targets`` has its world's (see
    :func:`world_prompts`); templates never describe an evaluation scene of any case. A case
    that has both is returned unchanged; one with templates but no targets gets the world's
    templates and targets both; ``preserve`` is filled only where absent. Marks each
    completed case with ``"completed_from": world name``."""
    cases = list(cases)
    world = _parser_world(world, cases)
    if world is None or not getattr(world, "has_readers", False) or getattr(world, "counterfactuals", None) is None:
        return cases  # no caption grammar: the editors use the papers' templates
    excluded = set(evaluation_scenes(world, cases))
    out = []
    for c in cases:
        if c.get("templates") and c.get("targets"):
            out.append(c)
            continue
        got = world_prompts(c, world, excluded, n)
        if not got:
            out.append(c)
            continue
        extra = {"templates": got["templates"], "targets": got["targets"], "completed_from": world.name}
        if not c.get("preserve"):
            extra["preserve"] = got["preserve"]
        out.append(dict(c, **extra))
    return out

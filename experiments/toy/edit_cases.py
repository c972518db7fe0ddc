"""The toy world's edit set: 24 cases across attributes, written to ``experiments/cases/toy_edits.jsonl``.

Usage::

    python -m diffloc_toy.edit_cases          # deterministic; the file is committed
    python -m diffloc_toy.edit_cases --dev    # the held-out dev set (case seeds 1000+i), for choosing methods
    python -m diffloc_toy.edit_cases --plain  # the test set stripped to edit prompt, positives, negatives
                                              # (experiments/cases/toy_edits_plain.jsonl: the world fills the rest)

Each case re-maps one attribute value (``source`` word → ``target`` word): colour and object
re-mappings, style removal (a texture → plain), count and viewpoint changes. Every prompt
carries its ``new`` text (the same caption with the attribute set to the target value), which
is what CLIP compares against (ReFACT: P(new) > P(old)) and what the oracle baseline draws.

- ``edit``: the edit prompt (template 0), and ``edit_variants``: 8 more edit prompts in template 0
  with the source value in other scenes, so that efficacy rests on 9 prompts per case
  (24 cases x 9 = 216 images per seed).
- ``positives``: 5 paraphrases in other templates and other contexts that contain the source
  word (generalisation).
- ``negatives``: 5 captions whose same attribute has another value (neither source nor
  target): specificity asks that they keep their own value.
- ``templates``: 12 edit prompts in the world's own caption grammar with a ``{}`` slot where
  the source word goes (seeded random captions containing it, never an evaluation prompt).
  The editors gather their keys and values from these instead of the SD-style
  ``"A photo of {}"`` templates, whose context the toy text encoder never saw.
- ``targets``: for each template, the same caption with the target value, marked
  ('a photo of [two] red squares ...'). It is grammatical where word substitution is not:
  'one red square' → 'two red square*s*', 'in the [middle]' → 'at the [top]'. The editors take
  their values from these captions.
- ``preserve``: the same captions with the attribute's other values (neither source nor
  target); quickfix+preserve and crossattn keep their outputs, as UCE preserves concepts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffloc_toy import world

OUT = Path(__file__).resolve().parent.parent / "cases" / "toy_edits.jsonl"
DEV = OUT.with_name("toy_edits_dev.jsonl")
#: Dev cases use seeds DEV_SEED + i: the same 24 re-mappings in other captions. Editor design
#: choices are made on the dev set; the reported numbers come from the committed test set.
DEV_SEED = 1000
PLAIN = OUT.with_name("toy_edits_plain.jsonl")
#: Edit prompts per case beyond ``edit`` (all in template 0, like it).
N_VARIANTS = 8

#: (attribute, source value, target value, counts allowed so the source word appears verbatim)
CASES = [
    ("colour", "red", "blue", None), ("colour", "blue", "red", None), ("colour", "green", "yellow", None),
    ("colour", "yellow", "green", None), ("colour", "red", "green", None), ("colour", "blue", "yellow", None),
    ("object", "circle", "square", ("one",)), ("object", "square", "circle", ("one",)),
    ("object", "triangle", "diamond", ("one",)), ("object", "diamond", "triangle", ("one",)),
    ("object", "circle", "triangle", ("two", "three")), ("object", "square", "diamond", ("two", "three")),
    ("style", "striped", "plain", None), ("style", "checkered", "plain", None),
    ("style", "plain", "striped", None), ("style", "striped", "checkered", None),
    ("count", "two", "three", None), ("count", "three", "two", None), ("count", "one", "two", None),
    ("count", "two", "one", None),
    ("viewpoint", "top", "bottom", None), ("viewpoint", "bottom", "top", None),
    ("viewpoint", "middle", "top", None), ("viewpoint", "top", "middle", None),
]


def _attrs(rng, attribute: str, value: str, counts) -> dict:
    a = world.sample_attrs(rng)
    a[attribute] = value
    if counts is not None and attribute != "count":
        a["count"] = counts[int(rng.integers(len(counts)))]
    return a


def _entry(attrs: dict, attribute: str, target: str, template: int) -> dict:
    new = dict(attrs, **{attribute: target})
    return {"prompt": world.caption(attrs, template), "new": world.caption(new, template)}


def edit_templates(attribute: str, value: str, word: str, counts, exclude: set[str], n: int = 12,
                   seed: int = 0, excluded_scenes: set[frozenset] = frozenset()) -> list[tuple[str, dict, int]]:
    """``n`` distinct captions with ``attribute = value`` whose word ``word`` is replaced by ``{}``,
    each with its attributes and template index: ``[(template, attrs, t), ...]``; none is in
    ``exclude`` or describes a scene in ``excluded_scenes``."""
    rng = np.random.default_rng(10_000 + seed)
    out: list[tuple[str, dict, int]] = []
    for _ in range(10_000):
        a = _attrs(rng, attribute, value, counts)
        t = int(rng.integers(len(world.TEMPLATES)))
        cap = world.caption(a, t)
        if cap in exclude or f" {word} " not in f" {cap} " or frozenset(a.items()) in excluded_scenes:
            continue
        tpl = f" {cap} ".replace(f" {word} ", " {} ", 1).strip()
        if tpl not in [o[0] for o in out]:
            out.append((tpl, a, t))
        if len(out) == n:
            return out
    raise RuntimeError(f"could not draw {n} templates for {attribute}={value}")


def _draw(rng, attribute: str, value: str, counts, target: str, template: int, avoid: set[str]) -> dict:
    """An evaluation prompt with ``attribute = value`` in ``template``, not in ``avoid`` (redrawn)."""
    for _ in range(1000):
        e = _entry(_attrs(rng, attribute, value, counts), attribute, target, template)
        if e["prompt"] not in avoid:
            avoid.add(e["prompt"])
            return e
    raise RuntimeError(f"could not draw a prompt for {attribute}={value} outside the excluded ones")


def draw_prompts(attribute: str, source: str, target: str, counts, seed: int, avoid: set[str] = frozenset()) -> dict:
    """The case's evaluation prompts (edit, edit_variants, positives, negatives); none in ``avoid``."""
    rng = np.random.default_rng(seed)
    word = world.attribute_words(_attrs(rng, attribute, source, counts), attribute)
    target_word = world.attribute_words(dict(_attrs(rng, attribute, target, counts)), attribute)
    seen = set(avoid)
    edit = _draw(rng, attribute, source, counts, target, 0, seen)
    positives = [_draw(rng, attribute, source, counts, target, t, seen) for t in range(1, 6)]
    others = [v for v in world.ATTRIBUTES[attribute] if v not in (source, target)]
    negatives = [_draw(rng, attribute, others[i % len(others)], counts, target, (i + 2) % len(world.TEMPLATES), seen) for i in range(5)]
    variants = [_draw(rng, attribute, source, counts, target, 0, seen) for _ in range(N_VARIANTS)]
    return {"id": f"{attribute}-{source}-{target}" + ("-plural" if counts and "one" not in counts else ""),
            "attribute": attribute, "source": word, "target": target_word, "old_value": source, "new_value": target,
            "edit": edit, "edit_variants": variants, "positives": positives, "negatives": negatives}


def _scene(text: str) -> frozenset:
    return frozenset(world.parse_caption(text).items())


def add_templates(case: dict, counts, seed: int, excluded_scenes: set[frozenset], n: int = 12) -> dict:
    """The case with ``templates``, ``targets`` and ``preserve``: captions none of whose scenes is in
    ``excluded_scenes`` (every evaluation prompt of the file)."""
    attribute, source, target = case["attribute"], case["old_value"], case["new_value"]
    evaluated = {p["prompt"] for p in [case["edit"], *case["edit_variants"], *case["positives"], *case["negatives"]]}
    drawn = edit_templates(attribute, source, case["source"], counts, evaluated, n=n, seed=seed, excluded_scenes=excluded_scenes)
    others = [v for v in world.ATTRIBUTES[attribute] if v not in (source, target)]
    # the target prompts are the templates' own captions with the target value, grammatical and
    # marked ('one blue [triangle]' -> 'two blue [triangles]'); preserve captions likewise set the
    # attribute's other values; never one of the case's evaluation prompts (a preserve caption
    # naming another case's source is dropped when the two are edited together: batch_preserve)
    targets = [world.mark(dict(a, **{attribute: target}), attribute, t) for _, a, t in drawn]
    preserve = [c for v in others for _, a, t in drawn
                if (c := world.caption(dict(a, **{attribute: v}), t)) not in evaluated]
    return dict(case, templates=[d[0] for d in drawn], targets=targets, preserve=preserve)


def make_cases(offset: int = 0, avoid: set[str] = frozenset()) -> list[dict]:
    """All cases: evaluation prompts first (none in ``avoid``), then templates outside every evaluation scene."""
    cases = [draw_prompts(a, s, t, c, seed=offset + i, avoid=avoid) for i, (a, s, t, c) in enumerate(CASES)]
    scenes = {_scene(p["prompt"]) for c in cases for p in [c["edit"], *c["edit_variants"], *c["positives"], *c["negatives"]]}
    return [add_templates(case, c, offset + i, scenes) for i, (case, (_, _, _, c)) in enumerate(zip(cases, CASES))]


def make_case(attribute: str, source: str, target: str, counts, seed: int) -> dict:
    """One case on its own (templates outside its own evaluation scenes only; :func:`make_cases` excludes the file's)."""
    case = draw_prompts(attribute, source, target, counts, seed)
    own = {_scene(p["prompt"]) for p in [case["edit"], *case["edit_variants"], *case["positives"], *case["negatives"]]}
    return add_templates(case, counts, seed, own)


def plain(case: dict) -> dict:
    """The case as a user would write it: edit prompts, positives, negatives (no templates, targets, preserve)."""
    return {k: v for k, v in case.items() if k not in ("templates", "targets", "preserve")}


def main(dev: bool = False, stripped: bool = False) -> None:
    from diffloc.editing.cases import load_cases

    OUT.parent.mkdir(parents=True, exist_ok=True)
    if stripped:
        cases, out = [plain(c) for c in load_cases(OUT)], PLAIN
    elif dev:
        test = {p["prompt"] for c in load_cases(OUT) for p in [c["edit"], *c["edit_variants"], *c["positives"], *c["negatives"]]}
        cases, out = make_cases(DEV_SEED, avoid=test), DEV
    else:
        cases, out = make_cases(0), OUT
    out.write_text("".join(json.dumps(c) + "\n" for c in cases))
    load_cases(out, disjoint_from=OUT if dev else None)  # the rules hold
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    import sys

    main(dev="--dev" in sys.argv[1:], stripped="--plain" in sys.argv[1:])

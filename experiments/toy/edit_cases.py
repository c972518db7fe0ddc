"""The toy world's edit set: 24 cases across attributes, written to ``experiments/cases/toy_edits.jsonl``.

Usage::

    python -m diffloc_toy.edit_cases          # deterministic; the file is committed
    python -m diffloc_toy.edit_cases --dev    # the held-out dev set (case seeds 1000+i), for choosing methods

Each case re-maps one attribute value (``source`` word → ``target`` word): colour and object
re-mappings, style removal (a texture → plain), count and viewpoint changes. Every prompt
carries its ``new`` text (the same caption with the attribute set to the target value), which
is what CLIP compares against (ReFACT: P(new) > P(old)) and what the oracle baseline draws.

- ``edit``: the edit prompt (template 0).
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
                   seed: int = 0) -> list[tuple[str, dict, int]]:
    """``n`` distinct captions with ``attribute = value`` whose word ``word`` is replaced by ``{}``,
    each with its attributes and template index: ``[(template, attrs, t), ...]``."""
    rng = np.random.default_rng(10_000 + seed)
    out: list[tuple[str, dict, int]] = []
    for _ in range(10_000):
        a = _attrs(rng, attribute, value, counts)
        t = int(rng.integers(len(world.TEMPLATES)))
        cap = world.caption(a, t)
        if cap in exclude or f" {word} " not in f" {cap} ":
            continue
        tpl = f" {cap} ".replace(f" {word} ", " {} ", 1).strip()
        if tpl not in [o[0] for o in out]:
            out.append((tpl, a, t))
        if len(out) == n:
            return out
    raise RuntimeError(f"could not draw {n} templates for {attribute}={value}")


def make_case(attribute: str, source: str, target: str, counts, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    word = world.attribute_words(_attrs(rng, attribute, source, counts), attribute)
    target_word = world.attribute_words(dict(_attrs(rng, attribute, target, counts)), attribute)
    edit = _entry(_attrs(rng, attribute, source, counts), attribute, target, 0)
    positives = [_entry(_attrs(rng, attribute, source, counts), attribute, target, t) for t in range(1, 6)]
    others = [v for v in world.ATTRIBUTES[attribute] if v not in (source, target)]
    negatives = [_entry(_attrs(rng, attribute, others[i % len(others)], counts), attribute, target, (i + 2) % len(world.TEMPLATES))
                 for i in range(5)]
    evaluated = {p["prompt"] for p in [edit, *positives, *negatives]}
    drawn = edit_templates(attribute, source, word, counts, evaluated, seed=seed)
    # the target prompts are the templates' own captions with the target value, grammatical and
    # marked ('one blue [triangle]' -> 'two blue [triangles]'); preserve captions likewise set the
    # attribute's other values; never an evaluation prompt
    targets = [world.mark(dict(a, **{attribute: target}), attribute, t) for _, a, t in drawn]
    preserve = [c for v in others for _, a, t in drawn if (c := world.caption(dict(a, **{attribute: v}), t)) not in evaluated]
    return {"id": f"{attribute}-{source}-{target}" + ("-plural" if counts and "one" not in counts else ""),
            "attribute": attribute, "source": word, "target": target_word, "old_value": source, "new_value": target,
            "edit": edit, "positives": positives, "negatives": negatives, "templates": [d[0] for d in drawn], "targets": targets, "preserve": preserve}


def main(dev: bool = False) -> None:
    out, offset = (DEV, DEV_SEED) if dev else (OUT, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = [make_case(a, s, t, c, seed=offset + i) for i, (a, s, t, c) in enumerate(CASES)]
    out.write_text("".join(json.dumps(c) + "\n" for c in cases))
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    import sys

    main(dev="--dev" in sys.argv[1:])

"""The toy world's edit set: 24 cases across attributes, written to ``experiments/cases/toy_edits.jsonl``.

Usage::

    python -m experiments.toy.edit_cases          # deterministic; the file is committed

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
- ``preserve``: the attribute's other values (neither source nor target) in the same
  templates; crossattn keeps their cross-attention keys fixed, as UCE preserves concepts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.toy import world

OUT = Path(__file__).resolve().parent.parent / "cases" / "toy_edits.jsonl"

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


def edit_templates(attribute: str, value: str, word: str, counts, exclude: set[str], n: int = 12, seed: int = 0) -> list[str]:
    """``n`` distinct captions with ``attribute = value`` whose word ``word`` is replaced by ``{}``."""
    rng = np.random.default_rng(10_000 + seed)
    out: list[str] = []
    for _ in range(10_000):
        a = _attrs(rng, attribute, value, counts)
        cap = world.caption(a, int(rng.integers(len(world.TEMPLATES))))
        if cap in exclude or f" {word} " not in f" {cap} ":
            continue
        tpl = f" {cap} ".replace(f" {word} ", " {} ", 1).strip()
        if tpl not in out:
            out.append(tpl)
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
    templates = edit_templates(attribute, source, word, counts, evaluated, seed=seed)
    other_words = [world.attribute_words(_attrs(rng, attribute, v, counts), attribute) for v in others]
    preserve = [c for w in other_words for t in templates if (c := t.format(w)) not in evaluated]  # never an evaluation prompt
    return {"id": f"{attribute}-{source}-{target}" + ("-plural" if counts and "one" not in counts else ""),
            "attribute": attribute, "source": word, "target": target_word, "old_value": source, "new_value": target,
            "edit": edit, "positives": positives, "negatives": negatives, "templates": templates, "preserve": preserve}


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    cases = [make_case(a, s, t, c, seed=i) for i, (a, s, t, c) in enumerate(CASES)]
    OUT.write_text("".join(json.dumps(c) + "\n" for c in cases))
    print(f"{len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()

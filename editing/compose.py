"""Target prompts for a set of edits made together: each case's values expect every other edit.

Usage::

    cases = compose_cases(load_cases("experiments/cases/toy_edits.jsonl")[:12])   # substitution
    cases = compose_cases(cases, rewrite=world.rewrite)    # a world that writes its own grammar
    apply_cases(model, Method("quickfix", preserve=True), cases)   # apply_cases composes by itself

Why: a case's keys run from its subject to the end of the sequence, so they also cover the
context words of its templates ('red' → 'blue' in 'two red circles on a *striped* background').
Its values come from its target prompts, which keep that context ('two blue circles on a
striped background'). In a set that also maps striped → plain, the two cases ask nearly the
same keys for opposite values, and one stacked least-squares solve averages them: on the toy
world, 12 edits in one solve lost efficacy (0.19) until the values expected each other.

A case's composed target prompt is its own target prompt with every *other* edit whose source
words occur in the case's *source* prompt applied as well (edits act side by side, as
:func:`diffloc.evaluate.expected` reads them: red → blue with blue → red swaps the two, and a
chain red → blue, blue → green leaves this case's blue alone). The case's own marked word is
never rewritten. How the other edits are written in:

* ``rewrite(text, changes)`` given (a world's ``rewrite``: marked target prompt, ``{attribute:
  new value}``; returns the caption in the same template with its grammar, or None where it
  cannot): changes are by attribute, so cases need ``attribute`` and ``new_value``;
* otherwise, or where ``rewrite`` returns None, whole-word substitution of each other source by
  its target. That is all a world without a grammar can do ('one red circle' with one → two
  gives 'two red circle'), and it is what a user of Stable Diffusion gets.
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

from .quickfix import PAPER_TEMPLATES, prompt_pairs

Rewrite = Callable[[str, dict], Optional[str]]
_MARK = re.compile(r"\[[^\]]*\]")


def _word(source: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(source)}(?!\w)")


def substitute(text: str, edits: Sequence[dict]) -> str:
    """``text`` with every edit's source words replaced by its target, all at once, leaving
    bracketed spans alone: ``substitute('two [blue] circles on a striped background',
    [{'source': 'striped', 'target': 'plain'}])`` → ``'two [blue] circles on a plain background'``."""
    if not edits:
        return text
    by_source = {e["source"]: e["target"] for e in edits}
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(s)}(?!\w)" for s in sorted(by_source, key=len, reverse=True)))
    parts, last = [], 0
    for m in _MARK.finditer(text):
        parts += [pattern.sub(lambda w: by_source[w.group(0)], text[last : m.start()]), m.group(0)]
        last = m.end()
    parts.append(pattern.sub(lambda w: by_source[w.group(0)], text[last:]))
    return "".join(parts)


def _prompt_pairs(case: dict) -> list[tuple[str, str]]:
    """(source prompt, marked target prompt) per template of ``case``, as the editors pair them."""
    src, tgt = prompt_pairs(case["source"], case["target"], list(case.get("templates") or PAPER_TEMPLATES), case.get("targets"))
    return [(s.text, t.marked) for s, t in zip(src, tgt)]


def composed_target(source_prompt: str, target_prompt: str, others: Sequence[dict], rewrite: Rewrite | None = None) -> str:
    """``target_prompt`` with the edits in ``others`` whose source occurs in ``source_prompt`` applied."""
    acting = [e for e in others if _word(e["source"]).search(source_prompt)]
    if not acting:
        return target_prompt
    if rewrite is not None and all("attribute" in e and "new_value" in e for e in acting):
        out = rewrite(target_prompt, {e["attribute"]: e["new_value"] for e in acting})
        if out is not None:
            return out
    return substitute(target_prompt, acting)


def compose_cases(cases: Sequence[dict], rewrite: Rewrite | None = None) -> list[dict]:
    """Copies of ``cases`` whose ``templates`` and ``targets`` make each case's values expect all
    the other edits (see the module docstring); a single case comes back unchanged."""
    cases = list(cases)
    if len(cases) < 2:
        return cases
    out = []
    for i, case in enumerate(cases):
        others = cases[:i] + cases[i + 1 :]
        pairs = _prompt_pairs(case)
        targets = [composed_target(s, t, others, rewrite) for s, t in pairs]
        out.append(dict(case, templates=list(case.get("templates") or PAPER_TEMPLATES), targets=targets))
    return out

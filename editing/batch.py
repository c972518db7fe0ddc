"""Many edits at once: one stacked closed-form solve, or one edit after another.

Usage::

    cases = load_cases("experiments/cases/toy_edits.jsonl")[:4]
    records = apply_cases(model, Method("quickfix", preserve=True), cases)  # one solve, one record per site
    records = apply_cases(model, "refact", cases, overrides, sequential=True)  # stacked records
    for rec in reversed(records): undo_edit(model, rec)                        # bit-exact, in reverse order
    groups = consecutive_groups(cases, 4)          # evaluate --together 4: cases 0-3, 4-7, ...
    groups = filled_groups(cases, 12)              # every case evaluated on a model carrying 12 edits

Batched (``quickfix``, ``crossattn``): every case's keys and values are stacked into one
regularised least-squares solve, as UCE and EMCID edit many concepts. Site and λ are shared
(``overrides[editor]``); each case keeps its own templates and target prompts. With the
preserve option, the preserve captions of all cases are used together, minus every caption
that is another case's source or target prompt or that names another case's source words:
such a caption would ask the solve to keep the very keys another edit moves.

Sequential (every editor): each case is applied to the model the previous one left, with its
own options and preserve captions; the records stack and undo bit-exactly in reverse order.

Batched, each case's target prompts first expect every other edit of the set
(:func:`editing.compose.compose_cases`, written with the model's world's ``rewrite`` where it
has one): without that, a case's values at its context words ('striped' in 'two red circles on
a striped background') contradict another case's edit of those words, and one solve averages
the two (``compose=False`` turns it off, to measure exactly that). Sequential cases are not
composed by default: each reads its values off the model the earlier edits left, so it already
expects those, and composing would make it expect later edits the model does not carry yet
(measured on the toy world, N = 19: specificity 0.39 composed against 0.50 not).

A batch that maps the same source to two targets is a conflict: one-line
:class:`~editing.records.EditError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from diffloc.tracing.worlds import world_of

from .compose import compose_cases
from .editors import EDITORS, as_method, case_options, edit_case, edit_many
from .quickfix import PAPER_TEMPLATES
from .records import EditError, EditRecord


def check_conflicts(cases: Sequence[dict], where: str = "the batch") -> None:
    """One-line error if two cases map the same source to different targets."""
    seen: dict[str, dict] = {}
    for c in cases:
        prev = seen.setdefault(c["source"], c)
        if prev["target"] != c["target"]:
            raise EditError(f"conflicting edits in {where}: {prev.get('id', prev['source'])!r} maps {c['source']!r} to "
                            f"{prev['target']!r} and {c.get('id', c['source'])!r} maps it to {c['target']!r}; "
                            "keep one target per source")


def _edit_prompts(case: dict) -> set[str]:
    """The case's source and target prompts (templates filled, marks removed)."""
    templates = case.get("templates") or PAPER_TEMPLATES
    out = {t.replace("{}", case["source"]) for t in templates}
    out |= {t.replace("[", "").replace("]", "") for t in case.get("targets") or []}
    out |= {t.replace("{}", case["target"]) for t in templates if not case.get("targets")}
    return out


def batch_preserve(cases: Sequence[dict]) -> tuple[str, ...]:
    """Preserve captions of all cases, minus those that are another case's source or target
    prompt or that name another case's source words (first occurrence order, no repeats)."""
    out: dict[str, None] = {}
    for i, c in enumerate(cases):
        others = [o for j, o in enumerate(cases) if j != i]
        prompts = set().union(*(_edit_prompts(o) for o in others)) if others else set()
        words = [re.compile(rf"(?<!\w){re.escape(o['source'])}(?!\w)") for o in others]
        for cap in c.get("preserve", []):
            if cap not in prompts and not any(w.search(cap) for w in words):
                out.setdefault(cap)
    return tuple(out)


def composes(sequential: bool, compose: bool | None) -> bool:
    """:func:`apply_cases`'s rule: one solve composes unless told not to, sequential edits only when asked."""
    return not sequential if compose is None else compose


def apply_cases(model, method, cases: Sequence[dict], overrides: dict | None = None, sequential: bool = False,
                compose: bool | None = None) -> list[EditRecord]:
    """Apply every case's edit to ``model`` in place (one solve, or one after another); returns the records.

    ``compose`` (default: batched only) writes the other edits into each case's target prompts."""
    method = as_method(method)
    cases = list(cases)
    if not cases:
        raise EditError("no cases to apply; the cases file is empty")
    check_conflicts(cases)
    if composes(sequential, compose):
        cases = compose_cases(cases, getattr(world_of(model), "rewrite", None))
    if sequential:
        records: list[EditRecord] = []
        try:
            for c in cases:
                records += edit_case(method, model, c, overrides)
        except BaseException:
            _undo(model, records)
            raise
        return records
    editor = EDITORS.get(method.editor)
    per_case = [(c["source"], c["target"], case_options(method, c, overrides)) for c in cases]
    shared = dict((overrides or {}).get(method.label, (overrides or {}).get(method.editor, {})))
    shared.pop("templates", None), shared.pop("targets", None)
    if method.uses_preserve and "preserve" not in shared:
        shared["preserve"] = batch_preserve(cases)
    if method.nullspace:  # the one solve keeps the batch's preserve captions exactly
        shared.setdefault("preserve_mode", "nullspace")
    return edit_many(editor, model, per_case, shared)


def _undo(model, records: Sequence[EditRecord]) -> None:
    from .records import undo_edit

    for rec in reversed(records):
        undo_edit(model, rec)


@dataclass(frozen=True)
class Group:
    """Cases edited into one model: ``cases`` are evaluated on it, ``extra`` only carried along."""

    cases: tuple[int, ...]
    extra: tuple[int, ...] = ()

    @property
    def edited(self) -> tuple[int, ...]:
        return self.cases + self.extra


def _check_n(cases: Sequence[dict], n: int) -> None:
    if not isinstance(n, int) or not 1 <= n <= len(cases):
        raise EditError(f"--together {n} out of range; allowed 1..{len(cases)} (the number of cases)")


def consecutive_groups(cases: Sequence[dict], n: int) -> list[Group]:
    """Groups of ``n`` consecutive cases in file order (the last one holds the remainder);
    a group whose edits conflict is a one-line error."""
    _check_n(cases, n)
    groups = [Group(tuple(range(i, min(i + n, len(cases))))) for i in range(0, len(cases), n)]
    for g in groups:
        check_conflicts([cases[i] for i in g.cases], where=f"the group of cases {g.cases[0] + 1}-{g.cases[-1] + 1}")
    return groups


def filled_groups(cases: Sequence[dict], n: int) -> list[Group]:
    """Every case evaluated on a model carrying exactly ``n`` conflict-free edits.

    Cases go in file order into the first group with room and no conflict (so neighbours that
    touch the same attribute, red→blue and green→yellow, share a group); a group with fewer
    than ``n`` cases is filled with other cases' edits that conflict with none of it (carried,
    not evaluated again). An ``n`` above the largest conflict-free set is a one-line error.
    """
    _check_n(cases, n)
    groups: list[list[int]] = []
    for i, c in enumerate(cases):
        home = next((g for g in groups if len(g) < n and _fits(cases, g, c)), None)
        if home is None:
            groups.append(home := [])
        home.append(i)
    out = []
    for g in groups:
        extra: list[int] = []
        for j in range(len(cases)):
            if len(g) + len(extra) == n:
                break
            if j not in g and _fits(cases, g + extra, cases[j]):
                extra.append(j)
        if len(g) + len(extra) < n:
            raise EditError(f"{n} edits at once need {n} cases with distinct sources; this set has at most "
                            f"{len({c['source'] for c in cases})}")
        out.append(Group(tuple(g), tuple(extra)))
    return out


def _fits(cases: Sequence[dict], group: Sequence[int], case: dict) -> bool:
    return all(cases[j]["source"] != case["source"] for j in group)

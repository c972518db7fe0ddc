"""Edits made together: target prompts that expect the other edits (editing.compose).

References: hand-written captions, the toy world's own corpus (every composed target must be
one of its captions) and the evaluation's reading of what a model with many edits should show
(:func:`diffloc.evaluate.expected`)."""
from __future__ import annotations

import torch

from diffloc.editing.batch import apply_cases, filled_groups
from diffloc.editing.cases import load_cases
from diffloc.editing.compose import compose_cases, composed_target, substitute
from diffloc.editing.records import undo_edit
from diffloc.evaluate import expected
from diffloc.tracing.models import load_model
from diffloc.tracing.worlds import get_world
from diffloc_toy import world as toy

CASES = load_cases("experiments/cases/toy_edits.jsonl")


def test_substitute_is_simultaneous_whole_word_and_leaves_marks():
    swap = [{"source": "red", "target": "blue"}, {"source": "blue", "target": "red"}]
    assert substitute("a red and a blue circle, reddish", swap) == "a blue and a red circle, reddish"
    assert substitute("two [red] circles on a striped background", swap + [{"source": "striped", "target": "plain"}]) \
        == "two [red] circles on a plain background"


def test_only_edits_whose_source_is_in_the_source_prompt_act():
    chain = [{"source": "blue", "target": "green"}]  # red -> blue with blue -> green: this case's blue stays
    assert composed_target("two red circles", "two [blue] circles", chain) == "two [blue] circles"
    assert composed_target("two red circles at the top", "two [blue] circles at the top",
                           [{"source": "top", "target": "bottom"}]) == "two [blue] circles at the bottom"


def test_toy_rewrite_keeps_the_template_and_its_grammar():
    w = get_world("toy")
    assert w.rewrite("a picture of [blue] one square at the top", {"count": "two"}) is None  # no template's caption
    assert w.rewrite("a picture of one [blue] square at the top on a plain background", {"count": "two", "viewpoint": "middle"}) \
        == "a picture of two [blue] squares in the middle on a plain background"
    assert w.rewrite("[one] red circle at the top, plain background", {"count": "three", "colour": "green"}) \
        == "[one] green circle at the top, plain background"  # the marked attribute never changes


def test_composed_targets_of_the_committed_groups_are_world_captions_that_expect_every_edit():
    truth, corpus = get_world("toy"), set(get_world("toy").corpus())
    checked = 0
    for g in filled_groups(CASES, 19)[:2]:
        group = [CASES[i] for i in g.edited]
        for case in compose_cases(group, truth.rewrite):
            others = [c for c in group if c["id"] != case["id"]]
            for template, target in zip(case["templates"], case["targets"]):
                source_prompt = template.replace("{}", case["source"])
                plain, marked = toy.unmark(target)
                assert plain in corpus and len(marked) == 1, target
                want = expected(truth, source_prompt, [case] + others)
                assert truth.parse_caption(plain) == want, (source_prompt, target)
                checked += plain != toy.unmark(next(t for t in CASES if t["id"] == case["id"])["targets"][case["templates"].index(template)])[0]
    assert checked > 100  # most targets really changed


def _out(model, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model.text_encoder(model.tokenize([text])).last_hidden_state[0]  # [77, D]


def test_one_solve_reaches_the_composed_caption_where_independent_values_fight():
    """red -> blue and striped -> plain share context keys; composed, the edited 'red ... striped'
    prompt reads like the unedited 'blue ... plain' one from 'striped' on."""
    model = load_model("toy")
    a, b = next(c for c in CASES if c["id"] == "colour-red-blue"), next(c for c in CASES if c["id"] == "style-striped-plain")
    prompt = "two red circles on a striped background, in the middle"
    want = _out(model, "two blue circles on a plain background, in the middle")[6:]  # from 'striped' on (BOS two red circles on a | striped)
    errors = {}
    for compose in (True, False):
        recs = apply_cases(model, "quickfix", [a, b], compose=compose)
        errors[compose] = float((_out(model, prompt)[6:] - want).norm() / want.norm())
        for r in reversed(recs):
            undo_edit(model, r)
    assert errors[True] < 0.1 and errors[True] < 0.25 * errors[False], errors  # measured 0.05 against 0.51


def test_only_batched_solves_compose_by_default(monkeypatch):
    """Sequential edits read their values off the model the earlier edits left: not composed
    unless asked; one solve composes unless told not to."""
    import diffloc.editing.batch as batch

    calls = []
    monkeypatch.setattr(batch, "compose_cases", lambda cases, rewrite=None: calls.append(len(cases)) or list(cases))
    monkeypatch.setattr(batch, "edit_case", lambda method, model, case, overrides=None: [])
    monkeypatch.setattr(batch, "edit_many", lambda editor, model, per_case, shared: [])
    model = load_model("toy")
    pair = [c for c in CASES if c["source"] in ("red", "striped")][:1] + [c for c in CASES if c["source"] == "striped"][:1]
    for sequential, compose, want in ((True, None, []), (False, None, [2]), (True, True, [2]), (False, False, [])):
        calls.clear()
        batch.apply_cases(model, "quickfix", pair, sequential=sequential, compose=compose)
        assert calls == want, (sequential, compose)

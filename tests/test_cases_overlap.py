"""load_cases refuses templates that describe an evaluation scene of any case, and a dev set that
shares prompts with the test set; plain cases get their templates from the world's grammar."""
from __future__ import annotations

import json

import pytest

from diffloc.editing.cases import case_prompts, check_disjoint, complete_cases, evaluation_scenes, load_cases, scene
from diffloc.editing.records import EditError
from diffloc.tracing.worlds import get_world
from diffloc_toy import world as toy

CASES = "experiments/cases/toy_edits.jsonl"
DEV = "experiments/cases/toy_edits_dev.jsonl"
PLAIN = "experiments/cases/toy_edits_plain.jsonl"
WORLD = get_world("toy")


def _lines() -> list[dict]:
    return [json.loads(line) for line in open(CASES)]


def _write(path, cases) -> str:
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return str(path)


def test_shipped_sets_obey_the_rules():
    test = load_cases(CASES)
    dev = load_cases(DEV, disjoint_from=CASES)
    scenes = evaluation_scenes(WORLD, test)
    for c in test:
        assert len([p for s, p in case_prompts(c) if s == "edit"]) == 9
        for t in c["templates"]:
            assert scene(WORLD, t.replace("{}", c["source"])) not in scenes
    efficacy_images = sum(1 for c in test for s, _ in case_prompts(c) if s == "edit")
    assert efficacy_images >= 200, "efficacy rests on >= 200 images at one seed"
    assert not {p["prompt"] for c in dev for _, p in case_prompts(c)} & {p["prompt"] for c in test for _, p in case_prompts(c)}


def test_template_with_the_scene_of_its_own_prompt_in_other_words_is_refused(tmp_path):
    cases = _lines()
    c = cases[0]
    attrs = toy.parse_caption(c["edit"]["prompt"])          # template 0 ('a photo of ...')
    evaluated = {p["prompt"] for _, p in case_prompts(c)}
    other = next(toy.caption(attrs, t) for t in range(1, len(toy.TEMPLATES))   # the same scene in other words
                 if toy.caption(attrs, t) not in evaluated)
    assert other != c["edit"]["prompt"]
    c["templates"][0] = other.replace(c["source"], "{}", 1)
    path = _write(tmp_path / "own.jsonl", cases)
    with pytest.raises(EditError) as err:
        load_cases(path)
    msg = str(err.value)
    assert "\n" not in msg and f"case {c['id']!r}" in msg and "its own evaluation prompt" in msg and c["edit"]["prompt"] in msg
    assert msg.startswith(f"{path}:1:")


def test_template_with_the_scene_of_another_cases_prompt_is_refused(tmp_path):
    cases = _lines()
    red = next(i for i, c in enumerate(cases) if c["id"] == "colour-red-blue")
    # a red scene evaluated by another case (e.g. a negative of blue->yellow, or any case's prompt with red in it)
    mine = {scene(WORLD, p["prompt"]) for _, p in case_prompts(cases[red])}
    theirs = next((c, p["prompt"]) for c in cases if c["id"] != cases[red]["id"] for _, p in case_prompts(c)
                  if toy.parse_caption(p["prompt"])["colour"] == "red" and scene(WORLD, p["prompt"]) not in mine)
    case, prompt = theirs
    attrs = toy.parse_caption(prompt)
    own = {p["prompt"] for _, p in case_prompts(cases[red])}
    reworded = next(toy.caption(attrs, t) for t in range(len(toy.TEMPLATES)) if toy.caption(attrs, t) not in own | {prompt})
    cases[red]["templates"][3] = reworded.replace("red", "{}", 1)
    path = _write(tmp_path / "cross.jsonl", cases)
    with pytest.raises(EditError, match=rf"case 'colour-red-blue': template .* describes the same scene as case '{case['id']}''s "
                                        rf"evaluation prompt '{prompt}'"):
        load_cases(path)


def test_dev_set_sharing_a_test_prompt_is_refused(tmp_path):
    dev = [json.loads(line) for line in open(DEV)]
    test = load_cases(CASES)
    dev[5]["positives"][2] = dict(test[7]["positives"][0])
    # keep the dev case valid on its own: the borrowed prompt must carry the dev case's source
    dev[5]["positives"][2] = next(p for c in test for s, p in case_prompts(c) if s != "negative" and c["source"] == dev[5]["source"]
                                  and p["prompt"] not in {q["prompt"] for _, q in case_prompts(dev[5])})
    path = _write(tmp_path / "dev.jsonl", dev)
    load_cases(path)  # alone it is a fine case file
    with pytest.raises(EditError) as err:
        load_cases(path, disjoint_from=CASES)
    msg = str(err.value)
    assert "\n" not in msg and f"case {dev[5]['id']!r}" in msg and dev[5]["positives"][2]["prompt"] in msg and CASES in msg
    with pytest.raises(EditError, match="keep the two sets disjoint"):
        check_disjoint(load_cases(path), test)


def test_plain_cases_get_templates_targets_and_preserve_from_the_world():
    plain = load_cases(PLAIN)
    assert not any("templates" in c or "targets" in c or "preserve" in c for c in plain)
    done = complete_cases(plain, WORLD)
    scenes = evaluation_scenes(WORLD, plain)
    for c in done:
        assert c["completed_from"] == "toy" and len(c["templates"]) == len(c["targets"]) == 12
        assert c["preserve"]
        for tpl, tgt in zip(c["templates"], c["targets"]):
            src = tpl.replace("{}", c["source"])
            assert scene(WORLD, src) not in scenes
            a, b = toy.parse_caption(src), toy.parse_caption(tgt.replace("[", "").replace("]", ""))
            assert b == dict(a, **{c["attribute"]: c["new_value"]}) and f"[{c['target']}]" in tgt
        kept = {toy.parse_caption(p)[c["attribute"]] for p in c["preserve"]}
        assert not kept & {c["old_value"], c["new_value"]}
    # grammatical where substitution is not: a count edit's target is plural
    one_two = next(c for c in done if c["id"] == "count-one-two")
    assert all(("[two]" in t) and any(p in t for p in toy.PLURAL.values()) for t in one_two["targets"])
    # hand-written cases come back unchanged, and the completed set passes load_cases' rules
    assert complete_cases(load_cases(CASES), WORLD) == load_cases(CASES)


def test_completed_plain_cases_pass_the_scene_rule(tmp_path):
    done = complete_cases(load_cases(PLAIN), WORLD)
    load_cases(_write(tmp_path / "done.jsonl", [{k: v for k, v in c.items() if k != "completed_from"} for c in done]))

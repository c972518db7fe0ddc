"""Edit evaluation: ReFACT's three rates, baselines, ground truth, the CLI's outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from diffloc.evaluate import evaluate_methods, summarise
from editing.cases import load_cases
from editing.records import EditError, save_edited
from experiments.toy import world
from tracing.worlds import get_world
from tracing.sampler import SamplerConfig

CASES = "experiments/cases/toy_edits.jsonl"


def test_shipped_edit_set_is_well_formed():
    cases = load_cases(CASES)
    assert len(cases) >= 20
    assert {c["attribute"] for c in cases} >= {"colour", "object", "style", "count"}
    for c in cases:
        assert len(c["positives"]) == 5 and len(c["negatives"]) == 5
        for p in [c["edit"], *c["positives"]]:
            assert world.parse_caption(p["prompt"])[c["attribute"]] == c["old_value"]
            assert world.parse_caption(p["new"])[c["attribute"]] == c["new_value"]
        for p in c["negatives"]:
            assert world.parse_caption(p["prompt"])[c["attribute"]] not in (c["old_value"], c["new_value"])


def test_cases_carry_disjoint_edit_templates_and_preserve_set():
    for c in load_cases(CASES):
        evaluated = {p["prompt"] for p in [c["edit"], *c["positives"], *c["negatives"]]}
        filled = [t.format(c["source"]) for t in c["templates"]]
        assert len(set(filled)) == len(filled) >= 8 and not set(filled) & evaluated
        for text in filled:
            assert world.parse_caption(text)[c["attribute"]] == c["old_value"]
        assert len(c["targets"]) == len(c["templates"])
        for tpl, tgt in zip(c["templates"], c["targets"]):
            a, b = world.parse_caption(tpl.format(c["source"])), world.parse_caption(tgt.replace("[", "").replace("]", ""))
            assert b == dict(a, **{c["attribute"]: c["new_value"]}), "a target is its template's caption with the new value"
            assert f"[{c['target']}]" in tgt
        kept = {world.parse_caption(t)[c["attribute"]] for t in c["preserve"]}
        assert kept and not kept & {c["old_value"], c["new_value"]}
        assert not set(c["preserve"]) & evaluated, "a preserve caption is an evaluation prompt"


def test_case_templates_reach_the_editor_and_explicit_options_win():
    from editing.editors import case_options

    case = {"templates": ["one {} square"], "targets": ["one [blue] square"], "preserve": ["one green square"]}
    both = {"templates": ["one {} square"], "targets": ["one [blue] square"]}
    assert case_options("crossattn", case, {}) == dict(both, preserve=["one green square"])
    assert case_options("quickfix", case, {}) == both
    assert case_options("quickfix+preserve", case, {}) == dict(both, preserve=["one green square"])
    assert case_options("refact", case, {}) == both, "ReFACT gets the cases' grammatical targets too"
    assert case_options("quickfix", case, {"quickfix": {"templates": ["{}"]}}) == {"templates": ["{}"]}, \
        "the case's targets belong to its templates"
    assert case_options("refact", {}, {"refact": {"layer": 1}}) == {"layer": 1}


@pytest.mark.parametrize("field, value, msg", [
    ("templates", ["a photo of {} and {}"], "exactly one"),
    ("templates", ["a photo of three {} triangles in the middle on a striped background"], "evaluation prompt"),
    ("preserve", ["a photo of three red triangles in the middle on a striped background"], "preserve caption"),
    ("targets", ["one [blue] square"], "one per template"),
    ("targets", ["one blue square"] * 12, "mark the target words once"),
])
def test_bad_case_templates_are_clear_errors(tmp_path, field, value, msg):
    bad = json.loads(open(CASES).readline())
    bad[field] = value
    (tmp_path / "c.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(EditError, match=msg):
        load_cases(tmp_path / "c.jsonl")


def test_missing_source_is_a_clear_error(tmp_path):
    bad = json.loads(open(CASES).readline())
    bad["source"] = "purple"
    (tmp_path / "c.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(EditError, match="'purple' is not in the prompt"):
        load_cases(tmp_path / "c.jsonl")


def test_rates_baselines_and_ground_truth(pixel_model, scorer):
    cases = load_cases(CASES)[:1]
    table = evaluate_methods(pixel_model, cases, methods=("quickfix",), seeds=range(2), scorer=scorer, truth=get_world("toy"),
                             cfg=SamplerConfig(2, 2.0))
    assert set(table.method) == {"unedited", "oracle", "quickfix"}
    assert len(table) == 3 * 11 * 2
    # success is recomputed independently from the stored probabilities and readings
    pos = table[table.split != "negative"]
    assert ((pos.p_new > pos.p_old).astype(float) == pos.clip_success).all()
    neg = table[table.split == "negative"]
    assert ((neg.p_old > neg.p_new).astype(float) == neg.clip_success).all()
    want = pos.gt_value == cases[0]["new_value"]
    assert (want.astype(float) == pos.gt_success).all()
    s = summarise(table)
    assert set(s["quickfix"]) >= {"efficacy", "generalization", "specificity", "gt_efficacy"}
    e = table[(table.method == "quickfix") & (table.split == "edit")].clip_success.mean()
    assert s["quickfix"]["efficacy"] == pytest.approx(e)
    # the model is left unedited after evaluation (every edit undone)
    again = evaluate_methods(pixel_model, cases, methods=(), seeds=range(2), scorer=scorer, truth=get_world("toy"),
                             cfg=SamplerConfig(2, 2.0), baselines=("unedited",))
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  table[table.method == "unedited"].reset_index(drop=True))


def test_cli_evaluate_writes_parquet_summary_and_grid(tmp_path, pixel_model):
    src = save_edited(pixel_model, [], tmp_path / "model", source="nowhere")
    (src / "edit.json").unlink()  # a plain model folder: evaluate the methods themselves
    r = subprocess.run([sys.executable, "-m", "diffloc", "--quiet", "evaluate", "--model", str(src), "--cases", CASES,
                        "--max-cases", "1", "--seeds", "1", "--method", "quickfix", "--out", str(tmp_path / "eval")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["methods"]) == {"unedited", "oracle", "quickfix"}
    for m in summary["methods"].values():
        assert {"efficacy", "generalization", "specificity"} <= set(m)
    assert len(pd.read_parquet(tmp_path / "eval" / "eval.parquet")) == 3 * 11
    assert (tmp_path / "eval" / "grid.png").stat().st_size > 3000


def test_gt_others_is_the_share_of_the_other_attributes_read_as_prompted():
    import torch

    from diffloc.evaluate import _rows

    case = load_cases(CASES)[0]  # colour red -> blue
    prompt = case["positives"][0]
    attrs = world.parse_caption(prompt["prompt"])
    wrong_object = next(o for o in world.ATTRIBUTES["object"] if o != attrs["object"])
    readings = [dict(attrs, colour=case["new_value"]), dict(attrs, colour=case["new_value"], object=wrong_object)]
    class StubWorld:  # reads the prepared values in turn; parses captions as the toy world does
        it = iter(readings)
        read = staticmethod(lambda img: next(StubWorld.it))
        parse_caption = staticmethod(world.parse_caption)

    rows = _rows(case, "m", [("positive", prompt)], torch.zeros(2, 3, 4, 4), [0, 1], None, StubWorld)
    assert [r["gt_success"] for r in rows] == [1.0, 1.0], "the colour edit succeeds in both"
    assert [r["gt_others"] for r in rows] == [1.0, 0.75], "one of the four other attributes is wrong in the second"
    assert summarise(pd.DataFrame(rows))["m"]["gt_others"] == 0.875

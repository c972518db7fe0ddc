"""Edit evaluation: ReFACT's three rates, baselines, ground truth, the CLI's outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from diffloc.editing.cases import load_cases
from diffloc.editing.records import EditError, save_edited
from diffloc.evaluate import evaluate_methods, summarise
from diffloc.tracing.sampler import SamplerConfig
from diffloc.tracing.worlds import get_world
from diffloc_toy import world

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
    from diffloc.editing.editors import CrossattnOptions, Method, QuickfixOptions, case_options

    case = {"templates": ["one {} square"], "targets": ["one [blue] square"], "preserve": ["one green square"]}
    both = {"templates": ("one {} square",), "targets": ("one [blue] square",)}
    assert case_options("crossattn", case, {}) == CrossattnOptions(**both, preserve=("one green square",)), "UCE preserves by default"
    assert case_options("quickfix", case, {}) == QuickfixOptions(**both)
    assert case_options(Method("quickfix", preserve=True), case, {}) == QuickfixOptions(**both, preserve=("one green square",))
    assert case_options("refact", case, {}).templates == both["templates"]
    assert case_options("quickfix", case, {"quickfix": {"templates": ["{}"]}}) == QuickfixOptions(templates=("{}",)), \
        "the case's targets belong to its templates"
    assert case_options("refact", {"source": "red"}, {"refact": {"layer": 1}}).layer == 1
    with pytest.raises(EditError, match="quickfix takes no option 'layer'"):
        case_options("quickfix", {"source": "red"}, {"quickfix": {"layer": 1}})
    with pytest.raises(EditError, match="refact takes no preserve captions"):
        Method("refact", preserve=True)
    with pytest.raises(EditError, match="lambda must be > 0"):
        QuickfixOptions(lam=0)


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
    n_prompts = sum(len(v) for v in (cases[0].get('edit_variants', []), cases[0]['positives'], cases[0]['negatives'])) + 1
    assert len(table) == 3 * n_prompts * 2  # (edit + its variants + 5 positives + 5 negatives) per method and seed
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
    assert s["quickfix"]["efficacy"] == pytest.approx(e, abs=5e-5)  # summaries round to 4 decimals
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
    assert len(pd.read_parquet(tmp_path / "eval" / "eval.parquet")) == 3 * 19  # 9 edit prompts + 5 positives + 5 negatives
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


class NearestWorld:
    """A stub world whose answer is known: an image shows a caption's attributes when it is the
    image the unedited model draws for that caption and seed (nearest reference, to tolerance)."""

    def __init__(self, model, captions, seeds, cfg):
        import torch

        from diffloc.tracing.sampler import generate, initial_latents

        lat = torch.cat([initial_latents(model, torch.Generator().manual_seed(s)) for s in seeds])
        self.refs = [(img, world.parse_caption(c)) for c in captions
                     for img in generate(model, [c] * len(seeds), cfg=cfg, latents=lat)]

    parse_caption = staticmethod(world.parse_caption)

    def read(self, image):
        dist, attrs = min(((float((image - ref).abs().max()), a) for ref, a in self.refs), key=lambda t: t[0])
        return attrs if dist < 1e-4 else {}


def test_rates_on_a_case_with_a_known_answer(pixel_model):
    """The unedited model never shows the edit (efficacy 0), the oracle always does (efficacy 1)."""
    case = load_cases(CASES)[0]
    cfg = SamplerConfig(2, 2.0)
    captions = sorted({p[k] for p in [case["edit"], *case.get("edit_variants", []), *case["positives"], *case["negatives"]]
                       for k in ("prompt", "new")})
    truth = NearestWorld(pixel_model, captions, [0, 1], cfg)
    s = summarise(evaluate_methods(pixel_model, [case], methods=(), seeds=[0, 1], truth=truth, cfg=cfg))
    assert (s["unedited"]["gt_efficacy"], s["unedited"]["gt_generalization"], s["unedited"]["gt_specificity"]) == (0.0, 0.0, 1.0)
    assert (s["oracle"]["gt_efficacy"], s["oracle"]["gt_generalization"], s["oracle"]["gt_specificity"]) == (1.0, 1.0, 1.0)
    assert s["unedited"]["gt_others"] == s["oracle"]["gt_others"] == 1.0


def test_ground_truth_expects_every_edit_the_model_carries():
    from diffloc.evaluate import expected

    green = {"source": "green", "attribute": "colour", "new_value": "yellow"}
    assert expected(world, "one green square at the top", [green])["colour"] == "yellow"
    assert expected(world, "one red square at the top", [green])["colour"] == "red"
    swap = [{"source": "red", "attribute": "colour", "new_value": "blue"}, {"source": "blue", "attribute": "colour", "new_value": "red"}]
    assert expected(world, "a red circle", swap)["colour"] == "blue" and expected(world, "a blue circle", swap)["colour"] == "red"
    plural = {"source": "circles", "attribute": "object", "new_value": "triangle"}
    assert expected(world, "one red circle", [plural])["object"] == "circle", "whole words only"


def test_groups_edit_together_and_leave_the_model_clean(pixel_model):
    import torch

    from diffloc.editing.batch import Group
    from diffloc.editing.editors import Method

    cases = [load_cases(CASES)[i] for i in (0, 2)]  # red->blue with green->yellow
    before = [p.detach().clone() for p in pixel_model.text_encoder.parameters()]
    for sequential in (False, True):
        t = evaluate_methods(pixel_model, cases, methods=[Method("quickfix", preserve=True)], seeds=[0], cfg=SamplerConfig(2, 2.0), truth=get_world("toy"),
                             baselines=(), groups=[Group((0, 1))], sequential=sequential)
        assert set(t.n_edits) == {2} and set(t["mode"]) == {"sequential" if sequential else "batched"}
        assert set(t.method) == {Method("quickfix", preserve=True).label} and set(t.case) == {c["id"] for c in cases}
    assert all(torch.equal(a, b) for a, b in zip(before, pixel_model.text_encoder.parameters()))

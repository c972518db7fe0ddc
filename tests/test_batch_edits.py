"""Many edits at once: the stacked solve against numpy's lstsq, sequential undo, grouping, conflicts."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import tiny_pixel_model
from diffloc.editing import quickfix as qf
from diffloc.editing.batch import apply_cases, batch_preserve, check_conflicts, consecutive_groups, filled_groups
from diffloc.editing.cases import load_cases
from diffloc.editing.records import EditError, save_edited, undo_edit
from diffloc.tracing.sites import Site

SITE = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")
CASES = "experiments/cases/toy_edits.jsonl"
HAND = [{"id": "a", "source": "red", "target": "blue", "templates": ["one {} circle", "two {} squares at the top"],
         "preserve": ["one green circle", "two yellow squares at the top", "one yellow circle"]},
        {"id": "b", "source": "green", "target": "yellow", "templates": ["one {} circle", "a {} diamond"],
         "preserve": ["one red circle", "a blue diamond"]},
        {"id": "c", "source": "square", "target": "triangle", "templates": ["a red {}"], "preserve": []}]


@pytest.fixture()
def model():
    return tiny_pixel_model()


def _lstsq(W0: np.ndarray, K: np.ndarray, V: np.ndarray, lam: float) -> np.ndarray:
    """min ‖K Wᵀ − V‖² + λ‖W − W0‖² as one augmented least-squares problem: [K; √λ I] Wᵀ = [V; √λ W0ᵀ]."""
    A = np.vstack([K, np.sqrt(lam) * np.eye(K.shape[1])])
    B = np.vstack([V, np.sqrt(lam) * W0.T])
    return np.linalg.lstsq(A, B, rcond=None)[0].T


def _stacked_reference(model, targets: dict) -> np.ndarray:
    """Weight of one lstsq over HAND's keys and values, case c's values from ``targets[c]`` where given."""
    W0 = model.module(SITE).weight.detach().double().numpy()
    Ks, Vs = zip(*[qf.keys_values(model, SITE, c["source"], c["target"], c["templates"], targets.get(c["id"])) for c in HAND])
    Kp = qf.preserve_keys(model, SITE, ["one blue circle", "a red diamond"]).double().numpy()
    K = np.vstack([k.double().numpy() for k in Ks] + [Kp])
    V = np.vstack([v.double().numpy() for v in Vs] + [Kp @ W0.T])  # preserved keys keep W0 k
    return _lstsq(W0, K, V, 0.01)


def test_batched_quickfix_equals_an_independent_stacked_lstsq(model):
    want = _stacked_reference(model, {})
    recs = apply_cases(model, "quickfix", HAND, {"quickfix": {"preserve": ["one blue circle", "a red diamond"]}}, compose=False)
    assert len(recs) == 1 and recs[0].info["n_edits"] == 3 and recs[0].info["source"] == ["red", "green", "square"]
    got = model.module(SITE).weight.detach().double().numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_batched_values_expect_the_other_edits(model):
    """Case c's template 'a red {}' also holds case a's source: its value must come from 'a blue triangle'
    (written here by hand), and a's and b's templates hold no other source, so theirs stay."""
    want, independent = _stacked_reference(model, {"c": ["a blue [triangle]"]}), _stacked_reference(model, {})
    apply_cases(model, "quickfix", HAND, {"quickfix": {"preserve": ["one blue circle", "a red diamond"]}})
    got = model.module(SITE).weight.detach().double().numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    assert np.abs(got - independent).max() / np.abs(want).max() > 1e-3


def test_each_stacked_edit_maps_its_keys_to_its_values(model, monkeypatch):
    """Fewer pairs than dimensions: every edit's keys reach its values within λ's tolerance."""
    g = torch.Generator().manual_seed(0)
    d = model.module(SITE).weight.shape[1]
    pairs = {c["source"]: (torch.randn(5, d, generator=g), torch.randn(5, d, generator=g)) for c in HAND}  # 15 < 32 pairs
    monkeypatch.setattr(qf, "keys_values", lambda m, site, source, *a, **k: pairs[source])
    bias = model.module(SITE).bias.detach()
    recs = apply_cases(model, "quickfix", HAND, {"quickfix": {"lam": 1e-6}})
    W = model.module(SITE).weight.detach()
    for source, (K, V) in pairs.items():
        before = (K @ (W.double() - recs[0].delta.double()).float().T - V).norm()
        after = (K @ W.T - V).norm()
        assert after < 1e-3 * before, (source, float(after), float(before))
    assert torch.equal(model.module(SITE).bias, bias)


def test_sequential_edits_stack_and_undo_bit_exactly_in_reverse(model):
    w0 = {n: p.detach().clone() for n, p in model.text_encoder.named_parameters()}
    recs = apply_cases(model, "quickfix", HAND, sequential=True)
    assert len(recs) == 3 and [r.info["source"] for r in recs] == ["red", "green", "square"]
    with pytest.raises(EditError, match="does not match"):
        undo_edit(model, recs[0])  # the first edit cannot be undone under the later ones
    for rec in reversed(recs):
        undo_edit(model, rec)
    assert all(torch.equal(p, w0[n]) for n, p in model.text_encoder.named_parameters())


def test_sequential_refact_and_batched_crossattn(model):
    corpus = ["a photo of a red circle", "two green squares at the top", "a blue triangle"] * 4
    recs = apply_cases(model, "refact", HAND[:2], {"refact": {"layer": 0, "corpus": corpus, "max_steps": 2}}, sequential=True)
    assert [r.method for r in recs] == ["refact", "refact"]
    for rec in reversed(recs):
        undo_edit(model, rec)
    with pytest.raises(EditError, match="no batched solve"):
        apply_cases(model, "refact", HAND[:2], {"refact": {"layer": 0, "corpus": corpus}})
    recs = apply_cases(model, "crossattn", HAND)
    assert {r.info["n_edits"] for r in recs} == {3} and all(r.site.endswith(("to_k", "to_v")) for r in recs)


def test_batch_preserve_drops_captions_that_name_another_cases_source():
    kept = batch_preserve(HAND)
    # 'green' is case b's source, 'red' case a's; 'one yellow circle' is case b's target prompt
    assert kept == ("two yellow squares at the top", "a blue diamond")


def test_conflicting_edits_are_one_line_errors():
    with pytest.raises(EditError, match="maps 'red' to 'blue'.*maps it to 'green'"):
        check_conflicts([HAND[0], dict(HAND[0], id="x", target="green")])
    check_conflicts([HAND[0], dict(HAND[0], id="same")])  # the same edit twice is no conflict


def test_groups_of_the_committed_set():
    cases = load_cases(CASES)
    assert [g.cases for g in consecutive_groups(cases[:10], 4)] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    with pytest.raises(EditError, match="out of range; allowed 1..24"):
        consecutive_groups(cases, 25)
    with pytest.raises(EditError, match="conflicting edits"):
        consecutive_groups(cases, 12)  # red->blue and red->green in the first twelve
    for n in (1, 4, 12):
        groups = filled_groups(cases, n)
        assert sorted(i for g in groups for i in g.cases) == list(range(24)), "every case evaluated once"
        for g in groups:
            assert len(g.edited) == n and len({cases[i]["source"] for i in g.edited}) == n
    assert {cases[i]["id"] for i in filled_groups(cases, 4)[0].cases} >= {"colour-red-blue", "colour-green-yellow"}
    with pytest.raises(EditError, match="at most 19"):
        filled_groups(cases, 20)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "diffloc", *args], capture_output=True, text=True)


def test_cli_batch_edit_and_bad_input(tmp_path, model):
    src = save_edited(model, [], tmp_path / "base", source="nowhere")
    lines = open(CASES).read().splitlines()
    (tmp_path / "ok.jsonl").write_text(lines[0] + "\n" + lines[2] + "\n")  # red->blue with green->yellow
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + lines[4] + "\n")  # red->blue and red->green
    r = _cli("edit", "--method", "quickfix", "--cases", str(tmp_path / "ok.jsonl"), "--case-preserve", "--model", str(src),
             "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    edits = json.loads((tmp_path / "e" / "edit.json").read_text())["edits"]
    # case 1 keeps its yellow captions (yellow is only case 2's target) and drops its green ones (case 2's source)
    assert edits[0]["info"]["preserve"] and not any("green" in c for c in edits[0]["info"]["preserve"])
    assert len(edits) == 1 and edits[0]["info"]["n_edits"] == 2 and edits[0]["info"]["n_preserve_keys"] > 0
    bad = [
        (["edit", "--method", "quickfix", "--cases", str(tmp_path / "bad.jsonl"), "--model", str(src), "--out", str(tmp_path / "x")],
         "conflicting edits"),
        (["evaluate", "--model", str(src), "--cases", str(tmp_path / "ok.jsonl"), "--together", "3", "--out", str(tmp_path / "x")],
         "--together 3 out of range; allowed 1..2"),
        (["edit", "--method", "refact", "--cases", str(tmp_path / "ok.jsonl"), "--model", str(src), "--out", str(tmp_path / "x")],
         "no batched solve"),
        (["edit", "--method", "crossattn", "--source", "red", "--target", "blue", "--diagnose", "--model", str(src),
          "--out", str(tmp_path / "x")], "--diagnose patches text-encoder states"),
    ]
    for args, msg in bad:
        r = _cli(*args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_batched_nullspace_keeps_the_batch_preserve_keys(model):
    """<editor>+nullspace in one stacked solve: the batch's preserve captions' outputs at the edited layer stay
    (ΔW on their keys is zero up to the rank threshold), where +preserve (soft) moves them."""
    from diffloc.editing.editors import Method

    captions = list(batch_preserve(HAND[:2]))
    Kp = qf.preserve_keys(model, SITE, captions).double()
    W0 = model.module(SITE).weight.detach().double().clone()
    moved = {}
    for method in (Method("quickfix", preserve=True), Method("quickfix", preserve=True, nullspace=True)):
        recs = apply_cases(model, method, HAND[:2], compose=False)
        dW = model.module(SITE).weight.detach().double() - W0
        moved[method.label] = float((Kp @ dW.T).norm() / (Kp @ W0.T).norm())
        assert recs[0].info["preserve_mode"] == ("nullspace" if method.nullspace else "soft")
        for r in reversed(recs):
            undo_edit(model, r)
    assert moved["quickfix+nullspace"] < 1e-5 < moved["quickfix+preserve"]

"""ReFACT against what it promises: C over every position the UNet reads, v* reached, a cache that
goes stale with upstream weights, the last layer refused, and p logged for the final δ."""
from __future__ import annotations

import itertools

import pytest
import torch

from diffloc.editing.editors import EDITORS, case_options
from diffloc.editing.records import EditError, undo_edit
from diffloc.editing.refact import (
    REFACT_TEMPLATES,
    covariance,
    covariance_key,
    edit_keys,
    fc2_site,
    optimise_v,
    problem_p,
    refact,
    v_problem,
)
from diffloc.tracing.errors import DifflocInputError
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.testing import tiny_pixel_model

_TPL = ("a photo of {n} {c} {s}s on a {b} background", "{n} {c} {s}s", "{c} {s}", "an image of {n} {c} {s}s")
_ATTRS = itertools.product(("one", "two", "three"), ("red", "green", "blue", "yellow"), ("circle", "square", "triangle", "diamond"),
                           ("plain", "striped", "checkered"))
CORPUS = list(dict.fromkeys(t.format(n=n, c=c, s=s, b=b) for n, c, s, b in _ATTRS for t in _TPL))  # 256 captions, short and long


@pytest.fixture()
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLOC_CACHE", str(tmp_path / "cache"))
    return tiny_pixel_model()


def _encode(model, texts):
    with torch.no_grad():
        return model.text_encoder(model.tokenize(texts)).last_hidden_state  # [B, 77, D]


def _leak(model, positions: str) -> tuple[float, float]:
    """(relative change of the blank prompt's 77 outputs, its mean per-token change / the subject token's change)."""
    edit = MarkedPrompt.parse("a photo of two [red] circles")
    j = edit.positions(model.tokenizer)[-1]
    blank0, edit0 = _encode(model, [""]), _encode(model, [edit.text])
    recs = refact(model, "red", "blue", layer=1, corpus=CORPUS, cov_positions=positions, max_steps=10)
    blank1, edit1 = _encode(model, [""]), _encode(model, [edit.text])
    for rec in recs:
        undo_edit(model, rec)
    subject = (edit1 - edit0)[0, j].norm()
    assert subject > 0.05, "the edit moved its own subject token"
    return float((blank1 - blank0).norm() / blank0.norm()), float((blank1 - blank0)[0].norm(dim=-1).mean() / subject)


def test_covariance_over_all_positions_leaves_the_blank_prompt_alone(model):
    """The UNet reads all 77 positions, the blank CFG prompt's too: C over them keeps the edit off padding."""
    rel_all, per_token_all = _leak(model, "all")
    rel_tok, per_token_tok = _leak(model, "tokens")
    assert rel_all < 0.1, f"the blank prompt's outputs moved by {rel_all:.3f} of their norm"
    assert rel_tok > 4 * rel_all, (rel_all, rel_tok)  # C over BOS..EOS only writes into padding
    assert per_token_all < 0.2 * per_token_tok, (per_token_all, per_token_tok)


def test_v_star_is_reached_at_the_edit_key(model):
    site = fc2_site(model, 1)
    problem = v_problem(model, "text_encoder", "red", "blue", REFACT_TEMPLATES)
    k_star, k_bar = edit_keys(model, site, problem)
    v0, delta, _ = optimise_v(model, site, problem, max_steps=8)  # deterministic: refact finds the same δ
    assert delta.norm() > 0.1 * v0.norm()
    assert (k_star - k_bar).norm() > 0.05 * k_star.norm(), "k* (edit prompt) and k̄ (context mean) differ"
    recs = refact(model, "red", "blue", layer=1, corpus=CORPUS, max_steps=8)
    w = model.module(site)
    out = w.weight.detach() @ k_star + w.bias.detach()  # (W + ΔW) k* + b
    torch.testing.assert_close(out, v0 + delta, rtol=1e-4, atol=1e-4)
    assert torch.linalg.matrix_rank(recs[0].delta.float()) == 1


def test_a_stale_covariance_is_not_reused_after_an_upstream_edit(model):
    site = fc2_site(model, 1)
    key0, C0 = covariance_key(model, site, CORPUS), covariance(model, site, CORPUS)
    with torch.no_grad():
        model.module(fc2_site(model, 1)).weight.mul_(1.5)  # the layer's own fc2 is downstream of its input
    assert covariance_key(model, site, CORPUS) == key0
    with torch.no_grad():
        model.module("text_encoder:encoder.layers.0.mlp.fc1").weight.mul_(1.5)  # upstream: layer 0
    key1 = covariance_key(model, site, CORPUS)
    C1 = covariance(model, site, CORPUS)
    assert key1 != key0 and not torch.allclose(C1, C0), "C was read from the stale cache"
    with torch.no_grad():
        model.module("text_encoder:encoder.layers.1.self_attn.q_proj").weight.mul_(1.5)  # upstream: layer 1's attention
    assert covariance_key(model, site, CORPUS) != key1
    assert covariance_key(model, site, CORPUS, positions="tokens") != covariance_key(model, site, CORPUS)


def test_the_last_layer_is_refused_in_one_line(model):
    last = model.sites.text_layers["text_encoder"] - 1
    for call in (lambda: refact(model, "red", "blue", layer=last, corpus=CORPUS),
                 lambda: EDITORS.get("refact").apply(model, "red", "blue", layer=last, corpus=CORPUS)):
        with pytest.raises(EditError) as e:
            call()
        assert isinstance(e.value, DifflocInputError) and "\n" not in str(e.value)
        assert f"last layer ({last})" in str(e.value) and f"allowed layers 0..{last - 1}" in str(e.value)


def test_logged_p_is_p_of_the_final_delta_and_of_the_edited_weights(model):
    site = fc2_site(model, 0)
    problem = v_problem(model, "text_encoder", "red", "blue", REFACT_TEMPLATES)
    k_star, _ = edit_keys(model, site, problem)
    rec = refact(model, "red", "blue", layer=0, corpus=CORPUS, max_steps=6)[0]
    assert rec.info["opt_steps"] == 5  # 6 forward passes, the last one scores the final δ
    edited = problem_p(model, site, problem)  # recomputed from the final weights
    assert abs(rec.info["edited_p"] - edited) < 1e-4
    delta = rec.delta.float() @ k_star  # ΔW k* = v* − v₀ = δ
    undo_edit(model, rec)
    assert abs(rec.info["final_p"] - problem_p(model, site, problem, delta)) < 1e-4
    assert abs(problem_p(model, site, problem) - edited) > 1e-3, "the edit changed p"


def test_refact_gets_the_cases_grammatical_targets(model):
    case = {"source": "one", "templates": ["a photo of {} red circle"], "targets": ["a photo of [two] red circles"]}
    opts = case_options("refact", case, {"refact": {"corpus": CORPUS}})
    assert opts.targets == ("a photo of [two] red circles",)
    problem = v_problem(model, "text_encoder", "one", "two", opts.templates, opts.targets)
    assert problem.texts == ["one", "a photo of one red circle"]  # the edit prompt (the subject), then the template
    with torch.no_grad():
        want = model.text_encoder(model.tokenize(["two", "a photo of two red circles"])).pooler_output
    torch.testing.assert_close(problem.cands[:, 0], want)  # each prompt's target candidate: its own target text

"""The exact sweep skips rows that cannot change the image, and its table equals a full run's."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import diffloc.tracing.exact as exact
from diffloc.tracing.exact import reused_rows
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import Restore, make_corruption
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig, text_rows

PROMPTS = ("a photo of two [red] circles at the top on a plain background",
           "three [blue] squares in the middle, striped background")


def _cfg(**kw):
    base = dict(model="tiny", attribute="colour", prompts=PROMPTS, seeds=(0,), num_inference_steps=3, batch_size=64)
    base.update(kw)
    return TraceConfig(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pixel_model, scorer):
    skipped = run_sweep(_cfg(), tmp_path_factory.mktemp("skip"), model=pixel_model, scorer=scorer)
    mp = pytest.MonkeyPatch()
    mp.setattr(exact, "reused_rows", lambda model, prompt, rows, corruption: np.full(len(rows), -1))  # generate every row
    try:
        full = run_sweep(_cfg(), tmp_path_factory.mktemp("full"), model=pixel_model, scorer=scorer)
    finally:
        mp.undo()
    return skipped, full


def test_skipping_sweep_equals_full_run(runs):
    skipped, full = runs
    assert not (full.skipped_noop.any() or full.skipped_duplicate.any()), "the switch turns skipping off"
    assert skipped.skipped_duplicate.sum() > 0, "the tiny model has rows that repeat another row's embeddings"
    cols = [c for c in full.columns if c not in ("skipped_noop", "skipped_duplicate")]
    pd.testing.assert_frame_equal(skipped[cols], full[cols], check_exact=True)


def test_duplicate_rows_repeat_an_earlier_row_of_their_unit(pixel_model):
    """Rule (c) against an independent encoding of each (duplicate, source) pair on its own."""
    from diffloc.tracing.exact import reused_rows
    from diffloc.tracing.sampler import patched_embeddings

    prompt = MarkedPrompt.parse(PROMPTS[0])
    corruption = make_corruption(pixel_model, prompt.positions(pixel_model.tokenizer), torch.Generator().manual_seed(3))
    rows = [r.restore for r in text_rows(pixel_model, prompt, _cfg(), "text_encoder")]
    source = reused_rows(pixel_model, prompt.text, rows, corruption)
    dups = [(i, s - 2) for i, s in enumerate(source) if s >= 2]
    assert dups and all(j < i and source[j] == -1 for i, j in dups), "a duplicate points to an earlier generated row"
    for i, j in dups:
        e = patched_embeddings(pixel_model, prompt.text, [rows[j], rows[i]], corruption).embeds
        assert torch.equal(e[1], e[2]) and not torch.equal(e[1], e[0])
    generated = [i for i, s in enumerate(source) if s == -1]
    e = patched_embeddings(pixel_model, prompt.text, [rows[i] for i in generated], corruption).embeds
    flat = e[1:].flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(generated), "the generated rows are all different"


def test_skipped_rows_are_exactly_those_before_the_first_corrupted_token(runs, pixel_model):
    skipped, _ = runs
    tok = pixel_model.tokenizer
    expected = 0
    for p in PROMPTS:  # one seed, one noise sample: {hidden, attn, mlp} x layers x tokens before the attribute
        first = MarkedPrompt.parse(p).positions(tok)[0]
        expected += 3 * pixel_model.sites.text_layers["text_encoder"] * first
    n = int(skipped.skipped_noop.sum())
    assert n > 0 and n == expected
    rows = skipped[skipped.skipped_noop]
    firsts = rows.prompt.map(lambda p: MarkedPrompt.parse(p).positions(tok)[0])
    assert (rows.component == "text_encoder").all() and (rows.token < firsts).all()
    assert (rows.clip_score == rows.clip_corrupted).all() and (rows.effect_clip.fillna(0) == 0).all()  # NaN: clean == corrupted


def test_embedding_rule_finds_sdxl_unread_last_layer():
    """SDXL reads both text encoders' penultimate layer, and the second one's last layer only at EOS (the
    pooled embedding): restoring a last layer is a no-op at any token, or at any token but EOS."""
    from diffloc.tracing.models import load_model

    model = load_model("tiny-sdxl")
    prompt = MarkedPrompt.parse(PROMPTS[0])
    pos = prompt.positions(model.tokenizer)
    corruption = make_corruption(model, pos, torch.Generator().manual_seed(3))
    rows = [r for c in ("text_encoder", "text_encoder_2") for r in text_rows(model, prompt, _cfg(), c)]
    skip = reused_rows(model, prompt.text, [r.restore for r in rows], corruption) == 1
    last = {c: model.sites.text_layers[c] - 1 for c in ("text_encoder", "text_encoder_2")}
    eos = len(prompt.tokens(model.tokenizer)) - 1
    expected = [r.token < pos[0] or (r.layer == last[r.component] and (r.component == "text_encoder" or r.token != eos)) for r in rows]
    assert list(skip) == expected
    assert not (reused_rows(model, prompt.text, [Restore((model.sites.denoiser[0],))], corruption) == 1).any(), "denoiser rows are never skipped"

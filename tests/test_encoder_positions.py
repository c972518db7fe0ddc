"""Per-encoder word positions: on SD3 and FLUX a marked word is corrupted in every text encoder at
that encoder's own token positions (CLIP BPE vs T5 SentencePiece), with that encoder's σ; text rows
count their own encoder's tokens and roles; ``--text-encoder`` restricts corruption and rows to one."""
from __future__ import annotations

import json

import pytest
import torch

from diffloc.tracing.corruption import CORRUPTIONS, replacement
from diffloc.tracing.encoders import corrupted_encoders, encoder_words, word_positions
from diffloc.tracing.errors import ConfigError
from diffloc.tracing.exact import reused_rows
from diffloc.tracing.models import load_model
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import Restore, corruption_hooks, embedding_site, encode
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig, traced_components

WORD = "a photo of a [crimson] circle"  # CLIP: one BPE token; the replicas' T5 tokenizer: ▁c r i m s o n
T5 = {"tiny-sd3": "text_encoder_3", "tiny-flux": "text_encoder_2"}
_cache: dict = {}


def tiny(spec: str):
    if spec not in _cache:
        _cache[spec] = load_model(spec)
    return _cache[spec]


def word_ids_of(tok, text: str, word: str) -> tuple[int, ...]:
    """Independent reference: the positions the tokenizer's own word ids give the word (n-th whitespace word)."""
    index = text.split().index(word)
    return tuple(i for i, w in enumerate(tok(text).word_ids()) if w == index)


def seen_embeddings(model, text: str, fns: dict) -> dict[str, torch.Tensor]:
    """{component: the token embeddings [1, L, D] its encoder hands its first layer}, after ``fns``' hooks."""
    seen, fns = {}, {k: list(v) for k, v in fns.items()}
    for c in model.text_components:
        fns.setdefault(embedding_site(model, c), []).append(lambda mod, i, o, c=c: seen.__setitem__(c, o.detach().clone()))
    with torch.no_grad():
        encode(model, [text], fns)
    return seen


def _cfg(**kw):
    base = dict(model="tiny-sd3", attribute="colour", noise_samples=1, noise_scale=3.0, seeds=(0,))
    return TraceConfig(**{**base, **kw})


@pytest.mark.parametrize("spec", sorted(T5))
def test_a_word_gets_each_tokenizers_own_positions(spec):
    m, p = tiny(spec), MarkedPrompt.parse(WORD)
    pos = word_positions(m, p)
    assert set(pos) == set(m.text_components)
    for comp, got in pos.items():
        assert got == word_ids_of(m.tokenizer_for(comp), p.text, "crimson"), comp
    assert pos["text_encoder"] == (5,), "CLIP: BOS, then 'a photo of a' and the word as one token"
    assert pos[T5[spec]] == tuple(range(4, 11)), "T5: no BOS, the word in 7 pieces"


@pytest.mark.parametrize("spec", sorted(T5))
def test_noise_lands_exactly_on_each_encoders_positions(spec):
    m, p = tiny(spec), MarkedPrompt.parse(WORD)
    corr = CORRUPTIONS.get("gaussian").make(_cfg(model=spec), m, p, seed=0, index=0)
    clean, noisy = seen_embeddings(m, p.text, {}), seen_embeddings(m, p.text, corruption_hooks(m, corr))
    for comp in m.text_components:
        delta = (noisy[comp] - clean[comp])[0]  # [L, D]
        changed = tuple(torch.nonzero(delta.abs().amax(-1)).flatten().tolist())
        assert changed == word_ids_of(m.tokenizer_for(comp), p.text, "crimson") == corr.at(comp), comp
        assert torch.allclose(delta[list(changed)], corr.noise[comp], atol=1e-6)
        assert 2.0 < float(corr.noise[comp].std()) / m.embed_std(comp) < 4.0, "3 σ of this encoder's own table"
    assert m.embed_std(T5[spec]) > 10 * m.embed_std("text_encoder"), "σ is measured per encoder (T5's table is on another scale)"


def test_text_encoder_option_corrupts_and_traces_one_encoder():
    m, p = tiny("tiny-sd3"), MarkedPrompt.parse(WORD)
    corr = CORRUPTIONS.get("gaussian").make(_cfg(text_encoder="text_encoder_3"), m, p, seed=0, index=0)
    assert set(corr.noise) == {"text_encoder_3"} and corr.at("text_encoder_3") == tuple(range(4, 11))
    clean, noisy = seen_embeddings(m, p.text, {}), seen_embeddings(m, p.text, corruption_hooks(m, corr))
    assert torch.equal(clean["text_encoder"], noisy["text_encoder"]) and torch.equal(clean["text_encoder_2"], noisy["text_encoder_2"])
    assert traced_components(_cfg(text_encoder="text_encoder_3"), m) == ["text_encoder_3", "transformer"]
    assert traced_components(_cfg(component="text_encoder"), m) == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    with pytest.raises(ConfigError) as err:
        corrupted_encoders(m, "text_encoder_9")
    assert str(err.value) == "unknown --text-encoder 'text_encoder_9' for tiny-sd3; allowed: text_encoder, text_encoder_2, text_encoder_3"
    with pytest.raises(ConfigError, match="bad --text-encoder"):
        _cfg(text_encoder="unet")


def test_cli_names_the_text_encoders_of_the_model(tmp_path, capsys):
    from diffloc.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["trace", "--model", "tiny-flux", "--attribute", "colour", "--scorer", "toy", "--text-encoder", "text_encoder_3",
              "--out", str(tmp_path / "o")])
    assert done.value.code == 2
    want = "error: unknown --text-encoder 'text_encoder_3' for tiny-flux; allowed: text_encoder, text_encoder_2"
    assert capsys.readouterr().err.strip().splitlines() == [want]


def test_replacement_is_the_other_caption_in_every_encoder():
    m = tiny("tiny-sd3")
    clean, other = MarkedPrompt.parse("a photo of a [red] circle"), MarkedPrompt.parse("a photo of a [blue] circle")
    c = replacement(m, clean, other)
    assert {k: c.at(k) for k in c.noise} == {"text_encoder": (5,), "text_encoder_2": (5,), "text_encoder_3": (4,)}
    with torch.no_grad():
        got = encode(m, [clean.text], corruption_hooks(m, c))
        want = encode(m, [other.text])
    assert torch.allclose(got.embeds, want.embeds, atol=1e-5) and torch.allclose(got.pooled, want.pooled, atol=1e-5)
    assert replacement(m, clean, MarkedPrompt.parse("a photo of a [crimson] circle")) is None, "T5 splits it: positions cannot align"
    only_clip = replacement(m, clean, MarkedPrompt.parse("a photo of a [crimson] circle"), ("text_encoder", "text_encoder_2"))
    assert only_clip is not None and set(only_clip.noise) == {"text_encoder", "text_encoder_2"}


def test_causal_no_op_rule_holds_for_clip_only():
    """Rule (a): a CLIP row before the word cannot change the image (causal mask); a T5 row can (T5 attends both ways)."""
    m, p = tiny("tiny-sd3"), MarkedPrompt.parse(WORD)
    corr = CORRUPTIONS.get("gaussian").make(_cfg(), m, p, seed=0, index=0)
    clip, t5 = m.sites.text_layer(0, "text_encoder")["hidden"], m.sites.text_layer(0, "text_encoder_3")["hidden"]
    rows = [Restore((clip,), tokens=(1,)), Restore((t5,), tokens=(1,))]
    assert list(reused_rows(m, p.text, rows, corr)) == [1, -1]


@pytest.mark.slow  # about 13 s: 240 T5 rows checked for no-ops through all three encoders
def test_t5_rows_carry_t5_tokens_and_roles(tmp_path, scorer, monkeypatch):
    import diffloc.tracing.exact as exact

    m, p = tiny("tiny-sd3"), MarkedPrompt.parse("a [crimson] bird")
    # labels and no-op flags are the subject here, not images: the denoiser is replaced by blank images
    monkeypatch.setattr(exact, "patched_generate", lambda model, prompt, rows, *a, **k: torch.zeros(1 + len(rows), 3, 64, 64))
    cfg = _cfg(prompts=(p.marked,), component="text_encoder", text_encoder="text_encoder_3", text_kinds=("mlp",),
               num_inference_steps=1, batch_size=512, bootstrap=10)
    table = run_sweep(cfg, tmp_path, model=m, scorer=scorer)
    rows = table[table.component == "text_encoder_3"]
    tok = m.tokenizer_for("text_encoder_3")
    pieces = tok.convert_ids_to_tokens(tok(p.text).input_ids)  # ▁a ▁c r i m s o n ▁bird </s>
    assert set(table.component) == {"clean", "corrupted", "text_encoder_3"} and len(rows) == 24 * len(pieces)
    subject = word_ids_of(tok, p.text, "crimson")
    for r in rows.itertuples():
        assert r.token_str == pieces[r.token]
        want = ("eos" if r.token == len(pieces) - 1 else "last_subject" if r.token == subject[-1] else "subject" if r.token in subject
                else "before" if r.token < subject[0] else "after")
        assert r.token_role == want, (r.token, r.token_role)
    assert not rows[rows.token < subject[0]].skipped_noop.any(), "T5 is bidirectional: its rows before the word are generated"
    meta = json.loads((tmp_path / "meta.json").read_text())["corruption"]
    assert meta["encoders"] == ["text_encoder_3"] and meta["positions"] == [{"text_encoder_3": list(subject)}]
    words = encoder_words(m, p, "text_encoder_3")
    assert not words.bos and words.positions == subject and encoder_words(m, p, "text_encoder").bos

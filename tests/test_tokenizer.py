"""diffloc's CLIP tokenizer (built offline from open_clip's BPE file) against open_clip's own tokenizer.

200 captions drawn deterministically from word lists with mixed case, punctuation, digits, accents,
umlauts, Cyrillic, CJK, Hangul, emoji, runs of whitespace and over-long captions (truncation); a
quarter also carry what CLIP's ftfy/html cleaning rewrites (curly quotes, ligatures, full-width
letters, HTML entities). Ids are compared at all 77 positions, padding aside: open_clip pads with
id 0, Stable Diffusion v1's tokenizer (and diffloc's) with ``<|endoftext|>`` (49407).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from diffloc.tracing.tokenizer import clip_tokenizer, vocab_and_merges

open_clip = pytest.importorskip("open_clip")
from open_clip.tokenizer import basic_clean, whitespace_clean  # noqa: E402

WORDS = ["a", "photo", "of", "Two", "RED", "circles", "at", "the", "top", "Striped", "background", "Van", "Gogh",
         "don't", "it's", "we'll", "dog's", "rock-and-roll", "e-mail", "3D", "x2", "1999", "42nd", "naïve"]
UNICODE = ["café", "Crème", "brûlée", "über", "Müller", "straße", "señor", "Ångström", "Ωmega", "Привет", "猫", "東京タワー",
           "한국어", "🐱", "🚀🌕", "👍🏽", "❤️", "…", "—", "½"]
CLEANED = ["“quoted”", "‘single’", "ﬁne", "ＡＢＣ", "&amp;", "&lt;tag&gt;", "&#39;"]  # CLIP's cleaning rewrites these
PUNCT = [",", ".", "!", "?", ";", ":", "(", ")", "[", "]", "/", "#", "@", "%", "&", "*", "'", '"', "...", "--", "  ", "\t"]
KW = dict(padding="max_length", max_length=77, truncation=True)


def captions(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        length = rng.choice([2, 3, 6, 10, 15]) if len(out) % 20 else 90  # every 20th runs past 77 tokens
        parts = []
        for _ in range(length):
            word = rng.choice(rng.choices([WORDS, UNICODE, PUNCT], weights=[6, 3, 2])[0])
            parts.append(word.upper() if rng.random() < 0.1 else word)
        if len(out) % 4 == 3:  # a quarter carry one word CLIP's cleaning rewrites
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(CLEANED))
        out[(" " if rng.random() < 0.7 else "").join(parts)] = None
    return list(out)


def _ours(tok, texts) -> torch.Tensor:
    return torch.tensor(tok(texts, **KW).input_ids)  # [B, 77]


def _same_as_open_clip(ours: torch.Tensor, ref: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Per caption: ids equal at all 77 positions, with open_clip's 0-padding read as ``pad_id``."""
    length = (ref == 49407).int().argmax(1) + 1  # BOS .. EOS, then open_clip's zeros
    pad = torch.arange(77)[None] >= length[:, None]
    assert (ref[pad] == 0).all()
    return (torch.where(pad, pad_id, ref) == ours).all(1)


def test_ids_equal_open_clips_at_all_77_positions():
    texts = captions()
    cleaned = [whitespace_clean(basic_clean(t)) for t in texts]
    changed = torch.tensor([c != " ".join(t.split()) for t, c in zip(texts, cleaned)])
    assert len(set(texts)) == 200 and 45 <= int(changed.sum()) <= 55
    ref = open_clip.tokenize(texts, context_length=77)  # [200, 77]
    assert (ref[:, -1] == 49407).sum() >= 10, "long captions end in EOS at position 76"
    tok = clip_tokenizer()
    assert tok.pad_token_id == tok.eos_token_id == 49407
    same_clean = _same_as_open_clip(_ours(tok, cleaned), ref, tok.pad_token_id)
    assert same_clean.all(), f"BPE differs on {texts[int((~same_clean).nonzero()[0])]!r}"
    same_raw = _same_as_open_clip(_ours(tok, texts), ref, tok.pad_token_id)
    assert same_raw[~changed].all(), f"differs on {texts[int((~same_raw & ~changed).nonzero()[0])]!r}"
    assert not same_raw[changed].all(), "text CLIP's cleaning rewrites gets other ids without it (documented)"


def test_an_sd_tokenizer_folder_gives_the_same_ids(tmp_path):
    """SD ships vocab.json + merges.txt: transformers builds the same backend, so the ids SD's pipeline uses."""
    vocab, merges = vocab_and_merges()
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, **special}))
    texts = captions()
    assert torch.equal(_ours(CLIPTokenizer.from_pretrained(tmp_path), texts), _ours(clip_tokenizer(), texts))


def test_the_toy_models_saved_tokenizer_is_the_same():
    folder = Path(__file__).resolve().parents[1] / "experiments" / "toy" / "weights" / "model"
    saved = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    texts = captions(40, seed=1)
    assert torch.equal(_ours(saved, texts), _ours(clip_tokenizer(), texts))

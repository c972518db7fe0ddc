"""Counterfactual corruption: a replacement is exactly the other caption's encoding, and the
modes plan what they say."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffloc.tracing.corruption import CORRUPTIONS, counterfactuals, replacement
from diffloc.tracing.errors import ConfigError
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import corruption_hooks, encode
from diffloc.tracing.worlds import get_world


def _cfg(**kw):
    base = dict(attribute="count", noise_samples=2, noise_scale=3.0, counterfactuals=None)
    return SimpleNamespace(**{**base, **kw})


def test_replacement_encodes_exactly_the_counterfactual_caption(pixel_model):
    m = pixel_model
    clean = MarkedPrompt.parse("a photo of [one] green circle at the top on a plain background")
    other = MarkedPrompt.parse("a photo of [two] green circles at the top on a plain background")
    c = replacement(m, clean, other)
    assert c is not None and len(c.positions) == 2  # "one" and "circle" both change
    with torch.no_grad():
        got = encode(m, [clean.text], corruption_hooks(m, c)).embeds
        want = encode(m, [other.text]).embeds
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_counterfactuals_come_from_alternatives_or_the_world(pixel_model):
    toy = get_world("toy")
    p = MarkedPrompt.parse("one [green] diamond at the bottom, checkered background")
    assert [v for v, _ in counterfactuals(toy, p, "colour")] == ["red", "blue", "yellow"]
    q = MarkedPrompt.parse("a painting of a house in the style of [Van Gogh|Monet|Picasso]")
    assert [v for v, _ in counterfactuals(get_world("sd"), q, "style")] == ["Monet", "Picasso"]
    with pytest.raises(ConfigError, match="alternatives"):
        counterfactuals(get_world("sd"), MarkedPrompt.parse("a painting by [Monet]"), "style")


def test_a_caption_of_another_length_is_skipped(pixel_model):
    clean = MarkedPrompt.parse("a painting in the style of [Monet|Van Gogh|Picasso]")
    assert replacement(pixel_model, clean, clean.with_subject("Van Gogh")) is None  # 1 token vs 2
    mode = CORRUPTIONS.get("replace")
    cfg = _cfg(attribute="style")
    n = mode.samples(cfg, pixel_model, clean)
    assert n == len([v for v, _ in counterfactuals(get_world("sd"), clean, "style")
                     if replacement(pixel_model, clean, clean.with_subject(v)) is not None])
    assert "Van Gogh" in mode.skipped(cfg, pixel_model, clean)


def test_modes_count_their_samples(pixel_model):
    p = MarkedPrompt.parse("a photo of [one] green circle at the top on a plain background")
    assert CORRUPTIONS.get("gaussian").samples(_cfg(), pixel_model, p) == 2
    assert CORRUPTIONS.get("replace").samples(_cfg(), pixel_model, p) == 2
    assert CORRUPTIONS.get("replace").samples(_cfg(counterfactuals=1), pixel_model, p) == 1
    assert CORRUPTIONS.get("replace").label(_cfg(), pixel_model, p, 1) == "three"


def test_a_plural_that_tokenises_longer_is_skipped_and_said(pixel_model):
    p = MarkedPrompt.parse("a photo of [one] green triangle at the top on a plain background")  # 'triangles' = 'tri' + 'angles'
    mode = CORRUPTIONS.get("replace")
    assert mode.samples(_cfg(), pixel_model, p) == 0
    assert mode.skipped(_cfg(), pixel_model, p) == ["two", "three"]


def _pairs_table():
    """Two prompts x two seeds; pair (0, 0) flips gt, (0, 1) drops CLIP 6 points, (1, *) barely move."""
    import pandas as pd

    recs = []
    for (p, s), (c, k, gc, gk) in {(0, 0): (90, 89, 1, 0), (0, 1): (90, 84, 1, 1), (1, 0): (90, 88, 1, 1), (1, 1): (90, 91, 1, 1)}.items():
        for kind, score in (("clean", c), ("corrupted", k), ("restored", (c + k) / 2)):
            recs.append(dict(prompt_index=p, seed=s, noise_index=0, kind=kind, component="text_encoder" if kind == "restored" else kind,
                             site="text_encoder:encoder.layers.0" if kind == "restored" else "", layer=0, token_role="subject",
                             window_start=-1, window_end=-1, clip_score=score, clip_clean=c, clip_corrupted=k,
                             gt_score=gc if kind != "corrupted" else gk, gt_clean=gc, gt_corrupted=gk))
    return pd.DataFrame(recs)


def test_informative_pairs_are_gt_flips_or_drops_of_min_drop():
    from diffloc.tracing.causal import pair_signal

    pairs = pair_signal(_pairs_table(), "clip", min_drop=5.0)
    assert pairs.informative.tolist() == [True, True, False, False]
    assert pairs.gt_flip.tolist() == [True, False, False, False]
    assert pair_signal(_pairs_table(), "clip", min_drop=0.5).informative.tolist() == [True, True, True, False]  # a rise is no drop


def test_swap_pairs_are_one_per_altered_value_and_inform_when_the_references_differ():
    """LocoGen's swap: prompt 0 against 'blue' (the altered image reads another value: 1 -> 0) and 'green' (no change),
    prompt 1 against 'blue' (CLIP moves 8 points the other way): one pair per altered value, either direction informs."""
    import pandas as pd

    from diffloc.tracing.causal import informative_rows, pair_signal

    recs = []
    for (p, alt), (c, k, gc, gk) in {(0, "blue"): (80, 90, 0, 1), (0, "green"): (85, 86, 1, 1), (1, "blue"): (90, 82, 1, 1)}.items():
        for kind in ("clean", "corrupted", "swap"):
            recs.append(dict(prompt_index=p, seed=0, noise_index=0, alt_value=alt, kind=kind, site="" if kind != "swap" else "unet:x",
                             clip_score=c, clip_clean=c, clip_corrupted=k, gt_score=gc, gt_clean=gc, gt_corrupted=gk))
    table = pd.DataFrame(recs)
    pairs = pair_signal(table, "clip", min_drop=5.0)
    assert list(zip(pairs.prompt_index, pairs.alt_value)) == [(0, "blue"), (0, "green"), (1, "blue")]
    assert pairs.gt_flip.tolist() == [True, False, False] and pairs.informative.tolist() == [True, False, True]
    assert sorted(set(zip(informative_rows(table).prompt_index, informative_rows(table).alt_value))) == [(0, "blue"), (1, "blue")]


def test_causal_sites_counts_informative_pairs_and_refuses_to_call_on_too_few(tmp_path):
    import json

    from diffloc.tracing.causal import write_causal_sites

    out = write_causal_sites(_pairs_table(), tmp_path / "c.json", threshold=0.4, bootstrap=50, min_drop=5.0, min_informative=8)
    assert (out["n_pairs"], out["n_informative"], out["n_gt_flips"]) == (4, 2, 1)
    assert out["clip"]["causal"] == [] and "not enough signal: 2 informative of 4 pairs" in out["clip"]["note"]
    held = out["clip"]["not_enough_signal"]
    assert held and held[0]["n_informative"] == 2 and held[0]["n_pairs"] == 4
    called = write_causal_sites(_pairs_table(), tmp_path / "d.json", threshold=0.4, bootstrap=50, min_drop=5.0, min_informative=2)
    assert [e["site"] for e in called["clip"]["causal"]] == ["text_encoder:encoder.layers.0"]
    assert json.loads((tmp_path / "d.json").read_text())["n_informative"] == 2

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

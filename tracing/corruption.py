"""Corruption modes: how a trace disturbs the attribute words. Gaussian noise (the paper), or a counterfactual word.

Usage::

    mode = CORRUPTIONS.get("replace")                       # or "gaussian"
    n = mode.samples(cfg, model, prompt)                   # corruption samples of one prompt
    corruption = mode.make(cfg, model, prompt, seed=0, index=1)
    corruption.label                                        # 'blue' (replace) or 'noise 1' (gaussian)

``gaussian``: noise of ``noise_scale`` × σ on the marked tokens' input embeddings, one sample
per ``index`` (ROME's protocol; σ is the std of the model's token embeddings). A model with
several text encoders (SD3: CLIP-L, CLIP-G, T5; FLUX: CLIP, T5) gets the noise in every encoder,
each at its own tokenizer's positions of the word and with its own σ (``cfg.text_encoder``
names one encoder to corrupt alone; :mod:`tracing.encoders`).

``replace`` (symmetric token replacement; Zhang & Nanda 2024, Heimersheim & Nanda 2024): the
marked words are replaced by another value of the same attribute (red -> blue). It stays in
distribution and flips the output wherever the model follows its prompt. Values come from the
marked prompt's own alternatives (``[Van Gogh|Monet|Picasso]``) or from the world
(``world.counterfactuals(marked, attribute)``, in the world's own grammar: 'one circle' ->
'two circles'). Replacing token ids is *exactly* adding, at each position where the two
captions' ids differ, the difference of their token embeddings, so the replacement is a
:class:`~diffloc.tracing.sampler.Corruption` like the noise: every sampler path, restoration
rule and screen works unchanged, and the screens' paths interpolate between the two words'
embeddings. The differences are taken per encoder, at the positions where that encoder's ids
differ. A counterfactual whose caption tokenises to a different length than the clean one
in any corrupted text encoder cannot align token positions: it is skipped, and ``skipped`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .encoders import corrupted_encoders, word_positions
from .errors import ConfigError
from .prompts import MarkedPrompt
from .registry import Registry
from .sampler import Corruption, make_corruption

NOISE_SEED_BASE = 1_000_000  # noise generator seed = BASE + 1000 * seed + noise_index


def noise_seed(seed: int, noise_index: int) -> int:
    return NOISE_SEED_BASE + 1000 * seed + noise_index


class CorruptionMode(Protocol):
    name: str

    def samples(self, cfg, model, prompt: MarkedPrompt) -> int: ...

    def make(self, cfg, model, prompt: MarkedPrompt, seed: int, index: int) -> Corruption: ...

    def label(self, cfg, model, prompt: MarkedPrompt, index: int) -> str: ...


@dataclass(frozen=True)
class GaussianMode:
    """Gaussian noise of ``cfg.noise_scale`` σ on the marked tokens' embeddings."""

    name: str = "gaussian"

    def samples(self, cfg, model, prompt: MarkedPrompt) -> int:
        return cfg.noise_samples

    def make(self, cfg, model, prompt: MarkedPrompt, seed: int, index: int) -> Corruption:
        g = torch.Generator().manual_seed(noise_seed(seed, index))
        encoders = corrupted_encoders(model, getattr(cfg, "text_encoder", None))
        return make_corruption(model, word_positions(model, prompt, encoders), g, cfg.noise_scale)

    def label(self, cfg, model, prompt: MarkedPrompt, index: int) -> str:
        return f"noise {index}"


def counterfactuals(world, prompt: MarkedPrompt, attribute: str) -> list[tuple[str, MarkedPrompt]]:
    """(value, marked prompt) for every other value of the marked attribute, in a fixed order."""
    if prompt.alternatives:
        return [(v, prompt.with_subject(v)) for v in prompt.alternatives if v != prompt.subject]
    make = getattr(world, "counterfactuals", None)
    if make is None:
        raise ConfigError(f"--corrupt replace needs the marked word's alternatives ('[{prompt.subject}|other|...]') "
                          f"or a world that knows its values; world {world.name!r} has neither")
    return [(v, MarkedPrompt.parse(m)) for v, m in make(prompt.marked, attribute)]


def replacement(model, clean: MarkedPrompt, other: MarkedPrompt, encoders: tuple[str, ...] | None = None) -> Corruption | None:
    """The corruption that turns ``clean`` into ``other`` in each of ``encoders`` (default: all): per encoder,
    token-embedding differences at the positions where that encoder's ids differ (None when the captions'
    token counts differ in any of them, or no id changes)."""
    encoders = model.text_components if encoders is None else encoders
    ids = model.family.tokenize(model, [clean.text, other.text])  # {component: [2, L_c]} as the encoders read them
    noise, at = {}, {}
    for comp in encoders:
        tok = model.tokenizer_for(comp)
        if len(tok(clean.text).input_ids) != len(tok(other.text).input_ids):
            return None
        a, b = ids[comp]
        pos = torch.nonzero(a != b).flatten()
        if len(pos):
            table = model.modules[comp].get_input_embeddings().weight.detach()
            noise[comp] = (table[b[pos]] - table[a[pos]]).float().cpu()  # [P_c, D_c]
            at[comp] = tuple(pos.tolist())
    if not at:
        return None
    return Corruption(next(iter(at.values())), noise, at)


@dataclass
class ReplaceMode:
    """Symmetric token replacement by the attribute's other values (``cfg.counterfactuals`` of them at most)."""

    name: str = "replace"
    _cache: dict = field(default_factory=dict, repr=False)

    def _usable(self, cfg, model, prompt: MarkedPrompt) -> list[tuple[str, Corruption]]:
        encoders = corrupted_encoders(model, getattr(cfg, "text_encoder", None))
        key = (id(model), prompt, cfg.attribute, cfg.counterfactuals, encoders)
        if key not in self._cache:
            from .worlds import world_of

            out = []
            for value, other in counterfactuals(world_of(model), prompt, cfg.attribute):
                c = replacement(model, prompt, other, encoders)
                if c is not None:
                    out.append((value, c))
            self._cache[key] = out[: cfg.counterfactuals] if cfg.counterfactuals else out
        return self._cache[key]

    def samples(self, cfg, model, prompt: MarkedPrompt) -> int:
        return len(self._usable(cfg, model, prompt))

    def make(self, cfg, model, prompt: MarkedPrompt, seed: int, index: int) -> Corruption:
        return self._usable(cfg, model, prompt)[index][1]

    def label(self, cfg, model, prompt: MarkedPrompt, index: int) -> str:
        return self._usable(cfg, model, prompt)[index][0]

    def skipped(self, cfg, model, prompt: MarkedPrompt) -> list[str]:
        """Counterfactual values left out because their captions do not align token for token."""
        from .worlds import world_of

        encoders = corrupted_encoders(model, getattr(cfg, "text_encoder", None))
        return [v for v, other in counterfactuals(world_of(model), prompt, cfg.attribute)
                if replacement(model, prompt, other, encoders) is None]


CORRUPTIONS: Registry[CorruptionMode] = Registry("corruption mode")
CORRUPTIONS.register("gaussian", GaussianMode())
CORRUPTIONS.register("replace", ReplaceMode())

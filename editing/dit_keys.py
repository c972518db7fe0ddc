"""Key and value gathering for the diffusion-transformer editors: the inputs a layer reads, paired
across source and target prompts.

Usage::

    from diffloc.editing.dit_keys import denoiser_inputs, dit_pairs, dit_preserve_keys

    K, T = dit_pairs(model, [site], "red", "blue")[site]            # source / target inputs at paired positions
    Kp = dit_preserve_keys(model, [site], ["a photo of a dog"])[site]  # every unmasked position of each caption
    acts, mask = denoiser_inputs(model, [site], texts, timesteps=(250.0, 500.0))

Denoiser inputs are recorded on one seeded latent (:data:`LATENT_SEED`), with the hooks tracing
uses (:class:`diffloc.tracing.hooks.Recorder`); :mod:`diffloc.editing.dit_editors` solves on them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from diffloc.tracing.hooks import Recorder
from diffloc.tracing.sampler import encode
from diffloc.tracing.sites import Site

from .quickfix import PAPER_TEMPLATES, aligned_positions, prompt_pairs
from .records import EditError

#: Seed of the one latent every key-gathering denoiser pass runs on.
LATENT_SEED = 0


def sequence_segments(model) -> list[tuple[str, int]]:
    """(text component, offset) of each tokenised segment of the denoiser's prompt sequence, from the family's
    ``sequence_offsets``: encoders that share positions (SD3's two CLIP towers, side by side along features) are
    one segment, tokenised by the first of them."""
    first: dict[int, str] = {}
    for comp, offset in model.family.sequence_offsets(model).items():
        first.setdefault(offset, comp)
    return [(comp, offset) for offset, comp in sorted(first.items())]


def t5_component(model) -> str:
    """The model's T5 encoder: SD3 ``text_encoder_3``, FLUX ``text_encoder_2``, PixArt ``text_encoder``."""
    from diffloc.tracing.families.dit_sites import is_t5

    for c in model.text_components:
        if is_t5(model.modules[c].config):
            return c
    raise EditError(f"t5-quickfix edits a T5 text encoder; {model.name} ({model.arch}) has none")


#: Latent side for the passes whose recorded inputs do not depend on the image stream (PixArt's
#: caption projection, ``context_embedder``): a small latent makes them cheap and changes nothing.
SMALL_LATENT = 8


def _latent(model, batch: int, size: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(LATENT_SEED)
    shape = model.family.latent_shape(model, 1, size)
    return torch.randn(shape, generator=g).to(device=model.device, dtype=model.dtype).expand(batch, *shape[1:])


@torch.no_grad()
def denoiser_inputs(model, sites: Sequence[Site], texts: Sequence[str], timesteps: Sequence[float] = (500.0,), size: int | None = None):
    """Inputs of denoiser ``sites`` for ``texts``: {site: [R, B, L, D]} over R timesteps, and the text mask (or None).
    ``size``: the latent side (None: the model's sample size)."""
    cond = encode(model, list(texts))
    if hasattr(model.family, "with_guidance"):
        cond = model.family.with_guidance(model, cond, 3.5) if model.family.guided_by_embedding(model) else cond
    x = _latent(model, len(texts), size)
    out: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for t in timesteps:
        with Recorder(model.modules, list(sites), inputs=True) as rec:
            model.family.denoise(model, x, torch.tensor(float(t), device=model.device), cond, 0)
        for s in sites:
            out[s].append(rec.inputs[s].float())
    return {s: torch.stack(v) for s, v in out.items()}, cond.mask


@torch.no_grad()
def small_latent_inputs(model, sites: Sequence[Site], texts: Sequence[str], timesteps: Sequence[float] = (500.0,)):
    """:func:`denoiser_inputs` on a :data:`SMALL_LATENT` latent, for inputs the image stream does not reach."""
    return denoiser_inputs(model, sites, texts, timesteps, SMALL_LATENT)


@torch.no_grad()
def text_inputs(model, sites: Sequence[Site], texts: Sequence[str], timesteps=None):
    """Inputs of text-encoder ``sites`` while the family encodes ``texts``: {site: [1, B, L, D]}, mask or None."""
    with Recorder(model.modules, list(sites), inputs=True) as rec:
        cond = encode(model, list(texts))
    return {s: rec.inputs[s].float()[None] for s in sites}, cond.mask


def _pairs_in_segments(model, segments, src, tgt, mask_s, mask_t) -> list[tuple[list[int], list[int]]]:
    """Per prompt pair, the paired positions (source, target) in the recorded sequence."""
    ids = {}
    for texts, key in (([p.text for p in src], "s"), ([p.text for p in tgt], "t")):
        ids[key] = model.family.tokenize(model, texts)
    out = []
    for i, (ps, pt) in enumerate(zip(src, tgt)):
        all_s, all_t = [], []
        for comp, off in segments:
            tok = model.tokenizer_for(comp)
            i_s, i_t = aligned_positions(ids["s"][comp][i].tolist(), ids["t"][comp][i].tolist(), ps.positions(tok)[-1], pt.positions(tok)[-1])
            for a, b in zip(i_s, i_t):
                a, b = a + off, b + off
                if (mask_s is None or mask_s[i, a]) and (mask_t is None or mask_t[i, b]):
                    all_s.append(a), all_t.append(b)
        out.append((all_s, all_t))
    return out


def dit_pairs(model, key_sites: Sequence[Site], source: str, target: str, templates: Sequence[str] = PAPER_TEMPLATES,
              targets: Sequence[str] | None = None, gather: Callable = denoiser_inputs, timesteps: Sequence[float] = (500.0,),
              segments: list[tuple[str, int]] | None = None) -> dict[Site, tuple[torch.Tensor, torch.Tensor]]:
    """{key site: (K [n, D] source inputs, T [n, D] target inputs)} at the paired positions, all timesteps stacked."""
    src, tgt = prompt_pairs(source, target, templates, targets)
    acts_s, mask_s = gather(model, key_sites, [p.text for p in src], timesteps)
    acts_t, mask_t = gather(model, key_sites, [p.text for p in tgt], timesteps)
    pairs = _pairs_in_segments(model, segments or sequence_segments(model), src, tgt, mask_s, mask_t)
    out = {}
    for s in key_sites:
        K = [acts_s[s][r, i, ps] for r in range(acts_s[s].shape[0]) for i, (ps, _) in enumerate(pairs)]
        T = [acts_t[s][r, i, pt] for r in range(acts_t[s].shape[0]) for i, (_, pt) in enumerate(pairs)]
        out[s] = (torch.cat(K), torch.cat(T))
    return out


def dit_preserve_keys(model, key_sites: Sequence[Site], captions: Sequence[str], gather: Callable = denoiser_inputs,
                      timesteps: Sequence[float] = (500.0,)) -> dict[Site, torch.Tensor]:
    """{key site: [m, D]}: inputs at every unmasked position of each caption, every timestep."""
    acts, mask = gather(model, key_sites, list(captions), timesteps)
    out = {}
    for s in key_sites:
        a = acts[s]                                                   # [R, P, L, D]
        keep = torch.ones(a.shape[1:3], dtype=torch.bool) if mask is None else mask.bool().cpu()
        out[s] = a[:, keep].reshape(-1, a.shape[-1])
    return out

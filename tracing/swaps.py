"""The swaps of ``crossattn-swap``: which layers a window swaps, by swap input, and the hooks that swap them.

Usage::

    readers = swap_readers(model, "kv")            # attn2 (UNet, PixArt) or joint attentions (SD3, FLUX, toy-dit)
    readers = swap_readers(model, "text-stream")   # joint blocks (SD3, toy-dit; FLUX: double-, then single-stream blocks)
    windows = layer_windows([r.site for r in readers], 2, "text-stream blocks")
    images = swap_generate(model, "a red circle", "a blue circle", windows, generator, scfg, swap_input="text-stream")
    # [2 + len(windows), 3, H, W]: original, altered, then the original with each window swapped

Batch rows: row 0 the original prompt everywhere, row 1 the altered prompt everywhere, then
one row per window, which reads the original prompt except at its window. What a window
swaps (``swap_input``; the family lists the layers, :class:`~diffloc.tracing.families.PromptReader`):

- ``kv`` (LocoGen): the window's attentions take the altered prompt's keys and values: the
  outputs of cross-attention's ``to_k``/``to_v`` (UNet, PixArt), or of joint attention's
  text-stream projections ``add_k_proj``/``add_v_proj`` (SD3, FLUX, toy-dit), copied from row 1.
  Where the denoiser masks the text (PixArt's T5 mask) the window's attentions take row 1's
  mask with its keys, since the two captions may tokenise to different lengths.
- ``text-stream``: the window's consecutive joint blocks read their text-stream input
  (``encoder_hidden_states`` entering the block) from row 1; every other block keeps the
  original's. Block 0's input is ``context_embedder``'s output, block i's the previous block's
  ``@text`` output: those outputs are copied. Only MM-DiT families have a text stream.

Staniszewski et al. (2025) find the K/V swap ineffective for joint attention, where the text
stream carries the prompt on through later blocks; both swaps exist to compare them.

``pooled``: the window rows keep the original prompt's pooled vector (``original``, as LocoGen
does on SDXL), or take the altered one's (``altered``; SDXL, SD3, FLUX, toy-dit), so that only
the token sequence differs between a window row and row 1: then a text-stream (or K/V) window
over every block reproduces row 1. What is copied is always the altered run's own (its text
stream, keys and values were computed under its pooled vector); ``pooled`` only decides what the
window row's own adaLN layers read. With classifier-free guidance only the conditional half of
the batch is written; the unconditional half never sees the altered prompt.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import ConfigError
from .families import PromptReader
from .hooks import input_hooks
from .sampler import SamplerConfig, _copy_rows, _sample, encode, initial_latents
from .sites import Site, SiteTable

SWAP_INPUTS = ("kv", "text-stream")
POOLED = ("original", "altered")
#: what a window of each swap input is made of, in messages and titles
NOUNS = {"attn2": "cross-attention layers", "joint_kv": "joint attentions (text keys and values)",
         "text_stream": "text-stream blocks"}


def attn2_sites(sites: SiteTable) -> list[Site]:
    """The cross-attention (attn2) sites of a site table, in execution order."""
    return [s for s in sites.denoiser if s.kind == "attn2"]


def layer_windows(layers: SiteTable | Sequence[Site], window: int, noun: str = NOUNS["attn2"]) -> list[tuple[Site, ...]]:
    """Every run of ``window`` consecutive layers (a site table: its attn2 layers): ``n − window + 1`` windows."""
    layers = attn2_sites(layers) if isinstance(layers, SiteTable) else list(layers)
    if not 1 <= window <= len(layers):
        raise ConfigError(f"window {window} larger than the {len(layers)} {noun} of this model; allowed 1..{len(layers)}")
    return [tuple(layers[i : i + window]) for i in range(len(layers) - window + 1)]


def _readers_of(model, swap_input: str) -> list[PromptReader]:
    return model.family.kv_readers(model) if swap_input == "kv" else model.family.stream_readers(model)


def swap_readers(model, swap_input: str) -> list[PromptReader]:
    """The layers a window of ``swap_input`` may swap, in execution order (one-line error where there are none)."""
    if swap_input not in SWAP_INPUTS:
        raise ConfigError(f"unknown --swap-input {swap_input!r}; allowed: {', '.join(SWAP_INPUTS)}")
    readers = _readers_of(model, swap_input)
    if not readers:
        allowed = [s for s in SWAP_INPUTS if s != swap_input and _readers_of(model, s)]
        what = "the text-stream input of joint-attention blocks (MM-DiT)" if swap_input == "text-stream" else "attention keys and values"
        raise ConfigError(f"--swap-input {swap_input} swaps {what}; {model.name} (family {model.arch}) has none. "
                          f"Allowed here: {', '.join(allowed) or 'none'}")
    return readers


def _window_rows(model, windows: Sequence[Sequence[Site]], swap_input: str, off: int, first_row: int) -> dict[Site, list[int]]:
    """{reader site: batch rows of the windows holding it}; a site that is not a reader is a one-line error."""
    readers = {r.site: r for r in _readers_of(model, swap_input)}
    rows_at: dict[Site, list[int]] = {}
    for w, layers in enumerate(windows):
        for site in layers:
            if site not in readers:
                kinds = sorted({r.kind for r in readers.values()}) or ["no"]
                raise ConfigError(f"crossattn-swap --swap-input {swap_input} swaps {NOUNS.get(kinds[0], 'prompt readers')}; {site} is a "
                                  f"{site.kind} site, allowed: {'/'.join(kinds)} sites")
            rows_at.setdefault(site, []).append(off + first_row + w)
    return rows_at


def swap_hooks(model, windows: Sequence[Sequence[Site]], n_rows: int, cfg_on: bool, altered_row: int = 1,
               first_row: int = 2, swap_input: str = "kv") -> dict:
    """Denoiser hooks: window ``w``'s layers read batch row ``altered_row``'s prompt input in row ``first_row + w``.

    Hooks copy output rows of each reader's ``swapped`` sites (K/V projections, or the module feeding a
    block's text stream), so a window row computes with its own queries and image stream. With CFG the
    batch is [uncond rows, cond rows]: only cond rows (offset ``n_rows``) are written.
    """
    off = n_rows if cfg_on else 0
    readers = {r.site: r for r in _readers_of(model, swap_input)}
    copied: dict[Site, list[int]] = {}
    for site, rows in _window_rows(model, windows, swap_input, off, first_row).items():
        for s in readers[site].swapped:
            copied.setdefault(s, []).extend(rows)
    fns: dict = {}
    for site, rows in copied.items():
        dst = torch.tensor(rows, device=model.device)
        src = torch.full_like(dst, off + altered_row)
        fns[site] = _copy_rows(dst, src)  # rows of [2R or R, T, D]: keys / values of the prompt tokens, or a text stream
    return fns


def mask_hooks(model, windows: Sequence[Sequence[Site]], n_rows: int, cfg_on: bool, altered_row: int = 1,
               first_row: int = 2, swap_input: str = "kv") -> dict:
    """Input hooks (:func:`tracing.hooks.input_hooks`): a window's layers take row ``altered_row``'s
    ``attention_mask`` with its keys, where the layer is given one (PixArt's attn2; none elsewhere)."""
    off = n_rows if cfg_on else 0
    fns: dict = {}
    for site, rows in _window_rows(model, windows, swap_input, off, first_row).items():

        def fn(module, args, kwargs, rows=rows):
            mask = kwargs.get("attention_mask")
            if mask is None:
                return None
            new = mask.clone()  # [2R or R, 1, T]: additive text mask per batch row
            new[torch.tensor(rows, device=mask.device)] = mask[off + altered_row]
            return args, {**kwargs, "attention_mask": new}

        fns[site] = fn
    return fns


@torch.no_grad()
def swap_generate(model, prompt: str, altered: str, windows: Sequence[Sequence[Site]], generator: torch.Generator | None = None,
                  cfg: SamplerConfig | None = None, latents: torch.Tensor | None = None, swap_input: str = "kv",
                  pooled: str = "original") -> torch.Tensor:
    """Images [2 + len(windows), 3, H, W]: original, altered, then the original with each window swapped."""
    if pooled not in POOLED:
        raise ConfigError(f"unknown --pooled {pooled!r}; allowed: {', '.join(POOLED)}")
    cfg = cfg or SamplerConfig.for_model(model)
    R = 2 + len(windows)
    if latents is None:
        latents = initial_latents(model, generator)
    latents = latents[:1].expand(R, -1, -1, -1)  # one initial noise shared by every row
    both = encode(model, [prompt, altered])
    cond = both.rows(torch.tensor([0, 1] + [0] * len(windows), device=both.embeds.device))
    if pooled == "altered":
        if both.pooled is None:
            raise ConfigError(f"--pooled altered: {model.name} has no pooled text vector; allowed: original")
        cond = cond.with_(pooled=both.pooled[torch.tensor([0] + [1] * (R - 1), device=both.pooled.device)])  # [R, P]
    guided = model.family.guidance(model, cfg.guidance_scale)
    with input_hooks(model.modules, mask_hooks(model, windows, R, guided, swap_input=swap_input)):
        return _sample(model, cond, latents, cfg, step_hooks=swap_hooks(model, windows, R, guided, swap_input=swap_input))

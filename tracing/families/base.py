"""What every family shares: the Conditioning value, the Family protocol, config access.

Usage::

    cond = Conditioning(embeds)                 # [B, T, D]; pooled / mask where the family has them
    cond.cat(other).rows(idx).fingerprint(0)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence

import torch

from ..sites import Site


@dataclass(frozen=True)
class Conditioning:
    """What a denoiser reads from the prompt, batched over rows.

    ``embeds`` [B, T, D] the token sequence; ``pooled`` [B, P] a pooled vector (SDXL, SD3,
    FLUX) or None; ``mask`` [B, T] the text attention mask (PixArt's T5) or None. Text-encoder
    sites restore through ``embeds`` (and ``pooled``), so equality of two rows' conditioning
    is the test the no-op rule uses.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.embeds, self.pooled, self.mask, *self.extra.values()) if t is not None]

    def rows(self, index) -> "Conditioning":
        pick = (lambda t: None if t is None else t[index])
        return Conditioning(pick(self.embeds), pick(self.pooled), pick(self.mask), {k: pick(v) for k, v in self.extra.items()})

    def expand(self, n: int) -> "Conditioning":
        grow = (lambda t: None if t is None else t.expand(n, *t.shape[1:]))
        return Conditioning(grow(self.embeds), grow(self.pooled), grow(self.mask), {k: grow(v) for k, v in self.extra.items()})

    def cat(self, other: "Conditioning") -> "Conditioning":
        """Rows of ``self`` then rows of ``other`` (CFG: unconditional half first)."""
        join = (lambda a, b: None if a is None else torch.cat([a, b.to(a.dtype)]))
        return Conditioning(join(self.embeds, other.embeds), join(self.pooled, other.pooled), join(self.mask, other.mask),
                            {k: join(v, other.extra[k]) for k, v in self.extra.items()})

    def fingerprint(self, row: int) -> tuple[bytes, ...]:
        """Bit-exact identity of what the denoiser reads from one row."""
        return tuple(t[row].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() for t in self.tensors())

    def with_(self, **kw) -> "Conditioning":
        return replace(self, **kw)


@dataclass(frozen=True)
class PromptReader:
    """A denoiser layer that reads the prompt, as ``crossattn-swap`` swaps it.

    ``site``: the layer (an attention for a key/value swap, a block for a text-stream swap);
    ``kind``: its rows' label (``attn2`` cross-attention K/V, ``joint_kv`` joint-attention text K/V,
    ``text_stream`` a joint block's text-stream input); ``swapped``: the sites whose outputs a
    swap copies from the altered prompt's row (``to_k``/``to_v``; ``add_k_proj``/``add_v_proj``;
    the module whose output is the block's text-stream input: ``context_embedder`` or the
    previous block's ``@text``).
    """

    site: Site
    kind: str
    swapped: tuple[Site, ...]


def cross_kv_readers(model) -> list[PromptReader]:
    """Cross-attentions (``attn2``: UNet, PixArt) of the site table, with their key and value projections."""
    return [PromptReader(s, "attn2", (Site(s.component, f"{s.path}.to_k"), Site(s.component, f"{s.path}.to_v")))
            for s in model.sites.denoiser if s.kind == "attn2"]


def union_positions(positions: Mapping[str, Sequence[int]], offsets: Mapping[str, int]) -> tuple[int, ...]:
    """Positions in the conditioning sequence: each encoder's positions shifted by its ``offsets`` entry
    (encoders without one do not enter the sequence), merged."""
    return tuple(sorted({offsets[c] + int(p) for c, pos in positions.items() if c in offsets for p in pos}))


class Family(Protocol):
    """One architecture family. Implementations: :mod:`.unet` (sd1, sd2, sdxl, toy)."""

    name: str
    denoiser: str                       # the pipeline's component (folder) name of the denoiser; each family says its own
    screen_scope: str                   # what `diffloc bench` screens time: 'text_encoder' (UNets) or 'denoiser' (DiTs)
    text_components: tuple[str, ...]    # in pipeline order
    pipeline: str                       # the stock diffusers pipeline class of the family

    def matches(self, denoiser_config: Any, text_configs: Mapping[str, Any]) -> bool: ...

    def site_table(self, denoiser_config: Any, text_configs: Mapping[str, Any]): ...

    def prepare(self, model) -> None: ...  # install what the site table needs on the loaded modules

    def encode(self, model, ids: Mapping[str, torch.Tensor], hook_fns: dict) -> Conditioning: ...

    def uncond(self, model, batch: int) -> Conditioning: ...

    def denoise(self, model, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int) -> torch.Tensor: ...

    def latent_shape(self, model, batch: int, size: int | None = None) -> tuple[int, ...]: ...

    def guidance(self, model, guidance_scale: float) -> bool: ...

    def text_length(self, model, component: str) -> int: ...  # tokens per prompt fed to a text encoder

    def causal_text(self, model, component: str) -> bool: ...  # the encoder's self-attention is causal (CLIP; T5 is not)

    def sequence_positions(self, model, positions: Mapping[str, Sequence[int]]) -> tuple[int, ...]: ...

    def kv_readers(self, model) -> list[PromptReader]: ...  # attentions whose keys and values read the prompt

    def stream_readers(self, model) -> list[PromptReader]: ...  # blocks reading a text stream (MM-DiT); [] otherwise


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """A config value from a dict or a config object."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)

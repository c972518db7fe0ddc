"""What every family shares: the Conditioning value, the Family protocol, config access.

Usage::

    cond = Conditioning(embeds)                 # [B, T, D]; pooled / mask where the family has them
    cond.cat(other).rows(idx).fingerprint(0)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol

import torch


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


class Family(Protocol):
    """One architecture family. Implementations: :mod:`.unet` (sd1, sd2, sdxl, toy)."""

    name: str
    denoiser: str                       # the pipeline's component name: 'unet' | 'transformer'
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


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """A config value from a dict or a config object."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)

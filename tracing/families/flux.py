"""The FLUX.1 family (dev: distilled guidance embedding; schnell: no guidance), as ``FluxPipeline``.

Usage::

    flux = FAMILIES.get("flux")
    cond = flux.encode(model, flux.tokenize(model, ["a red car"]), {})   # embeds = T5 [1, 512, D], pooled = CLIP [1, 768]
    cond = flux.with_guidance(model, cond, 3.5)                           # dev: extra['guidance'] [B]
    v = flux.denoise(model, x, t, cond, step)                             # x, v: [B, C, h, w] (packed inside)

Latents stay unpacked ``[B, C, h, w]`` in the sampler (so row restoration, windows and decode are
the same code as for every other family); :meth:`FluxFamily.denoise` packs 2x2 patches into
``[B, h/2 * w/2, 4C]`` with FluxPipeline's RoPE ids and unpacks the velocity. The Euler step is
elementwise, so this equals the pipeline's packed loop exactly. There is no classifier-free
guidance: ``guidance_scale`` is dev's embedded guidance; schnell refuses any guidance > 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ..errors import ConfigError
from ..hooks import hooks
from .base import Conditioning
from .dit import DiTFamily, calculate_shift
from .dit_sites import flux_walk


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C] (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, h/2 * w/2, 4C] -> [B, C, h, w] (FluxPipeline._unpack_latents)."""
    b, _, ch = packed.shape
    x = packed.view(b, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """RoPE position ids [h/2 * w/2, 3] of the packed latent grid (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class FluxFamily(DiTFamily):
    """FluxTransformer2DModel + CLIP-L (pooled) + T5 (sequence)."""

    def walk(self):
        return flux_walk

    def encode(self, model, ids: Mapping[str, torch.Tensor], hook_fns: dict) -> Conditioning:
        """embeds = T5 last hidden state [B, L_t5, D_t5]; pooled = CLIP pooler_output [B, D_clip]."""
        with hooks(model.modules, hook_fns):
            pooled = model.modules["text_encoder"](ids["text_encoder"].to(model.device)).pooler_output
            seq = model.modules["text_encoder_2"](ids["text_encoder_2"].to(model.device))[0]
        return Conditioning(seq, pooled=pooled.to(seq.dtype))

    def sequence_offsets(self, model) -> dict[str, int]:
        """Only T5 (``text_encoder_2``) forms the sequence; CLIP enters through the pooled vector."""
        return {"text_encoder_2": 0}

    def guided_by_embedding(self, model) -> bool:
        return bool(getattr(model.denoiser.config, "guidance_embeds", False))

    def guidance(self, model, guidance_scale: float) -> bool:
        """Never CFG. dev needs an embedded guidance scale > 0; schnell takes none (scale must be <= 1)."""
        if self.guided_by_embedding(model) and guidance_scale <= 0:
            raise ConfigError(f"FLUX.1-dev needs a distilled guidance scale > 0 (its pipeline uses 3.5), got {guidance_scale}")
        if not self.guided_by_embedding(model) and guidance_scale > 1:
            raise ConfigError(f"FLUX.1-schnell has no guidance and FLUX no classifier-free guidance; "
                              f"use guidance_scale 0, got {guidance_scale}")
        return False

    def with_guidance(self, model, cond: Conditioning, guidance_scale: float) -> Conditioning:
        """dev: the guidance scale as ``extra['guidance']`` [B] (float32, as FluxPipeline); schnell: unchanged."""
        if not self.guided_by_embedding(model):
            return cond
        g = torch.full([1], guidance_scale, device=model.device, dtype=torch.float32).expand(cond.embeds.shape[0])
        return cond.with_(extra={**cond.extra, "guidance": g})

    def image_seq_len(self, model, latents: torch.Tensor) -> int:
        return (latents.shape[-2] // 2) * (latents.shape[-1] // 2)

    def prepare_scheduler(self, scheduler, n_steps: int, model, latents: torch.Tensor) -> None:
        """FluxPipeline: sigmas linspace(1, 1/n, n) (unless use_flow_sigmas), mu from the packed sequence length."""
        sigmas = None if scheduler.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / n_steps, n_steps)
        mu = calculate_shift(self.image_seq_len(model, latents), scheduler.config)
        if sigmas is None:
            scheduler.set_timesteps(n_steps, device=model.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=model.device, mu=mu)

    def latent_shape(self, model, batch: int, size: int | None = None) -> tuple[int, ...]:
        size = size or self.sample_size(model)
        return (batch, int(model.denoiser.config.in_channels) // 4, size, size)

    def denoise(self, model, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int) -> torch.Tensor:
        """Velocity [B, C, h, w]: x packed to [B, h/2 * w/2, 4C] with RoPE ids, unpacked after."""
        b, _, h, w = x.shape
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=x.device, dtype=cond.embeds.dtype)
        out = model.denoiser(hidden_states=pack(x), timestep=t.expand(b).to(x.dtype) / 1000, guidance=cond.extra.get("guidance"),
                             pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds, txt_ids=txt_ids,
                             img_ids=image_ids(h, w, x.device, x.dtype), return_dict=False)[0]  # [B, h/2 * w/2, 4C]
        return unpack(out, h, w)


FLUX = FluxFamily("flux", "flux", "FluxTransformer2DModel", ("text_encoder", "text_encoder_2"), pipeline="FluxPipeline",
                  t5_length=512, required=2, stream_blocks=("transformer_blocks", "single_transformer_blocks"))

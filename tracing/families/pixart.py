"""The PixArt-α/Σ family: a DiT with cross-attention to a masked T5 sequence, as ``PixArtSigmaPipeline``.

Usage::

    pixart = FAMILIES.get("pixart")
    cond = pixart.encode(model, pixart.tokenize(model, ["a red car"]), {})   # embeds [1, 300, D_t5], mask [1, 300]
    eps = pixart.denoise(model, x, t, cond, step)                           # [B, C, h, w] (learned sigma dropped)

The negative prompt "" is encoded with its own mask; CFG when ``guidance_scale > 1``; the
scheduler is the model's (DPM-Solver++ for PixArt-Σ). The transformer predicts 2C channels
(eps and a learned variance); the pipeline keeps the first C, and so does :meth:`denoise`
(CFG is linear, so dropping before or after guidance is the same). Resolution binning and
caption cleaning are not applied (diffloc feeds square latents and prompts as written).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ..hooks import hooks
from .base import Conditioning, PromptReader, cross_kv_readers
from .dit import DiTFamily
from .dit_sites import pixart_walk


@dataclass(frozen=True)
class PixArtFamily(DiTFamily):
    """PixArtTransformer2DModel + one T5 encoder with an attention mask."""

    def walk(self):
        return pixart_walk

    def site_table(self, denoiser_config, text_configs):
        from .dit_sites import dit_site_table

        return dit_site_table(self.name, denoiser_config, text_configs, pixart_walk, extra=("caption_projection", "proj_out"))

    def kv_readers(self, model) -> list[PromptReader]:
        """Every cross-attention (attn2), whose ``to_k``/``to_v`` read the masked T5 sequence."""
        return cross_kv_readers(model)

    def encode(self, model, ids: Mapping[str, torch.Tensor], hook_fns: dict) -> Conditioning:
        """T5 last hidden state [B, L, D] under the tokenizer's mask [B, L] (1 up to and with </s>)."""
        tok = model.tokenizer_for("text_encoder")
        x = ids["text_encoder"].to(model.device)
        mask = (x != tok.pad_token_id).long()  # = the tokenizer's attention_mask: pads come only after </s>
        with hooks(model.modules, hook_fns):
            seq = model.modules["text_encoder"](x, attention_mask=mask)[0]
        return Conditioning(seq, mask=mask)

    def denoise(self, model, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int) -> torch.Tensor:
        out = model.denoiser(x, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
                             timestep=t.expand(x.shape[0]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                             return_dict=False)[0]  # [B, 2C or C, h, w]
        c = x.shape[1]
        return out[:, :c] if out.shape[1] // 2 == c else out


PIXART = PixArtFamily("pixart", "pixart", "PixArtTransformer2DModel", ("text_encoder",), pipeline="PixArtSigmaPipeline",
                      t5_length=300)

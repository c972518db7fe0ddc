"""The UNet families: Stable Diffusion 1.x, 2.x, XL, and the toy world's pixel-space UNet.

Usage::

    from diffloc.tracing.families import FAMILIES
    sdxl = FAMILIES.get("sdxl")
    sdxl.site_table(unet.config, {"text_encoder": te.config, "text_encoder_2": te2.config})
    cond = sdxl.encode(model, sdxl.tokenize(model, ["a red car"]), {})   # embeds [1, 77, 2048], pooled [1, 1280]

One class, four instances: they differ in their published configs (structure signature),
whether two CLIP towers are concatenated from their penultimate layer with a pooled vector and
SDXL's ``time_ids`` (``dual``), and whether the negative prompt is zeros (SDXL's
``force_zeros_for_empty_prompt``). The toy family is the fallback for small UNets that match no
published family.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping

import torch

from ..configs import published
from ..hooks import hooks
from ..sites import SiteTable, build_site_table
from .base import Conditioning, PromptReader, cfg_get, cross_kv_readers, union_positions

TOY_MAX_WIDTH = 512  # widest UNet block a toy-world model may have


def _per_block(value: Any, n: int) -> tuple:
    if value is None:
        value = 1
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def signature(unet_config: Any, text_configs: Mapping[str, Any]) -> dict:
    """The structural fields that decide a UNet architecture (defaults filled in)."""
    down = tuple(cfg_get(unet_config, "down_block_types"))
    n = len(down)
    return {
        "down_block_types": down,
        "up_block_types": tuple(cfg_get(unet_config, "up_block_types")),
        "mid_block_type": cfg_get(unet_config, "mid_block_type", "UNetMidBlock2DCrossAttn"),
        "layers_per_block": _per_block(cfg_get(unet_config, "layers_per_block", 2), n),
        "transformer_layers_per_block": _per_block(cfg_get(unet_config, "transformer_layers_per_block", 1), n),
        "use_linear_projection": bool(cfg_get(unet_config, "use_linear_projection", False)),
        "addition_embed_type": cfg_get(unet_config, "addition_embed_type"),
        "text_encoders": tuple(sorted(text_configs)),
        "text_layers": tuple(int(cfg_get(text_configs[k], "num_hidden_layers")) for k in sorted(text_configs)),
        "text_act": tuple(cfg_get(text_configs[k], "hidden_act") for k in sorted(text_configs)),
    }


def _is_unet(config: Any) -> bool:
    return cfg_get(config, "down_block_types") is not None


@dataclass(frozen=True)
class UNetFamily:
    """A UNet2DConditionModel family with one or two CLIP text towers."""

    name: str
    published_key: str | None            # tracing.configs family, None for the toy world
    dual: bool = False                   # SDXL: two towers, penultimate layers, pooled + time_ids
    zero_uncond: bool = False            # SDXL: the negative prompt is zeros
    fallback: bool = False               # toy: any small UNet matching no published family
    denoiser: str = "unet"
    screen_scope: str = "text_encoder"  # what `diffloc bench` screens time: the text encoder (the UNet is cheap to trace exactly)
    pipeline: str = "StableDiffusionPipeline"

    @property
    def text_components(self) -> tuple[str, ...]:
        return ("text_encoder", "text_encoder_2") if self.dual else ("text_encoder",)

    # ---------------------------------------------------------------- structure
    def published_signature(self) -> dict:
        cfgs = published(self.published_key)
        texts = {k.split("/")[0]: v for k, v in cfgs.items() if k.startswith("text_encoder")}
        return signature(cfgs["unet/config.json"], texts)

    def matches(self, denoiser_config: Any, text_configs: Mapping[str, Any]) -> bool:
        if not _is_unet(denoiser_config):
            return False
        if self.fallback:
            return max(cfg_get(denoiser_config, "block_out_channels")) <= TOY_MAX_WIDTH
        return not self.differences(denoiser_config, text_configs)

    def differences(self, denoiser_config: Any, text_configs: Mapping[str, Any]) -> list[str]:
        if self.published_key is None:
            return []
        ref, sig = self.published_signature(), signature(denoiser_config, text_configs)
        return [k for k in ref if ref[k] != sig[k]]

    def mismatch(self, denoiser_config: Any, text_configs: Mapping[str, Any]) -> str | None:
        if not _is_unet(denoiser_config):
            return None
        if self.fallback:
            return f"widest block {max(cfg_get(denoiser_config, 'block_out_channels'))} > {TOY_MAX_WIDTH}, so not the toy world"
        return f"{self.name} differs in {', '.join(self.differences(denoiser_config, text_configs))}"

    def site_table(self, denoiser_config: Any, text_configs: Mapping[str, Any]) -> SiteTable:
        texts = {k: SimpleNamespace(num_hidden_layers=int(cfg_get(v, "num_hidden_layers")),
                                    num_attention_heads=int(cfg_get(v, "num_attention_heads")))
                 for k, v in sorted(text_configs.items())}
        return build_site_table(self.name, denoiser_config, texts, denoiser=self.denoiser)

    def prepare(self, model) -> None:
        """Nothing to install on a UNet's modules."""

    # ---------------------------------------------------------------- conditioning
    def tokenize(self, model, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids per text encoder, [B, 77] each, padded as the family's pipeline pads them."""
        return {c: model.tokenize(texts, c) for c in self.text_components if c in model.modules}

    def encode(self, model, ids: Mapping[str, torch.Tensor], hook_fns: dict) -> Conditioning:
        """SD 1.x/2.x: last_hidden_state [B, 77, D]. SDXL: both towers' penultimate hidden states
        concatenated [B, 77, D1 + D2], and the second tower's projected pooled output [B, P]."""
        with hooks(model.modules, hook_fns):
            first = model.modules["text_encoder"](ids["text_encoder"].to(model.device), output_hidden_states=self.dual)
            if not self.dual:
                return Conditioning(first[0])
            second = model.modules["text_encoder_2"](ids["text_encoder_2"].to(model.device), output_hidden_states=True)
        embeds = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return Conditioning(embeds, pooled=second[0])

    def text_length(self, model, component: str) -> int:
        """Tokens per prompt fed to ``component``: the CLIP tokenizer's 77."""
        return model.tokenizer_for(component).model_max_length

    def causal_text(self, model, component: str) -> bool:
        """CLIP towers attend under a causal mask."""
        return True

    def sequence_positions(self, model, positions: Mapping[str, Any]) -> tuple[int, ...]:
        """Token positions of the conditioning sequence ``[B, 77, D]`` (SDXL concatenates its towers along features)."""
        return union_positions(positions, {c: 0 for c in self.text_components})

    def kv_readers(self, model) -> list[PromptReader]:
        """Every cross-attention (attn2), whose ``to_k``/``to_v`` read the prompt embeddings."""
        return cross_kv_readers(model)

    def stream_readers(self, model) -> list[PromptReader]:
        """None: a UNet reads the prompt through cross-attention only, it has no text stream."""
        return []

    def uncond(self, model, batch: int) -> Conditioning:
        cond = self.encode(model, self.tokenize(model, [""]), {})
        if self.zero_uncond and model.defaults.get("force_zeros_for_empty_prompt", True):
            cond = Conditioning(torch.zeros_like(cond.embeds), torch.zeros_like(cond.pooled))
        return cond.expand(batch)

    # ---------------------------------------------------------------- denoising
    def denoise(self, model, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int) -> torch.Tensor:
        """eps [B, C, h, w] of the UNet at timestep ``t`` under ``cond`` (rows aligned with ``x``)."""
        added = None
        if cond.pooled is not None:  # SDXL's micro-conditioning: original size, crop, target size
            px = x.shape[-1] * (8 if model.vae is not None else 1)
            time_ids = torch.tensor([[px, px, 0, 0, px, px]], dtype=model.dtype, device=model.device)
            added = {"text_embeds": cond.pooled.to(model.dtype), "time_ids": time_ids.expand(x.shape[0], -1)}
        return model.denoiser(x, t, encoder_hidden_states=cond.embeds, added_cond_kwargs=added).sample

    def latent_shape(self, model, batch: int, size: int | None = None) -> tuple[int, ...]:
        size = size or int(model.denoiser.config.sample_size)
        return (batch, int(model.denoiser.config.in_channels), size, size)

    def pack(self, model, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the denoiser reads them (identity for a UNet; FLUX packs 2x2 patches)."""
        return latents

    def guidance(self, model, guidance_scale: float) -> bool:
        """Classifier-free guidance on, for this scale (UNet families: scale > 1, as diffusers)."""
        return guidance_scale > 1.0

    def prepare_scheduler(self, scheduler, n_steps: int, model, latents: torch.Tensor) -> None:
        scheduler.set_timesteps(n_steps, device=model.device)

    def sample_size(self, model) -> int:
        return int(model.denoiser.config.sample_size)

    def stock_pipeline(self, model):
        """The family's stock diffusers pipeline over the model's own components (save, compare)."""
        import diffusers

        kw = {**model.modules, **{c.replace("text_encoder", "tokenizer"): t for c, t in model.tokenizers.items()},
              "vae": model.vae, "scheduler": model.scheduler}
        if not self.dual:  # SD 1.x/2.x pipelines also take a safety checker, which diffloc never uses
            kw.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return getattr(diffusers, self.pipeline)(**kw)


SD1 = UNetFamily("sd1", "sd1")
SD2 = UNetFamily("sd2", "sd2")
SDXL = UNetFamily("sdxl", "sdxl", dual=True, zero_uncond=True, pipeline="StableDiffusionXLPipeline")
TOY = UNetFamily("toy", None, fallback=True)
UNET_FAMILIES = (SD1, SD2, SDXL, TOY)

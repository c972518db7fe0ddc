"""Tiny random models for tests and for executors that rebuild a model in another process.

Usage::

    from functools import partial
    from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer

    model = tiny_pixel_model(seed=0)      # same weights in every process for the same seed
    factory = partial(tiny_pixel_model, 0) # picklable: a Ray worker rebuilds the same model

Both builders seed torch before creating their weights, so a worker process that calls the
same builder with the same seed holds bit-identical weights to the driver's.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .models import Model
from .tokenizer import clip_tokenizer


def tiny_pixel_model(seed: int = 0) -> Model:
    """A random pixel-space model shaped like the toy world's (3 text layers, 32 px UNet)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, max_position_embeddings=77))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    from .families import FAMILIES

    model = Model(name="tiny-pixel", arch="toy", modules={"text_encoder": text, FAMILIES.get("toy").denoiser: unet},
                  tokenizers={"text_encoder": clip_tokenizer()}, scheduler=sched,
                  defaults={"num_inference_steps": 5, "guidance_scale": 2.0}, world="toy")
    return model


def tiny_scorer(seed: int = 0):
    """A random open_clip CLIP at 32 px: a stand-in scorer with the real scorer's API."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from .scoring import from_open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return from_open_clip(model, open_clip.get_tokenizer("ViT-B-32"), "test-random-openclip")


class Touch:
    """A picklable ``fn(unit)`` for executor tests: writes one file per unit, so calls can be counted
    (it lives here, not in tests/, so that Ray workers can import it)."""

    def __init__(self, folder: str, fail_on: str | None = None):
        self.folder, self.fail_on = folder, fail_on

    def __call__(self, unit: str) -> None:
        if unit == self.fail_on:
            raise ValueError(f"unit {unit} failed on purpose")
        path = Path(self.folder) / unit
        path.write_text(str(int(path.read_text()) + 1) if path.exists() else "1")

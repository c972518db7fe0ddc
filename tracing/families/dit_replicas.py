"""Tiny replicas of SD3-medium, FLUX.1-dev and PixArt-Σ: the published configs with widths shrunk.

Usage::

    parts = build_dit_replica("sd3")       # transformer, text_encoder(_2, _3), tokenizer(_2, _3), vae, scheduler
    pipe = dit_replica_pipeline("flux")     # the stock FluxPipeline around a replica
    real = build_dit_published("sd3")       # the full published model on the meta device

Kept from the published configs (``tracing/configs/{sd3,flux,pixart}.json``): block counts (24
joint blocks; 19 + 38 FLUX blocks; 28 PixArt blocks), patch sizes, latent channels, the text
encoders' layer counts, activations, vocabularies, FLUX's guidance embedding and RoPE axes
count, the schedulers. Shrunk: head dims and head counts, the text and T5 widths (T5 d_model 96,
so that SD3's two CLIP widths 32 + 48 still pad up to T5's width as 768 + 1280 do to 4096),
VAE channels, the latent size (8). Weights: each library's initialiser under a fixed seed.
T5 tokenizers are :func:`tracing.tokenizer.t5_tokenizer` (an offline vocabulary, see there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..configs import published

_FILE_KEYS = ("_name_or_path", "architectures", "torch_dtype", "transformers_version", "_diffusers_version")


@dataclass(frozen=True)
class DiTWidths:
    clip_hidden: tuple[int, ...] = (32, 48)   # text_encoder, text_encoder_2 (when CLIP)
    t5_d_model: int = 96
    t5_heads: int = 4
    t5_d_kv: int = 8
    t5_d_ff: int = 64
    heads: int = 4
    head_dim: int = 8                          # FLUX: 16 (its RoPE axes must sum to the head dim)
    flux_rope: tuple[int, ...] = (4, 6, 6)
    vae_channels: tuple[int, ...] = (8, 16, 32, 32)
    norm_groups: int = 4
    latent_size: int = 8


DIT_WIDTHS = DiTWidths()


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in _FILE_KEYS}


def _shrink_texts(cfgs: dict, w: DiTWidths) -> tuple[list[int], int]:
    """Shrink every text encoder in place; returns (CLIP widths in order, T5 d_model)."""
    clips = []
    for key in sorted(k for k in cfgs if k.startswith("text_encoder")):
        c = cfgs[key]
        if "d_model" in c:
            c.update(d_model=w.t5_d_model, num_heads=w.t5_heads, d_kv=w.t5_d_kv, d_ff=w.t5_d_ff)
        else:
            h = w.clip_hidden[len(clips)]
            c.update(hidden_size=h, num_attention_heads=4, intermediate_size=2 * h, projection_dim=h)
            clips.append(h)
    return clips, w.t5_d_model


def dit_replica_configs(family: str, w: DiTWidths = DIT_WIDTHS) -> dict:
    """Published configs of ``family`` with widths shrunk (published consistency asserted)."""
    cfgs = {k: _clean(v) if isinstance(v, dict) else v for k, v in published(family).items()}
    t = cfgs["transformer/config.json"]
    pub = dict(t)
    clips, t5 = _shrink_texts(cfgs, w)
    if family == "sd3":
        assert pub["caption_projection_dim"] == pub["num_attention_heads"] * pub["attention_head_dim"]
        t.update(attention_head_dim=w.head_dim, num_attention_heads=w.heads, caption_projection_dim=w.heads * w.head_dim,
                 joint_attention_dim=t5, pooled_projection_dim=sum(clips), sample_size=w.latent_size)
    elif family == "flux":
        assert sum(pub["axes_dims_rope"]) == pub["attention_head_dim"]
        t.update(attention_head_dim=sum(w.flux_rope), num_attention_heads=w.heads, axes_dims_rope=list(w.flux_rope),
                 joint_attention_dim=t5, pooled_projection_dim=clips[0])
    else:
        assert pub["cross_attention_dim"] == pub["num_attention_heads"] * pub["attention_head_dim"]
        t.update(attention_head_dim=w.head_dim, num_attention_heads=w.heads, cross_attention_dim=w.heads * w.head_dim,
                 caption_channels=t5, sample_size=w.latent_size)
    v = cfgs["vae/config.json"]
    v.update(block_out_channels=list(w.vae_channels), norm_num_groups=w.norm_groups,
             sample_size=w.latent_size * 2 ** (len(w.vae_channels) - 1))
    return cfgs


def _text_model(cls, cfg: dict):
    from transformers import CLIPTextConfig, T5Config

    return cls(T5Config(**cfg) if "d_model" in cfg else CLIPTextConfig(**cfg))


def build_dit_models(cfgs: dict, seed: int | None, device: str = "cpu") -> dict:
    """transformer, text encoders and vae from ``cfgs``; ``seed=None`` for meta skeletons."""
    from ..replica_parts import _class

    index, out = cfgs["model_index.json"], {}
    names = ["transformer", *sorted(k.split("/")[0] for k in cfgs if k.startswith("text_encoder")), "vae"]
    for k, name in enumerate(names):
        cls, cfg = _class(index[name]), cfgs[f"{name}/config.json"]
        with torch.random.fork_rng(devices=[]), torch.device(device):
            if seed is not None:
                torch.manual_seed(seed * 1000 + k)
            model = _text_model(cls, cfg) if name.startswith("text_encoder") else cls.from_config(cfg)
        out[name] = model.eval()
    return out


def with_tokenizers(parts: dict, cfgs: dict) -> dict:
    """Offline tokenizers (CLIP's BPE; the T5 stand-in) and the scheduler, beside the models."""
    from ..replica_parts import _class, _tokenizer
    from ..tokenizer import t5_tokenizer

    for t in sorted(k.split("/")[0] for k in cfgs if k.startswith("text_encoder")):
        name, tcfg = t.replace("text_encoder", "tokenizer"), cfgs.get(f"{t.replace('text_encoder', 'tokenizer')}/tokenizer_config.json", {})
        t5 = "d_model" in cfgs[f"{t}/config.json"]
        parts[name] = t5_tokenizer(tcfg.get("model_max_length", 512)) if t5 else _tokenizer(tcfg)
    parts["scheduler"] = _class(cfgs["model_index.json"]["scheduler"]).from_config(cfgs["scheduler/scheduler_config.json"])
    return parts


def build_dit_replica(family: str, seed: int = 0, widths: DiTWidths = DIT_WIDTHS) -> dict:
    """Every component of a tiny ``family`` replica (float32, CPU, eval), deterministic in (family, seed)."""
    cfgs = dit_replica_configs(family, widths)
    return with_tokenizers(build_dit_models(cfgs, seed), cfgs)


def build_dit_published(family: str, device: str = "meta") -> dict:
    """The full-size published transformer / text encoders / vae on ``device`` (no weights)."""
    cfgs = {k: _clean(v) if isinstance(v, dict) else v for k, v in published(family).items()}
    return build_dit_models(cfgs, None, device)


def build_dit_random(family: str, seed: int = 0, device: str = "cpu") -> dict:
    """Full-size published ``family`` with random weights on ``device`` (benchmarks)."""
    cfgs = {k: _clean(v) if isinstance(v, dict) else v for k, v in published(family).items()}
    return with_tokenizers(build_dit_models(cfgs, seed, device), cfgs)


def dit_replica_pipeline(family: str, seed: int = 0, widths: DiTWidths = DIT_WIDTHS):
    """The stock diffusers pipeline (class from the published model_index) around a replica."""
    import diffusers

    return getattr(diffusers, published(family)["model_index.json"]["_class_name"])(**build_dit_replica(family, seed, widths))

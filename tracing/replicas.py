"""Tiny, structure-faithful replicas of Stable Diffusion 1.x, 2.x and SDXL.

Usage::

    parts = build_replica("sd1", seed=0)   # {FAMILIES.get('sd1').denoiser, 'text_encoder', 'tokenizer', 'vae', 'scheduler'}
    parts = build_replica("sdxl")          # ... plus 'text_encoder_2', 'tokenizer_2'
    save_replica("sd2", "/tmp/tiny-sd2")   # StableDiffusionPipeline.from_pretrained opens it
    real = build_published("sdxl")         # the full published model, on the meta device
    parts = build_replica("sd3")           # DiTs (sd3, flux, pixart): tracing/families/dit_replicas.py

A replica is the published config (``tracing/configs/<family>.json``) with only its widths
shrunk by :func:`replica_configs`: block types and counts, ``layers_per_block``, transformer
depth per block, ``use_linear_projection``, ``upcast_attention``, the SDXL ``text_time``
addition embedding, the text encoders' layer counts, activations, vocabulary and 77
positions are all kept. So ``named_modules()`` names, and every site, are the real model's.
Weights are random: each component is initialised by its library's own initialiser under
``torch.manual_seed(seed + k)`` inside ``torch.random.fork_rng`` (the caller's RNG is left
alone), so a replica depends only on ``(family, seed)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffloc.tracing.configs import DIT_FAMILIES, FAMILIES, published
from diffloc.tracing.replica_parts import _class, _tokenizer  # noqa: F401  (shared with the DiT replicas)

# Keys that describe a checkpoint file rather than a model; not carried over. (An old
# `_diffusers_version` would also make StableDiffusionPipeline reset sample_size to 64.)
_FILE_KEYS = ("_name_or_path", "architectures", "torch_dtype", "transformers_version", "_diffusers_version")
# Components a pipeline accepts that a replica leaves out.
_OPTIONAL = ("safety_checker", "feature_extractor", "image_encoder")


@dataclass(frozen=True)
class Widths:
    """The only numbers a replica changes. Norm groups divide every UNet/VAE channel count,
    skip concatenations included (8, 16, 24, 32, 48, 64)."""

    unet_channels: tuple[int, ...] = (8, 16, 32, 32)
    vae_channels: tuple[int, ...] = (8, 16, 32, 32)
    norm_groups: int = 4
    unet_head_dim: int = 4          # channels per UNet attention head
    text_hidden: tuple[int, ...] = (32, 48)   # text_encoder, text_encoder_2
    text_heads: int = 4
    text_mlp_ratio: int = 2         # intermediate_size = ratio * hidden (64 for hidden 32)
    time_ids_dim: int = 8           # SDXL addition_time_embed_dim (published 256)
    latent_size: int = 8            # UNet sample_size; images are 8 * 2**(n_vae_blocks - 1) px


WIDTHS = Widths()


def text_components(configs: dict) -> list[str]:
    """Text-encoder names in pipeline order, e.g. ['text_encoder', 'text_encoder_2']."""
    return sorted(k.split("/")[0] for k in configs if k.startswith("text_encoder"))


def replica_configs(family: str, widths: Widths = WIDTHS) -> dict:
    """The published configs of ``family`` with widths shrunk; same keys as :func:`published`.

    Published consistency is asserted on the way (cross_attention_dim is the sum of the
    text widths; SDXL's added-embedding input is pooled width + n_time_ids * time dim).
    """
    from diffloc.tracing.families import FAMILIES as FAMILY_OBJECTS

    cfgs = _model_configs(family)
    texts = text_components(cfgs)
    den = f"{FAMILY_OBJECTS.get(family).denoiser}/config.json"  # the family names its denoiser's folder
    pub_unet = dict(cfgs[den])
    pub_hidden = [cfgs[f"{t}/config.json"]["hidden_size"] for t in texts]
    if sum(pub_hidden) != pub_unet["cross_attention_dim"]:
        raise AssertionError(f"{family}: cross_attention_dim != sum of text widths {pub_hidden}")

    for t, hidden in zip(texts, widths.text_hidden):
        c = cfgs[f"{t}/config.json"]
        c.update(hidden_size=hidden, num_attention_heads=widths.text_heads,
                 intermediate_size=widths.text_mlp_ratio * hidden, projection_dim=hidden)
        cfgs[f"{t}/config.json"] = c

    den_cfg = dict(pub_unet)
    n = len(den_cfg["block_out_channels"])
    channels = list(widths.unet_channels[:n])
    heads = [c // widths.unet_head_dim for c in channels]
    den_cfg.update(
        block_out_channels=channels,
        norm_num_groups=widths.norm_groups,
        # SD1 spells "8 heads everywhere" as an int; SD2/SDXL give heads per block as a list.
        attention_head_dim=heads if isinstance(pub_unet["attention_head_dim"], list) else heads[0],
        cross_attention_dim=sum(widths.text_hidden[: len(texts)]),
        sample_size=widths.latent_size,
    )
    if den_cfg.get("addition_embed_type") == "text_time":
        pooled = cfgs[f"{texts[-1]}/config.json"]
        pub_pooled = published(family)[f"{texts[-1]}/config.json"]["projection_dim"]
        n_ids, rest = divmod(pub_unet["projection_class_embeddings_input_dim"] - pub_pooled,
                             pub_unet["addition_time_embed_dim"])
        if rest or n_ids != 6:
            raise AssertionError(f"{family}: unexpected text_time layout ({n_ids} time ids)")
        den_cfg.update(addition_time_embed_dim=widths.time_ids_dim,
                       projection_class_embeddings_input_dim=pooled["projection_dim"] + n_ids * widths.time_ids_dim)
    cfgs[den] = den_cfg

    vae = dict(cfgs["vae/config.json"])
    m = len(vae["block_out_channels"])
    vae.update(block_out_channels=list(widths.vae_channels[:m]), norm_num_groups=widths.norm_groups,
               sample_size=widths.latent_size * 2 ** (m - 1))
    cfgs["vae/config.json"] = vae
    return cfgs


def _model_configs(family: str) -> dict:
    """The published configs of ``family`` without the keys that describe a checkpoint file."""
    return {k: {k2: v2 for k2, v2 in v.items() if k2 not in _FILE_KEYS} if isinstance(v, dict) else v
            for k, v in published(family).items()}


def _build_models(cfgs: dict, seed: int | None, device: str | None = None) -> dict:
    """Instantiate unet / text encoders / vae from configs; ``seed=None`` for meta skeletons."""
    from transformers import CLIPTextConfig

    index = cfgs["model_index.json"]
    out = {}
    from .families import denoiser_slots

    denoiser = next(k for k in denoiser_slots() if k in index)  # the pipeline's denoiser slot
    names = [denoiser, *text_components(cfgs), "vae"]
    for k, name in enumerate(names):
        cls = _class(index[name])
        cfg = cfgs[f"{name}/config.json"]
        dev = torch.device(device or "cpu")
        cuda = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), dev:  # the caller's RNG is left alone
            if seed is not None:
                torch.manual_seed(seed * 1000 + k)
            if name.startswith("text_encoder"):
                text_cfg = CLIPTextConfig(**{k2: v for k2, v in cfg.items() if k2 not in _FILE_KEYS})
                model = cls(text_cfg)
            else:
                model = cls.from_config(cfg)
        out[name] = model.eval()
    return out


def build_replica(family: str, seed: int = 0, widths: Widths = WIDTHS) -> dict:
    """Components of a tiny ``family`` replica: unet, text_encoder(s), tokenizer(s), vae, scheduler.

    Deterministic in ``(family, seed)``; everything is float32, on CPU, in eval mode.
    DiT families (sd3, flux, pixart) give ``transformer`` instead of ``unet``.
    """
    if family in DIT_FAMILIES:
        from .families.dit_replicas import build_dit_replica

        return build_dit_replica(family, seed)
    cfgs = replica_configs(family, widths)
    return _with_tokenizers(_build_models(cfgs, seed), cfgs)


def build_published(family: str, device: str = "meta") -> dict:
    """The full-size published unet / text encoder(s) / vae, built on ``device`` (no weights)."""
    if family in DIT_FAMILIES:
        from .families.dit_replicas import build_dit_published

        return build_dit_published(family, device)
    return _build_models(published(family), seed=None, device=device)


def build_random(family: str, seed: int = 0, device: str = "cpu") -> dict:
    """Every component of the full-size published ``family`` with random weights, built on ``device``.

    For speed and memory benchmarks (``random-sd1``, ``random-sdxl`` in ``load_model``): a
    sweep's cost depends on the shapes, not the weights. Initialised by each library's own
    initialiser, seeded with ``seed`` on ``device``'s generator (so CPU and CUDA builds differ).
    """
    if family in DIT_FAMILIES:
        from .families.dit_replicas import build_dit_random

        return build_dit_random(family, seed, device)
    cfgs = _model_configs(family)
    parts = _build_models(cfgs, seed, device=device)
    return _with_tokenizers(parts, cfgs)


def _with_tokenizers(parts: dict, cfgs: dict) -> dict:
    for t in text_components(cfgs):
        tok_name = t.replace("text_encoder", "tokenizer")
        parts[tok_name] = _tokenizer(cfgs.get(f"{tok_name}/tokenizer_config.json", {}))
    parts["scheduler"] = _class(cfgs["model_index.json"]["scheduler"]).from_config(cfgs["scheduler/scheduler_config.json"])
    return parts


def replica_pipeline(family: str, seed: int = 0, widths: Widths = WIDTHS):
    """A stock diffusers pipeline (class from the published model_index) around a replica."""
    if family in DIT_FAMILIES:
        from .families.dit_replicas import dit_replica_pipeline

        return dit_replica_pipeline(family, seed)
    index = published(family)["model_index.json"]
    cls = _class(["diffusers", index["_class_name"]])
    parts = build_replica(family, seed, widths)
    extra = {name: None for name in _OPTIONAL if name in index}
    if "safety_checker" in index:
        extra["requires_safety_checker"] = False
    if "force_zeros_for_empty_prompt" in index:
        extra["force_zeros_for_empty_prompt"] = index["force_zeros_for_empty_prompt"]
    if "add_watermarker" in index:
        extra["add_watermarker"] = False  # keep outputs a pure function of the weights
    return cls(**parts, **extra)


def save_replica(family: str, path: str | Path, seed: int = 0, widths: Widths = WIDTHS) -> Path:
    """Write a replica as a diffusers folder (``model_index.json`` and one folder per component).

    Stock ``StableDiffusionPipeline.from_pretrained(path)`` (sd1, sd2) or
    ``StableDiffusionXLPipeline.from_pretrained(path)`` (sdxl) opens it; the safety checker
    and feature extractor are recorded as absent.
    """
    path = Path(path)
    replica_pipeline(family, seed, widths).save_pretrained(path)
    return path


__all__ = ["FAMILIES", "Widths", "WIDTHS", "build_replica", "build_published", "build_random", "replica_configs",
           "replica_pipeline", "save_replica", "text_components"]

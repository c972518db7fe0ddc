"""Which architecture a model is, and its site table.

Usage::

    arch = detect_arch(pipe.unet.config, {"text_encoder": pipe.text_encoder.config})  # 'sd1'
    table = site_table(pipe.unet.config, {"text_encoder": pipe.text_encoder.config})
    table = published_site_table("sdxl")          # from the published configs alone

An architecture is recognised by *structure*, never by width: block types, layers per
block, transformer depth per block, linear projections, the added embedding, which text
encoders there are, their layer counts and activations. So a tiny replica is detected as
its family, and fine-tunes (v1.4/v1.5, 2.0/2.1, 512/768, inpainting's extra input
channels) fall in with theirs. A small UNet matching no family is the toy world ('toy');
a large one raises, naming where it differs from the nearest family.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from tracing.configs import FAMILIES, published
from tracing.sites import SiteTable, build_site_table

TOY_MAX_WIDTH = 512  # widest UNet block a toy-world model may have


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _per_block(value: Any, n: int) -> tuple:
    if value is None:
        value = 1
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def _text_mapping(text_configs: Mapping[str, Any] | Sequence[Any]) -> Mapping[str, Any]:
    """``{'text_encoder': cfg, 'text_encoder_2': cfg2}``; a list is taken in that order."""
    if isinstance(text_configs, Mapping):
        return text_configs
    names = ("text_encoder", "text_encoder_2")
    if len(text_configs) > len(names):
        raise ValueError(f"at most {len(names)} text-encoder configs; got {len(text_configs)}")
    return dict(zip(names, text_configs))


def signature(unet_config: Any, text_configs: Mapping[str, Any] | Sequence[Any]) -> dict:
    """The structural fields that decide an architecture (defaults filled in)."""
    text_configs = _text_mapping(text_configs)
    down = tuple(_get(unet_config, "down_block_types"))
    n = len(down)
    return {
        "down_block_types": down,
        "up_block_types": tuple(_get(unet_config, "up_block_types")),
        "mid_block_type": _get(unet_config, "mid_block_type", "UNetMidBlock2DCrossAttn"),
        "layers_per_block": _per_block(_get(unet_config, "layers_per_block", 2), n),
        "transformer_layers_per_block": _per_block(_get(unet_config, "transformer_layers_per_block", 1), n),
        "use_linear_projection": bool(_get(unet_config, "use_linear_projection", False)),
        "addition_embed_type": _get(unet_config, "addition_embed_type"),
        "text_encoders": tuple(sorted(text_configs)),
        "text_layers": tuple(int(_get(text_configs[k], "num_hidden_layers")) for k in sorted(text_configs)),
        "text_act": tuple(_get(text_configs[k], "hidden_act") for k in sorted(text_configs)),
    }


def published_signature(family: str) -> dict:
    cfgs = published(family)
    texts = {k.split("/")[0]: v for k, v in cfgs.items() if k.startswith("text_encoder")}
    return signature(cfgs["unet/config.json"], texts)


def detect_arch(unet_config: Any, text_encoder_configs: Mapping[str, Any] | Sequence[Any]) -> str:
    """'sd1' | 'sd2' | 'sdxl' by structure; 'toy' for a small unmatched UNet; else ValueError.

    ``text_encoder_configs``: ``{component: config}``, or a list ``[text_encoder, text_encoder_2]``.
    Configs may be dicts or config objects.
    """
    sig = signature(unet_config, text_encoder_configs)
    diffs = {}
    for family in FAMILIES:
        ref = published_signature(family)
        diffs[family] = [k for k in ref if ref[k] != sig[k]]
        if not diffs[family]:
            return family
    if max(_get(unet_config, "block_out_channels")) <= TOY_MAX_WIDTH:
        return "toy"
    nearest = min(diffs, key=lambda f: len(diffs[f]))
    raise ValueError(
        f"unknown architecture: nearest is {nearest}, which differs in {', '.join(diffs[nearest])}; "
        f"widest block {max(_get(unet_config, 'block_out_channels'))} > {TOY_MAX_WIDTH}, so not the toy world"
    )


def site_table(unet_config: Any, text_encoder_configs: Mapping[str, Any] | Sequence[Any]) -> SiteTable:
    """The site table of a model, under its detected architecture."""
    arch = detect_arch(unet_config, text_encoder_configs)
    texts = {k: SimpleNamespace(num_hidden_layers=int(_get(v, "num_hidden_layers")),
                                num_attention_heads=int(_get(v, "num_attention_heads")))  # head sites need it
             for k, v in sorted(_text_mapping(text_encoder_configs).items())}
    return build_site_table(arch, unet_config, texts)


def published_site_table(family: str) -> SiteTable:
    """The site table of a published family, from its configs alone."""
    cfgs = published(family)
    texts = {k.split("/")[0]: v for k, v in cfgs.items() if k.startswith("text_encoder")}
    return site_table(cfgs["unet/config.json"], texts)

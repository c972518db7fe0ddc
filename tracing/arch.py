"""Which family a model is, and its site table, from configs alone.

Usage::

    detect_arch(pipe.unet.config, {"text_encoder": pipe.text_encoder.config})   # 'sd1'
    table = site_table(pipe.unet.config, {"text_encoder": pipe.text_encoder.config})
    table = published_site_table("sdxl")          # from the published configs alone

A thin front to :mod:`diffloc.tracing.families`, where each family decides by *structure*,
never by width: block types, layers per block, transformer depth, linear projections, the
added embedding, which text encoders there are, their layer counts and activations. So a tiny
replica is detected as its family, and fine-tunes fall in with theirs. A small UNet matching no
family is the toy world ('toy'); a large one raises, naming where it differs.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .configs import published
from .families import FAMILIES, detect
from .sites import SiteTable


def _text_mapping(text_configs: Mapping[str, Any] | Sequence[Any]) -> Mapping[str, Any]:
    """``{'text_encoder': cfg, 'text_encoder_2': cfg2}``; a list is taken in that order."""
    if isinstance(text_configs, Mapping):
        return text_configs
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    if len(text_configs) > len(names):
        raise ValueError(f"at most {len(names)} text-encoder configs; got {len(text_configs)}")
    return dict(zip(names, text_configs))


def detect_arch(denoiser_config: Any, text_encoder_configs: Mapping[str, Any] | Sequence[Any]) -> str:
    """The name of the family whose structure matches; ValueError naming the nearest otherwise."""
    return detect(denoiser_config, _text_mapping(text_encoder_configs)).name


def site_table(denoiser_config: Any, text_encoder_configs: Mapping[str, Any] | Sequence[Any]) -> SiteTable:
    """The site table of a model, under its detected family."""
    texts = _text_mapping(text_encoder_configs)
    return detect(denoiser_config, texts).site_table(denoiser_config, texts)


def published_site_table(family: str) -> SiteTable:
    """The site table of a published family, from its configs alone."""
    cfgs = published(family)
    fam = FAMILIES.get(family)
    texts = {k.split("/")[0]: v for k, v in cfgs.items() if k.startswith("text_encoder")}
    return fam.site_table(cfgs[f"{fam.denoiser}/config.json"], texts)

"""The published Stable Diffusion and diffusion-transformer configs, as JSON (no download needed).

Usage::

    from diffloc.tracing.configs import published
    cfg = published("sdxl")                  # {'model_index.json': {...}, 'unet/config.json': {...}, ...}
    cfg["unet/config.json"]["transformer_layers_per_block"]   # [1, 2, 10]

Keys are the file paths inside the Hugging Face repo (``_repo`` names it); values are those
files' JSON. ``FAMILIES`` are the UNet families; ``DIT_FAMILIES`` (``sd3``: SD3-medium,
``flux``: FLUX.1-dev, ``pixart``: PixArt-Σ XL 1024) were written from the published repos'
configs from memory, without hub access. Sources and doubts are listed in ``README.md`` beside this file.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

FAMILIES = ("sd1", "sd2", "sdxl")
DIT_FAMILIES = ("sd3", "flux", "pixart")
_HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def _load(family: str) -> dict:
    return json.loads((_HERE / f"{family}.json").read_text())


def published(family: str) -> dict:
    """A fresh copy of one family's published configs, keyed by repo file path."""
    if family not in FAMILIES + DIT_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES + DIT_FAMILIES)}")
    return copy.deepcopy(_load(family))

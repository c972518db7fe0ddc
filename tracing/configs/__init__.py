"""The published Stable Diffusion configs, written down as JSON (no download needed).

Usage::

    from diffloc.tracing.configs import published
    cfg = published("sdxl")                  # {'model_index.json': {...}, 'unet/config.json': {...}, ...}
    cfg["unet/config.json"]["transformer_layers_per_block"]   # [1, 2, 10]

Keys are the file paths inside the Hugging Face repo (``_repo`` names it); values are those
files' JSON. Sources and doubts are listed in ``README.md`` beside this file.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

FAMILIES = ("sd1", "sd2", "sdxl")
_HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def _load(family: str) -> dict:
    return json.loads((_HERE / f"{family}.json").read_text())


def published(family: str) -> dict:
    """A fresh copy of one family's published configs, keyed by repo file path."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    return copy.deepcopy(_load(family))

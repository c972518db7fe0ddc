"""Parts every replica builder shares: a class from a ``model_index.json`` entry, an offline CLIP tokenizer.

Usage::

    cls = _class(["diffusers", "UNet2DConditionModel"])
    tok = _tokenizer({"model_max_length": 77, "pad_token": "!"})
"""
from __future__ import annotations

import importlib
from typing import Any


def _class(entry: list) -> Any:
    library, name = entry
    return getattr(importlib.import_module(library), name)


def _tokenizer(config: dict):
    from diffloc.tracing.tokenizer import clip_tokenizer

    tok = clip_tokenizer(model_max_length=config.get("model_max_length", 77))
    if config.get("pad_token", tok.pad_token) != tok.pad_token:
        tok.pad_token = config["pad_token"]  # SD 2.x and SDXL's second tokenizer pad with "!"
    return tok

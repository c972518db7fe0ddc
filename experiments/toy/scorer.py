"""The toy world's CLIP scorer: a tiny open_clip ``CLIP`` trained apart from the model under study.

It is a plain open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``), so
open_clip's own API loads it::

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:experiments/toy/weights/scorer")
    tokenizer = open_clip.get_tokenizer("local-dir:experiments/toy/weights/scorer")

or, the same, ``model, preprocess, tokenizer = load_toy_scorer()``. Images are 32x32, normalised
with mean = std = 0.5 (so [0, 1] maps to [-1, 1]); ``image_features`` does that for tensors.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .paths import WEIGHTS_DIR


def toy_scorer_dir() -> Path:
    return WEIGHTS_DIR / "scorer"


def load_toy_scorer(path: str | Path | None = None):
    """(model, preprocess, tokenizer) of the toy scorer, via open_clip's ``local-dir:`` loader."""
    import open_clip

    folder = Path(path) if path is not None else toy_scorer_dir()
    if not (folder / "open_clip_config.json").exists():
        raise FileNotFoundError(f"no toy scorer at {folder}; run `python -m diffloc_toy.train --out experiments/toy/weights`")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.eval(), preprocess, tokenizer


@lru_cache(maxsize=2)
def _cached(path: str | None):
    return load_toy_scorer(path)


@torch.no_grad()
def image_features(model, images: torch.Tensor) -> torch.Tensor:
    """Unit image embeddings of float images [B, 3, 32, 32] in [0, 1]."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return F.normalize(model.encode_image((images - 0.5) / 0.5), dim=-1)


@torch.no_grad()
def text_features(model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer(list(texts))), dim=-1)


@torch.no_grad()
def cosine(images: torch.Tensor, texts: Sequence[str], path: str | Path | None = None) -> torch.Tensor:
    """[B, T] cosine similarities between images in [0, 1] and texts."""
    model, _, tok = _cached(None if path is None else str(path))
    return image_features(model, images) @ text_features(model, tok, texts).T


@torch.no_grad()
def pick(images: torch.Tensor, candidates: Sequence[Sequence[str]], path: str | Path | None = None) -> list[int]:
    """For each image, the index of its best-matching caption among its own candidates."""
    model, _, tok = _cached(None if path is None else str(path))
    img = image_features(model, images)
    return [int((text_features(model, tok, c) @ img[i]).argmax()) for i, c in enumerate(candidates)]

"""Scores of generated images: CLIP image-text similarity (open_clip). Ground truth: ``tracing.metrics``.

Usage::

    scorer = load_scorer("toy")                       # a world's own open_clip model (tracing.worlds)
    scorer = load_scorer("ViT-L-14-336/openai")       # open_clip name/pretrained (needs weights)
    s = scorer.score(images, ["a red circle"] * len(images))   # [B] = max(100·cos, 0); differentiable under grad mode
    p = scorer.probs(images, ["a red circle", "a blue circle"]) # [B, 2] softmax(100·cos)

Every sweep row records ``scorer.model_id`` and ``scorer.formula``. Images are float tensors
[B, 3, H, W] in [0, 1]; they are resized (bicubic, antialiased) to the scorer's input size and
normalised with its mean/std, which is what open_clip's own preprocess does to a PIL image.
:meth:`ClipScorer.score` is the one CLIP score of the project: the sweep's metric
(``tracing.metrics.ClipMetric``) and the gradient screens (``tracing.attribution``) call it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .errors import DifflocInputError

FORMULA = "max(100*cos(image, text), 0)"


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (a half-precision scorer's embeddings), float64 kept (finite-difference checks)."""
    return t if t.dtype == torch.float64 else t.float()


@dataclass
class ClipScorer:
    """An open_clip model with its tokenizer; scores images against texts."""

    model: Any
    tokenizer: Any
    model_id: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    formula: str = FORMULA

    def __post_init__(self) -> None:
        self.model.eval().requires_grad_(False)
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prep(self, images: torch.Tensor) -> torch.Tensor:
        """Float images [B, 3, H, W] in [0, 1] -> normalised scorer input [B, 3, S, S] (differentiable)."""
        param = next(self.model.parameters())
        x = images.to(param.device, param.dtype)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings [B, E]; keeps the graph to ``images`` under grad mode."""
        return F.normalize(_wide(self.model.encode_image(self.prep(images))), dim=-1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_images(images)  # [B, E]

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings [T, E], cached per text (no gradient)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            feats = F.normalize(_wide(self.model.encode_text(self.tokenizer(list(missing)).to(self.device))), dim=-1)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[t] for t in texts])  # [T, E]

    def cosine(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine of each image with its own text: [B]; differentiable in ``images`` under grad mode."""
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} texts; pass one text per image")
        return (self.embed_images(images) * self.text_features(texts)).sum(-1)

    def score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """CLIP score per image: max(100·cos, 0), [B] (the one CLIP score; see the module docstring)."""
        return (100 * self.cosine(images, texts)).clamp(min=0)

    def probs(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Zero-shot probabilities of each image over ``texts``: softmax(100·cos), [B, T]."""
        logits = 100 * self.image_features(images) @ self.text_features(texts).T
        return logits.softmax(dim=-1)


def from_open_clip(model: Any, tokenizer: Any, model_id: str) -> ClipScorer:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return ClipScorer(model=model, tokenizer=tokenizer, model_id=model_id, image_size=int(size), mean=mean, std=std)


def default_scorer(spec: str, model) -> str:
    """``auto``: the model's world's own scorer where it has one, else the paper's CLIP."""
    if spec != "auto":
        return spec
    from .worlds import world_of

    world = world_of(model)
    return world.name if world.has_scorer else "ViT-L-14-336/openai"


def load_scorer(spec: str = "toy", device: str | torch.device = "cpu") -> ClipScorer:
    """A world's own scorer (``toy``) or an open_clip ``name/pretrained`` pair (``ViT-L-14-336/openai``;
    ``ViT-L-14-336/random``: random weights, for benchmarks)."""
    from .worlds import WORLDS

    if spec == "auto":
        raise DifflocInputError("scorer 'auto' must be resolved against a model first (tracing.scoring.default_scorer)")
    if spec in WORLDS:
        got = WORLDS.get(spec).scorer()
        if got is None:
            raise DifflocInputError(f"world {spec!r} ships no scorer; give an open_clip 'name/pretrained' such as 'ViT-L-14-336/openai'")
        model, tokenizer, model_id = got
        return from_open_clip(model.to(device), tokenizer, model_id)
    import open_clip

    if "/" not in spec:
        raise DifflocInputError(f"unknown scorer {spec!r}; allowed: {', '.join(WORLDS.names())} or an open_clip 'name/pretrained' such as 'ViT-L-14-336/openai'")
    name, pretrained = spec.split("/", 1)
    if name not in open_clip.list_models():
        raise DifflocInputError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    try:  # 'random': the architecture with random weights, for speed and memory benchmarks only
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None if pretrained == "random" else pretrained, device=device)
    except Exception as err:  # open_clip raises many kinds when weights are absent offline
        raise DifflocInputError(f"cannot load open_clip weights {spec!r} ({type(err).__name__}); they must be cached locally when offline") from None
    return from_open_clip(model, open_clip.get_tokenizer(name), spec)

"""Metrics score generated images against a caption: the Metric protocol and its registry.

Usage::

    clip = ClipMetric(load_scorer("toy"))              # name 'clip', differentiable
    truth = GroundTruthMetric(get_world("toy"), "colour")   # name 'gt', exact readers
    mine = CallableMetric("redness", lambda imgs, texts: imgs[:, 0].mean((1, 2)))
    clip(images, ["a red circle"] * len(images))       # [B] float tensor
    metrics = default_metrics(model, scorer, "colour")  # what a sweep scores with

A sweep writes one column ``<name>_score`` (and ``effect_<name>``) per metric. A metric is
any object with ``name``, ``model_id``, ``formula``, ``differentiable``, ``role`` and
``__call__(images [B, 3, H, W] in [0, 1], texts) -> [B]``; gradient screens need
``differentiable=True`` and a call that keeps the graph when grad mode is on.

``role`` says what a metric is for: exactly one metric of a sweep has role ``scorer`` (its
``model_id`` and ``formula`` fill every row's ``scorer`` / ``formula`` columns, it ranks the
image strip and the screens take its gradient); every other metric is ``extra`` (a column
more). ``scorer_of(metrics)`` finds it; a sweep given only extra metrics adds the CLIP one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .errors import DifflocInputError
from .registry import Registry
from .scoring import ClipScorer

SCORER, EXTRA = "scorer", "extra"
ROLES = (SCORER, EXTRA)


@runtime_checkable
class Metric(Protocol):
    name: str
    model_id: str
    formula: str
    differentiable: bool
    role: str                # SCORER (the one recorded as the rows' scorer) or EXTRA

    def __call__(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """One score per image [B]."""


@dataclass
class ClipMetric:
    """CLIP score max(100·cos(image, text), 0); differentiable in the images under grad mode."""

    scorer: ClipScorer
    name: str = "clip"
    differentiable: bool = True
    role: str = SCORER

    @property
    def model_id(self) -> str:
        return self.scorer.model_id

    @property
    def formula(self) -> str:
        return self.scorer.formula

    def __call__(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self.scorer.score(images, texts)


@dataclass
class GroundTruthMetric:
    """1.0 where the world's exact reader sees the caption's value of ``attribute``, else 0.0."""

    world: Any
    attribute: str
    name: str = "gt"
    differentiable: bool = False
    role: str = EXTRA

    def __post_init__(self) -> None:
        if not self.world.has_readers:
            raise DifflocInputError(f"world {self.world.name!r} has no exact readers; ground truth needs a world that has")
        if self.attribute not in self.world.attributes:
            raise DifflocInputError(f"world {self.world.name!r} has no attribute {self.attribute!r}; allowed: {', '.join(self.world.attributes)}")

    @property
    def model_id(self) -> str:
        return f"{self.world.name}-readers"

    @property
    def formula(self) -> str:
        return f"read(image)[{self.attribute!r}] == parse_caption(text)[{self.attribute!r}]"

    def __call__(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        want = [self.world.parse_caption(t).get(self.attribute) for t in texts]
        got = [self.world.read(img.detach().cpu()).get(self.attribute) for img in images]
        return torch.tensor(np.array([g == w for g, w in zip(got, want)], dtype=np.float32))


@dataclass
class CallableMetric:
    """Any user function ``fn(images, texts) -> [B]`` as a metric."""

    name: str
    fn: Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
    differentiable: bool = False
    model_id: str = "callable"
    formula: str = "user function"
    role: str = EXTRA  # SCORER: record it as the rows' scorer (and take its gradient in screens)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise DifflocInputError(f"metric role {self.role!r} unknown; allowed: {', '.join(ROLES)}")
        if not self.name.isidentifier() or self.name in ("clip", "gt"):
            raise DifflocInputError(f"metric name {self.name!r} must be a new identifier (not clip or gt): it names the table column")

    def __call__(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return torch.as_tensor(self.fn(images, texts)).float()


def _clip(model, scorer: ClipScorer, attribute: str) -> Metric:
    return ClipMetric(scorer)


def _gt(model, scorer: ClipScorer, attribute: str) -> Metric | None:
    from .worlds import world_of

    world = world_of(model)
    if not world.has_readers or attribute not in world.attributes:
        return None
    return GroundTruthMetric(world, attribute)


#: name -> factory(model, scorer, attribute) -> Metric | None (None: not available for this model)
METRICS: Registry[Callable] = Registry("metric")
METRICS.register("clip", _clip)
METRICS.register("gt", _gt)


def scorer_of(metrics: Sequence[Metric]) -> Metric:
    """The one metric of role ``scorer``; a one-line input error when there is none or more than one."""
    found = [m for m in metrics if getattr(m, "role", EXTRA) == SCORER]
    if len(found) != 1:
        names = ", ".join(m.name for m in found) or "none"
        raise DifflocInputError(f"a sweep needs exactly one metric of role {SCORER!r}; got {names}")
    return found[0]


def with_scorer(metrics: Sequence[Metric], scorer: ClipScorer) -> list[Metric]:
    """``metrics``, with the CLIP metric of ``scorer`` first when none of them has role ``scorer``."""
    metrics = list(metrics)
    return metrics if any(getattr(m, "role", EXTRA) == SCORER for m in metrics) else [ClipMetric(scorer), *metrics]


def default_metrics(model, scorer: ClipScorer, attribute: str, names: Sequence[str] = ("clip", "gt")) -> list[Metric]:
    """The registered metrics that apply to ``model`` (ground truth only where its world has readers)."""
    out = [METRICS.get(n)(model, scorer, attribute) for n in names]
    return [m for m in out if m is not None]

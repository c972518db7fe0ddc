"""The toy world's attributes: five of them, each value spelled exactly as its caption word.

Usage::

    from diffloc_toy.attributes import ATTRIBUTES, all_attrs, check_attrs, sample_attrs

    len(all_attrs())                                      # 432 combinations, in a fixed order
    a = sample_attrs(np.random.default_rng(0))            # {'object': ..., 'colour': ..., ...}
    check_attrs(a)                                        # ValueError naming a bad attribute

:mod:`diffloc_toy.world` (renderer, captions) and :mod:`diffloc_toy.readers` build on these;
``world`` re-exports them.
"""
from __future__ import annotations

import itertools
from typing import Mapping

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "object": ("circle", "square", "triangle", "diamond"),
    "colour": ("red", "green", "blue", "yellow"),
    "style": ("plain", "striped", "checkered"),
    "viewpoint": ("top", "middle", "bottom"),
    "count": ("one", "two", "three"),
}
#: ``action`` has no faithful analogue at 32 px; see docs/toy_world.md.
EXCLUDED_ATTRIBUTES = ("action",)
N_OF = {"one": 1, "two": 2, "three": 3}
WORD_OF_N = {v: k for k, v in N_OF.items()}


# ----------------------------------------------------------------------------- attributes
def all_attrs() -> list[dict[str, str]]:
    """Every combination of attribute values (432), in a fixed order."""
    keys = list(ATTRIBUTES)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(ATTRIBUTES[k] for k in keys))]


def sample_attrs(rng: np.random.Generator) -> dict[str, str]:
    return {k: vals[int(rng.integers(len(vals)))] for k, vals in ATTRIBUTES.items()}


def check_attrs(attrs: Mapping[str, str]) -> None:
    for k, vals in ATTRIBUTES.items():
        if attrs.get(k) not in vals:
            raise ValueError(f"attribute {k!r} must be one of {vals}, got {attrs.get(k)!r}")

"""Write the toy world's marked prompt sets, ``experiments/prompts/toy/<attribute>.txt``.

Usage::

    python -m experiments.make_prompts          # deterministic; the files are committed

Each set has 12 prompts. Across a set, the traced attribute takes every value, the other
attributes vary, and the caption templates rotate (so token positions differ across prompts).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffloc_toy import world

OUT = Path(__file__).resolve().parent / "prompts" / "toy"
N_PROMPTS = 12


def prompt_set(attribute: str, n: int = N_PROMPTS, seed: int = 0) -> list[str]:
    rng = np.random.default_rng([seed, list(world.ATTRIBUTES).index(attribute)])
    values = world.ATTRIBUTES[attribute]
    out = []
    for i in range(n):
        attrs = world.sample_attrs(rng)
        attrs[attribute] = values[i % len(values)]
        out.append(world.mark(attrs, attribute, template=i % len(world.TEMPLATES)))
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for attribute in world.ATTRIBUTES:
        lines = [f"# toy world, attribute: {attribute}. Marked words are corrupted when tracing.", *prompt_set(attribute)]
        (OUT / f"{attribute}.txt").write_text("\n".join(lines) + "\n")
        print(OUT / f"{attribute}.txt")


if __name__ == "__main__":
    main()

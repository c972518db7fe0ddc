"""Caption corpora for editors: ReFACT's covariance corpus and its contrastive examples.

Usage::

    corpus, contrastive = read_corpus(None, model)            # the model's world's own captions
    corpus, contrastive = read_corpus(Path("captions.txt"), model)

The default is the model's world corpus (:mod:`tracing.worlds`): for the toy world all 432
attribute combinations in every template, for Stable Diffusion the shipped caption file
``tracing/data/corpora/sd_captions.txt`` (use a large corpus such as COCO captions for real
models). The contrastive subset is fixed: for the toy world 20 captions drawn with seed 0,
elsewhere every k-th line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffloc.tracing.worlds import corpus_lines, subsample, world_of


def read_corpus(path: Path | None, model, n_contrastive: int = 20, seed: int = 0) -> tuple[list[str], list[str]]:
    """(covariance corpus, contrastive captions) from a file, or from the model's world."""
    if path is not None:
        lines = corpus_lines(Path(path))
        return lines, subsample(lines, n_contrastive)
    world = world_of(model)
    lines = world.corpus()
    if world.has_readers:  # a generated corpus in template order: a seeded draw spreads over templates
        pick = np.random.default_rng(seed).choice(len(lines), n_contrastive, replace=False)
        return lines, [lines[i] for i in pick]
    return lines, subsample(lines, n_contrastive)

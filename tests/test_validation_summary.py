"""The screen-validation summary: which pairs count as informative, and extra ig runs as columns."""
from __future__ import annotations

import pandas as pd

from experiments.screen_validation import informative, markdown


def test_informative_keeps_pairs_whose_corruption_lowers_the_score():
    # pair (0, 0) drops 30 points, (0, 1) 0.4, (1, 0) rises: only the first moves the score enough
    t = pd.DataFrame({"prompt_index": [0, 0, 0, 1], "seed": [0, 0, 1, 0],
                      "clip_clean": [90.0, 90.0, 97.4, 97.5], "clip_corrupted": [60.0, 60.0, 97.0, 98.1]})
    assert informative(t, 5.0) == {(0, 0)}
    assert informative(t, 0.0) == {(0, 0), (0, 1)}
    assert informative(t, None) == {(0, 0), (0, 1), (1, 0)}


def test_markdown_adds_a_column_pair_per_extra_ig_run():
    base = {"attribute": "colour", "component": "unet", "pairs": 2, "sites": 32,
            "atp": {"spearman": 0.8, "top5_recall": 0.8, "misses": []},
            "ig": {"spearman": 0.5, "top5_recall": 0.6, "misses": []}}
    text = markdown([{**base, "ig32": {"spearman": 0.71, "top5_recall": 0.4, "misses": []}}, base])
    head, rule, first, second = text.strip().splitlines()
    assert "ig32 Spearman | ig32 top-5" in head and rule.count("---") == head.count("|") - 1
    assert "| 0.71 | 0.4 |" in first and "| — | — |" in second

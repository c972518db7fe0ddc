"""Where the toy world's shipped files live (imported by the plug-in, its CLI and its scripts).

Usage::

    from diffloc_toy.paths import MODEL_DIR, PROMPT_DIR
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
WEIGHTS_DIR = HERE / "weights"             # the shipped model and scorer
MODEL_DIR = WEIGHTS_DIR / "model"          # the shipped toy model (diffloc.json layout)
PROMPT_DIR = HERE.parent / "prompts" / "toy"
DIT_DIR = WEIGHTS_DIR / "dit"              # the shipped toy-dit (experiments/toy/train_dit.py export layout)

"""``diffloc toy train`` and ``diffloc toy evaluate``: the toy world's own commands.

Usage::

    diffloc toy train --out results/toy_retrain            # about 75-110 min on 2 CPU cores, resumable
    diffloc toy evaluate --out results/toy_eval            # fidelity and scorer agreement, sample grid
    diffloc toy evaluate --model-dir results/toy_retrain/model --out results/toy_eval_retrain

The world plug-in (``experiments/toy/plugin.py``) hands this app to diffloc's CLI, which
mounts it as ``diffloc toy``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffloc.tracing.errors import UsageError

toy_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="The embedded toy world: train and evaluate its model and scorer.")


def _say(msg: str) -> None:
    import os

    if not os.environ.get("DIFFLOC_QUIET"):
        typer.echo(msg)


@toy_app.command("train")
def toy_train(
    out: Path = typer.Option(Path("results/toy_retrain"), "--out", "-o", help="Output folder (model/, scorer/, train_log.jsonl); resumes if it exists."),
    seed: int = typer.Option(0, help="Training seed (recorded)."),
    unet_steps: Optional[int] = typer.Option(None, help="Override the UNet's training steps."),
    stages: str = typer.Option("clip,scorer,unet", help="Comma-separated stages to run."),
    device: str = typer.Option("cpu", help="cpu, or cuda[:N] to train on a GPU (same recipe; not bit-identical to CPU)."),
) -> None:
    """Train the toy world's CLIP (frozen text tower), open_clip scorer and UNet from scratch.

    Example: diffloc toy train --out results/toy_retrain
    """
    import dataclasses

    from .paths import WEIGHTS_DIR
    from .train import ToyTrainConfig, train

    shipped = WEIGHTS_DIR.resolve()
    if out.resolve() == shipped or shipped in out.resolve().parents:
        raise UsageError(f"--out {out} would overwrite the shipped toy weights in {shipped}; choose another folder")
    wanted = tuple(s.strip() for s in stages.split(",") if s.strip())
    bad = [s for s in wanted if s not in ("clip", "scorer", "unet")]
    if bad:
        raise UsageError(f"unknown stage {bad[0]!r}; allowed: clip, scorer, unet")
    try:
        cfg = ToyTrainConfig(seed=seed, device=device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if unet_steps is not None:
        cfg = dataclasses.replace(cfg, unet_steps=unet_steps)
    model_dir = train(out, cfg, stages=wanted)
    _say(f"toy model -> {model_dir}; log -> {out / 'train_log.jsonl'}")


@toy_app.command("evaluate")
def toy_evaluate(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: toy_eval.json and samples.png."),
    model_dir: Optional[Path] = typer.Option(None, help="A toy model folder (default: the shipped one)."),
    n_per_value: int = typer.Option(50, help="Samples per attribute value (fixed seeds)."),
    seed: int = typer.Option(0, help="First seed."),
) -> None:
    """Per-attribute prompt fidelity and CLIP-scorer agreement, judged by the exact readers.

    Example: diffloc toy evaluate --out results/toy_eval
    """
    from .evaluate import evaluate

    if n_per_value < 1:
        raise UsageError(f"--n-per-value must be >= 1, got {n_per_value}")
    result = evaluate(out, model_dir=model_dir, n_per_value=n_per_value, seed=seed)
    for key in ("fidelity", "clip_agreement"):
        if key in result:
            _say(f"{key}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result[key].items()))
    _say(f"-> {out / 'toy_eval.json'}, {out / 'samples.png'}")

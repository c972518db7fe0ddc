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


def _dit_fields(cls, pairs: list[str]) -> dict:
    """``["lr=5e-4", "warmup=100"]`` -> typed overrides of the dataclass ``cls``; a bad pair is a UsageError."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or key not in fields:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = type(fields[key].default)
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise UsageError(f"--set {pair!r}: {key} takes true or false")
            out[key] = raw.lower() in ("true", "1")
            continue
        try:
            out[key] = kind(raw)
        except ValueError:
            raise UsageError(f"--set {pair!r}: {key} takes a {kind.__name__}") from None
    return out


@toy_app.command("train")
def toy_train(
    out: Path = typer.Option(Path("results/toy_retrain"), "--out", "-o", help="Output folder (model/, scorer/, train_log.jsonl); resumes if it exists."),
    seed: int = typer.Option(0, help="Training seed (recorded)."),
    unet_steps: Optional[int] = typer.Option(None, help="Override the UNet's training steps."),
    stages: str = typer.Option("clip,scorer,unet", help="Comma-separated stages to run (--family unet)."),
    device: str = typer.Option("cpu", help="cpu, or cuda[:N] to train on a GPU (same recipe; not bit-identical to CPU)."),
    family: str = typer.Option("unet", help="unet: the SD-shaped toy (CLIP, scorer, UNet); dit: toy-dit, an SD3-style MM-DiT on the shipped frozen CLIP tower; vae: the latent toy-dit's autoencoder."),
    steps: Optional[int] = typer.Option(None, help="--family dit / vae: training steps (default: the recipe's)."),
    init_from: Optional[Path] = typer.Option(None, help="--family dit: start from an earlier run's ckpt/dit.pt on a new schedule."),
    dit_set: list[str] = typer.Option([], "--set", help="--family dit / vae: a recipe field, KEY=VALUE (repeatable), e.g. --set lr=5e-4."),
) -> None:
    """Train the toy world's CLIP (frozen text tower), open_clip scorer and UNet from scratch, or (--family dit) toy-dit.

    Example: diffloc toy train --out results/toy_retrain
    Example: diffloc toy train --family dit --out results/toy_dit     # resumable; about 1 s per step on one core
    Example: diffloc toy train --family dit --out results/toy_dit2 --init-from results/toy_dit/ckpt/dit.pt --steps 5000 --set lr=5e-4
    Example: diffloc toy train --family vae --out results/toy_ae            # then --family dit --set vae=results/toy_ae/vae --set patch_size=1
    """
    import dataclasses

    from .paths import WEIGHTS_DIR
    from .train import ToyTrainConfig, train

    shipped = WEIGHTS_DIR.resolve()
    if out.resolve() == shipped or shipped in out.resolve().parents:
        raise UsageError(f"--out {out} would overwrite the shipped toy weights in {shipped}; choose another folder")
    if family not in ("unet", "dit", "vae"):
        raise UsageError(f"unknown --family {family!r}; allowed: unet, dit, vae")
    if family == "vae":
        from .latent import VaeTrainConfig, train_vae

        over = _dit_fields(VaeTrainConfig, dit_set)
        if steps is not None:
            over["steps"] = steps
        try:
            vcfg = VaeTrainConfig(**{"seed": seed, **over})
        except ValueError as e:
            raise UsageError(str(e)) from None
        import torch

        with torch.enable_grad():
            folder = train_vae(out, vcfg)
        _say(f"toy-dit autoencoder -> {folder}; reader check -> {out / 'ae_check.json'}")
        return
    if family == "dit":
        from .train_dit import DitTrainConfig, train_dit

        over = _dit_fields(DitTrainConfig, dit_set)
        over.update({k: v for k, v in (("steps", steps), ("init_from", init_from and str(init_from))) if v is not None})
        try:
            dcfg = DitTrainConfig(**{"seed": seed, "device": device, **over})
        except ValueError as e:
            raise UsageError(str(e)) from None
        import torch

        with torch.enable_grad():
            folder = train_dit(out, dcfg, WEIGHTS_DIR / "model")
        _say(f"toy-dit -> {folder}; log -> {out / 'dit_log.jsonl'}")
        return
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
    model: str = typer.Option("toy", "--model", "-m", help="toy (the UNet) or toy-dit (the MM-DiT); --model-dir overrides."),
    n_per_value: int = typer.Option(50, help="Samples per attribute value (fixed seeds)."),
    seed: int = typer.Option(0, help="First seed."),
) -> None:
    """Per-attribute prompt fidelity and CLIP-scorer agreement, judged by the exact readers.

    Example: diffloc toy evaluate --out results/toy_eval
    """
    from .evaluate import evaluate

    if n_per_value < 1:
        raise UsageError(f"--n-per-value must be >= 1, got {n_per_value}")
    if model not in ("toy", "toy-dit"):
        raise UsageError(f"unknown --model {model!r}; allowed: toy, toy-dit")
    result = evaluate(out, model_dir=model_dir if model_dir is not None else model, n_per_value=n_per_value, seed=seed)
    for key in ("fidelity", "clip_agreement"):
        if key in result:
            _say(f"{key}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result[key].items()))
    _say(f"-> {out / 'toy_eval.json'}, {out / 'samples.png'}")

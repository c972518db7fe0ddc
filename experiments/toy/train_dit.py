"""Train ``toy-dit``: the toy world as an SD3-style MM-DiT, reproducibly, on the CPU.

Usage::

    diffloc toy train --family dit --out runs/dit --set vae=runs/ae/vae --set patch_size=1   # latent, as shipped
    diffloc toy train --family dit --out runs/pix                                           # pixels, patch 4
    python -m experiments.toy.train_dit --out /tmp/d --steps 20                             # smoke

The model is diffusers' ``SD3Transformer2DModel`` (joint attention over a text and an image
stream, adaLN on timestep + pooled text) trained with rectified flow (SD3's logit-normal timestep
sampling, velocity target ``noise - x0``) and sampled with ``FlowMatchEulerDiscreteScheduler``.
It runs in pixel space at 32x32, or (``vae``: a ``diffloc toy train --family vae`` run, see
``latent.py``) in that autoencoder's 8x8x8 latent space, as SD3 runs in its VAE's; the shipped
toy-dit is latent (docs/toy_world.md has its recipe). Its text encoder is the toy world's
*frozen* CLIP text tower, as SD3 freezes its encoders: sequence = ``last_hidden_state`` [77, 64],
pooled = ``pooler_output`` [64]. Unconditional = the encoding of "" (as SD3's pipeline encodes its
negative prompt), used for 10 % caption dropout. Every random draw comes from one CPU
``torch.Generator``, so a CPU run is bit-reproducible; the checkpoint holds that generator.

Outputs under ``OUT``: ``dit/`` (transformer, scheduler, diffloc.json, and vae/ for a latent run;
the text encoder and tokenizer are the toy model's, referenced from diffloc.json),
``dit_log.jsonl``, ``ckpt/dit.pt``, and ``curve.jsonl`` when ``eval_every`` is set.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from diffloc.tracing.errors import ConfigError

from . import world
from .train_base import Data, ToyTrainConfig, _bar, _lr, _seed_all, ema_update, state_hash


@dataclass(frozen=True)
class DitTrainConfig:
    seed: int = 0
    threads: int = 1
    n_images: int = 60_000
    patch_size: int = 4            # 8x8 = 64 image tokens at 32x32 (probe: 1.1 s/step vs 3.5 at patch 2)
    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 32             # width 128
    qk_norm: str = "rms_norm"      # SD3.5's choice; keeps lr 1e-3 stable
    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    shift: float = 1.0             # FlowMatchEuler shift; SD3 uses 3.0 at 1024², 32² pixels need none
    ckpt_every: int = 100
    export_every: int = 500
    guidance_scale: float = 3.0
    num_inference_steps: int = 20
    uniform_t_share: float = 0.0   # share of each batch whose sigma is uniform(0, 1) instead of logit-normal (more low-noise steps)
    device: str = "cpu"            # "cuda" trains on a GPU (draws stay on the CPU generator; not bit-identical to CPU)
    init_from: str = ""            # a dit.pt checkpoint: start from its weights (model, EMA, Adam moments) on a new schedule
    init_weights: str = ""         # an earlier export's transformer/ folder: its weights only (new Adam, EMA), generator seed + 8
    vae: str = ""                  # a `--family vae` run's OUT/vae: train in its latent space (8x8x8; use patch_size 1)
    eval_every: int = 0            # score the EMA every N steps on evaluate's 100 balanced prompts (curve.jsonl); 0: never
    stop_at: int = 0               # stop (checkpoint and export) after this step, the schedule still spanning `steps`; 0: at `steps`

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size must divide the {'latent' if self.vae else 'image'} size {self.image_size}, got {self.patch_size}")
        if self.init_from and self.init_weights:
            raise ValueError("give init_from (a dit.pt checkpoint) or init_weights (a transformer/ folder), not both")
        for name in ("steps", "batch", "num_layers", "num_heads", "head_dim", "n_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if not 0 <= self.uniform_t_share <= 1:
            raise ValueError(f"uniform_t_share must be in [0, 1], got {self.uniform_t_share}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if not 0 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at must be in [0, steps={self.steps}], got {self.stop_at}")

    @property
    def image_size(self) -> int:
        """Side of what the transformer sees: 32 pixels, or the VAE's 8x8 latent (two 2x downsamplings)."""
        return world.SIZE // 4 if self.vae else world.SIZE


def transformer_config(cfg: DitTrainConfig, text_dim: int, channels: int = 3) -> dict:
    """SD3Transformer2DModel kwargs: pixels (3 channels) or latents, the toy text tower's width as joint/pooled dims."""
    return dict(sample_size=cfg.image_size, patch_size=cfg.patch_size, in_channels=channels, out_channels=channels,
                num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads,
                joint_attention_dim=text_dim, caption_projection_dim=cfg.head_dim * cfg.num_heads,
                pooled_projection_dim=text_dim, pos_embed_max_size=cfg.image_size // cfg.patch_size, qk_norm=cfg.qk_norm)


@torch.no_grad()
def encode(text_encoder, tokenizer, captions: list[str], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence [N, 77, D], pooled [N, D]) of the frozen text tower, 77-token padded as SD."""
    seq, pooled = [], []
    for i in range(0, len(captions), batch):
        ids = tokenizer(captions[i:i + batch], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out = text_encoder(ids)
        seq.append(out.last_hidden_state)
        pooled.append(out.pooler_output)
    return torch.cat(seq), torch.cat(pooled)


def _log(out: Path, **row) -> None:
    row["time"] = round(time.time(), 2)
    with open(out / "dit_log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if "event" in row:
        print(json.dumps(row), flush=True)


def _export(out: Path, cfg: DitTrainConfig, ema, step: int, text_dir: Path, space=None) -> Path:
    """``OUT/dit``: transformer/ (the EMA), scheduler/, diffloc.json and, for a latent run, vae/ (SD3's
    scaling_factor and shift_factor in its config), each folder written beside and then renamed into place."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    dest = out / "dit"
    for name, save in (("transformer", ema.save_pretrained), ("vae", space.save if space is not None else None)):
        if save is None:
            continue
        tmp = dest / f"{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save(tmp)
        if (dest / name).exists():
            shutil.rmtree(dest / name)
        tmp.rename(dest / name)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift).save_pretrained(dest / "scheduler")
    meta = {"arch": "toy-dit", "world": "toy", "text_encoder_from": os.path.relpath(text_dir, dest),
            "sample_size": world.SIZE, "guidance_scale": cfg.guidance_scale, "num_inference_steps": cfg.num_inference_steps,
            "seed": cfg.seed, "steps_trained": step, "train_config": dataclasses.asdict(cfg)}
    (dest / "diffloc.json").write_text(json.dumps(meta, indent=2))
    return dest


def _score(out: Path, dest: Path, step: int) -> None:
    """Fidelity of an export on evaluate's 100 balanced prompts (Euler 20, guidance 3; read exactly) -> curve.jsonl."""
    from diffloc.tracing.models import load_model

    from .evaluate import eval_prompts, fidelity, generate

    attrs, prompts = eval_prompts(25, 0)
    model = load_model(str(dest))
    fid, by_value, _ = fidelity(generate(model, prompts, 0, model.defaults["num_inference_steps"], model.defaults["guidance_scale"]), attrs)
    with open(out / "curve.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "n": len(attrs), "fidelity": fid, "fidelity_by_value": by_value}) + "\n")
    _log(out, event="eval", step=step, fidelity={k: round(v, 3) for k, v in fid.items()})


def _batch_loss(model, cfg: DitTrainConfig, g: torch.Generator, data: Data, text: list[torch.Tensor], space=None) -> torch.Tensor:
    """Rectified-flow loss of one batch; every draw comes from the CPU generator ``g`` (same stream on any device).
    With a latent ``space`` the target is the VAE's normalised latent of the batch (no draw: posterior means)."""
    seq, pooled, un_seq, un_pooled = text                         # [N, 77, D], [N, D], [1, 77, D], [1, D]
    x0, _, cap = data.batch(g, cfg.batch)                          # [B, 3, 32, 32] in [-1, 1]
    if space is not None:
        x0 = space.latents(x0)                                     # [B, 8, 8, 8] on cfg.device, unit std
    drop = torch.rand(len(x0), generator=g) < cfg.caption_dropout
    sigma = torch.sigmoid(torch.randn(len(x0), generator=g))       # logit-normal(0, 1), as SD3
    if cfg.uniform_t_share:                                        # drawn only when asked: the default run's stream is unchanged
        uni = torch.rand(len(x0), generator=g) < cfg.uniform_t_share
        sigma = torch.where(uni, torch.rand(len(x0), generator=g), sigma)
    noise = torch.randn(x0.shape, generator=g)
    x0, cap, drop, sigma, noise = (v.to(cfg.device) for v in (x0, cap, drop, sigma, noise))
    c = torch.where(drop[:, None, None], un_seq.expand(len(x0), -1, -1), seq[cap])   # [B, 77, D]
    p = torch.where(drop[:, None], un_pooled.expand(len(x0), -1), pooled[cap])       # [B, D]
    s = sigma.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = model(xt, encoder_hidden_states=c, pooled_projections=p, timestep=sigma * 1000).sample
    return F.mse_loss(pred, noise - x0)


def _load_state(model, ema, opt, ckpt: Path) -> dict:
    """Load weights, EMA and Adam moments of a ``dit.pt`` into ``model``, ``ema``, ``opt``; returns the whole state."""
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    model.load_state_dict(state["model"]); ema.load_state_dict(state["ema"]); opt.load_state_dict(state["opt"])
    return state


def train_dit(out: str | Path, cfg: DitTrainConfig, text_dir: str | Path) -> Path:
    """Train (or resume) into ``out``; ``text_dir`` holds the frozen ``text_encoder``/``tokenizer``."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out, text_dir = Path(out), Path(text_dir)
    if cfg.init_from and not Path(cfg.init_from).is_file():
        raise ConfigError(f"--init-from {cfg.init_from}: no such checkpoint; give an earlier run's ckpt/dit.pt")
    for key in ("vae", "init_weights"):
        if getattr(cfg, key) and not (Path(getattr(cfg, key)) / "config.json").is_file():
            raise ConfigError(f"{key} {getattr(cfg, key)}: not a diffusers model folder (no config.json); give an earlier "
                              f"run's {'OUT/vae' if key == 'vae' else 'OUT/dit/transformer'}")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    tokenizer = CLIPTokenizer.from_pretrained(text_dir, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(text_dir, subfolder="text_encoder").eval().requires_grad_(False)
    data = Data(ToyTrainConfig(seed=cfg.seed, n_images=cfg.n_images))
    text = [t.to(cfg.device) for t in (*encode(text_encoder, tokenizer, data.captions), *encode(text_encoder, tokenizer, [""]))]
    space = None
    if cfg.vae:
        from .latent import LatentSpace

        space = LatentSpace(cfg.vae, data.images[:2000], cfg.device)           # normalisation from the first 2,000 renders
    _seed_all(cfg.seed + 5)
    model = SD3Transformer2DModel(**transformer_config(cfg, text_encoder.config.hidden_size, space.channels if space else 3))
    if cfg.init_weights:
        model = SD3Transformer2DModel.from_pretrained(cfg.init_weights)
    model = model.to(cfg.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg.seed + (8 if cfg.init_weights else 7))
    ck, start = out / "ckpt" / "dit.pt", 0
    if ck.exists():
        state = _load_state(model, ema, opt, ck)
        g.set_state(state["gen"]); start = state["step"]
        print(f"resumed at step {start}", flush=True)
    elif cfg.init_from:                                          # warm start: the schedule starts again at step 0
        parent = _load_state(model, ema, opt, Path(cfg.init_from))
        print(f"warm start from {cfg.init_from} (its step {parent['step']}, EMA {state_hash(ema)})", flush=True)
    _log(out, event="start", step=start, params=sum(p.numel() for p in model.parameters()), config=dataclasses.asdict(cfg))
    t0, run = time.time(), 0.0
    bar = _bar(cfg.steps, start, "toy dit")
    last = cfg.stop_at or cfg.steps
    for step in range(start, last):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, cfg.steps, cfg.lr, cfg.warmup)
        loss = _batch_loss(model, cfg, g, data, text, space)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, step, cfg.ema_decay)
        run = loss.item() if step == start else 0.98 * run + 0.02 * loss.item()
        if step % 25 == 0 or step == cfg.steps - 1:
            _log(out, step=step, loss=round(loss.item(), 4), loss_avg=round(run, 4), elapsed=round(time.time() - t0, 1))
        bar.update(1)
        done = step + 1
        if done % cfg.ckpt_every == 0 or done == last:
            ck.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "gen": g.get_state(), "step": done}, str(ck) + ".tmp")
            os.replace(str(ck) + ".tmp", ck)
            _log(out, event="ckpt", step=done, sha_ema=state_hash(ema))
        exported = None
        if done % cfg.export_every == 0 or done == last:
            exported = _export(out, cfg, ema, done, text_dir, space)
            _log(out, event="exported", step=done)
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == last):
            _score(out, exported or _export(out, cfg, ema, done, text_dir, space), done)
    bar.close()
    return out / "dit"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--text-dir", default=str(Path(__file__).resolve().parent / "weights" / "model"))
    for f in dataclasses.fields(DitTrainConfig):
        kind = {"int": int, "float": float, "str": str}[f.type] if isinstance(f.type, str) else f.type
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    args = p.parse_args(argv)
    over = {f.name: getattr(args, f.name) for f in dataclasses.fields(DitTrainConfig) if getattr(args, f.name) is not None}
    with torch.enable_grad():
        train_dit(args.out, DitTrainConfig(**over), args.text_dir)


if __name__ == "__main__":
    main()

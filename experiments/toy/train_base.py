"""Pieces every toy training stage shares: the config, the render pool, logging, seeding, the
learning-rate schedule, the contrastive loss, progress bars and state hashes.

Usage::

    from diffloc_toy.train_base import Data, ToyTrainConfig, state_hash

    cfg = ToyTrainConfig(unet_steps=200)
    data = Data(cfg)                                   # renders cfg.n_images images once
    x, combo, cap = data.batch(torch.Generator().manual_seed(0), 32)
    state_hash(model)                                  # '3f1c...' (16 hex): retrains compare against the log

:mod:`diffloc_toy.train` (the UNet pipeline) and :mod:`diffloc_toy.train_dit` build on these;
``train`` re-exports them.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffloc.tracing.errors import ConfigError

from . import world


@dataclass(frozen=True)
class ToyTrainConfig:
    seed: int = 0
    n_images: int = 60_000            # render pool; captions are drawn afresh per step
    device: str = "cpu"               # "cuda" trains on a GPU (not bit-identical to CPU; the shipped weights are CPU-trained)
    threads: int = 1                  # measured: 1 thread beats 2 on the shared 2-core box (0.8 vs 1.4-5 s per CLIP step)
    # (a) tiny CLIP: text tower = the diffusion model's text encoder
    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    vision_patch: int = 4
    projection_dim: int = 64
    clip_train_length: int = 24       # longest caption is 17 tokens; positions >= 24 stay as initialised (as in SD, padding never trained)
    clip_steps: int = 600
    clip_batch: int = 256
    clip_lr: float = 1e-3
    # (b) scorer: open_clip, its own seed
    scorer_seed: int = 1234
    scorer_width: int = 64
    scorer_layers: int = 4
    scorer_heads: int = 4
    scorer_context: int = 32
    scorer_steps: int = 2000
    scorer_hard_negatives: int = 64   # images per step that also rank captions differing in one attribute only
    scorer_hard_object_share: float = 0.5  # share of those where the varied attribute is the object (the hardest; v3)
    scorer_batch: int = 256
    scorer_lr: float = 2e-3
    # (c) UNet
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: int = 2         # cross-attention in the lowest N resolutions (1: 8x8 only; 2: 8x8 and 16x16)
    attention_head_dim: int = 4       # diffusers' name; = number of heads here
    norm_num_groups: int = 8
    unet_steps: int = 2000
    unet_batch: int = 64
    unet_lr: float = 4e-3            # v3; 1e-3 (v2) left objects at 0.77 fidelity
    unet_warmup: int = 100
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0            # Min-SNR-gamma loss weighting (Hang et al. 2023); 0 = plain epsilon MSE
    ema_decay: float = 0.999
    ckpt_every: int = 200
    export_every: int = 500
    guidance_scale: float = 2.0       # default written to diffloc.json; evaluate.py measures it
    num_inference_steps: int = 20

    def __post_init__(self):
        n = len(self.block_out_channels)
        if not 1 <= self.attention_levels <= n:
            raise ConfigError(f"attention_levels must be in 1..{n} (levels of block_out_channels), got {self.attention_levels}")
        if self.snr_gamma < 0:
            raise ConfigError(f"snr_gamma must be >= 0 (0 = off), got {self.snr_gamma}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        for name in ("clip_steps", "scorer_steps", "unet_steps", "unet_batch", "clip_batch", "scorer_batch", "n_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def _log(out: Path, name: str = "train_log.jsonl", /, **row) -> None:
    row["time"] = round(time.time(), 2)
    with open(out / name, "a") as f:
        f.write(json.dumps(row) + "\n")
    if os.environ.get("DIFFLOC_QUIET") != "1" and "event" in row:   # per-step rows live in the log and the bar
        from tqdm import tqdm

        tqdm.write(json.dumps(row))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Data:
    """A fixed pool of renders; each step draws images and a fresh caption template."""

    def __init__(self, cfg: ToyTrainConfig):
        t0 = time.time()
        self.images, attrs, _ = world.random_dataset(cfg.n_images, seed=cfg.seed)
        combos = world.all_attrs()
        self.combo_index = {tuple(sorted(a.items())): i for i, a in enumerate(combos)}
        self.combo = torch.tensor([self.combo_index[tuple(sorted(a.items()))] for a in attrs])
        self.combos = combos
        self.n_templates = len(world.TEMPLATES)
        # caption id = combo * n_templates + template
        self.captions = [world.caption(a, t) for a in combos for t in range(self.n_templates)]
        print(f"rendered {cfg.n_images} images in {time.time() - t0:.1f}s", flush=True)

    def batch(self, g: torch.Generator, n: int, noise_aug: bool = False):
        idx = torch.randint(len(self.images), (n,), generator=g)
        x = self.images[idx].float() / 127.5 - 1.0
        flip = torch.rand(n, generator=g) < 0.5  # a horizontal flip keeps every attribute
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if noise_aug:
            x = x + torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.1
        tpl = torch.randint(self.n_templates, (n,), generator=g)
        combo = self.combo[idx]
        return x, combo, combo * self.n_templates + tpl


def _multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, combo: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same attributes counts as a positive."""
    img = F.normalize(img, dim=-1)
    txt = F.normalize(txt, dim=-1)
    logits = scale.exp().clamp(max=100) * img @ txt.T
    pos = (combo[:, None] == combo[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.log_softmax(0).T, 1).mean())


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA of ``model`` into ``ema`` with warm-up: decay min(``decay``, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1 - d)


def state_hash(module: torch.nn.Module) -> str:
    """sha256 (first 16 hex) of a module's parameters in name order: retrains compare against the log."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode()); h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _bar(total: int, initial: int, desc: str):
    """Progress bar with steps done, rate and time left (stderr); silent under ``diffloc --quiet``."""
    from tqdm import tqdm

    quiet = os.environ.get("DIFFLOC_QUIET") == "1"
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=quiet, dynamic_ncols=True)

"""The latent toy-dit's autoencoder: diffusers' ``AutoencoderKL`` (32x32x3 -> 8x8x8), its training, its latent space.

Usage::

    diffloc toy train --family vae --out runs/ae                       # 3,000 steps, resumable
    diffloc toy train --family vae --out runs/ae2 --set init_from=runs/ae/vae --set lr=5e-4 --set cosine=true

    space = LatentSpace("runs/ae/vae", renders)      # shift and scale measured on renders, as SD3's VAE config
    z = space.latents(x)                             # [B, 8, 8, 8] with unit std, from x [B, 3, 32, 32] in [-1, 1]

SD3 runs its transformer in a VAE's latent space; so does the shipped toy-dit. Training is L1 + MSE
+ 1e-4 KL on the toy world's training renders; every ``check_every`` steps (from step 1,000) the
posterior-mean reconstructions of 400 fresh renders are read by the exact readers
(:func:`reader_check`): the ceiling any latent model inherits. Every draw comes from one CPU
generator held in ``OUT/ckpt/vae.pt`` (every ``ckpt_every`` steps), so a run resumes and repeats
bit for bit on the CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from diffloc.tracing.errors import ConfigError

from .train_base import Data, ToyTrainConfig, _bar, _log, _lr


@dataclass(frozen=True)
class VaeTrainConfig:
    seed: int = 0
    threads: int = 1
    n_images: int = 60_000
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    cosine: bool = False           # cosine to 0 after the warm-up (else constant after it)
    kl_weight: float = 1e-4
    init_from: str = ""            # an earlier run's OUT/vae: its weights, on a new Adam and schedule
    ckpt_every: int = 100
    check_every: int = 500

    def __post_init__(self):
        for name in ("steps", "batch", "n_images", "ckpt_every", "check_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.kl_weight < 0:
            raise ValueError(f"lr must be > 0 and kl_weight >= 0, got {self.lr} and {self.kl_weight}")


def new_vae():
    """Three levels (two 2x downsamplings), 8 latent channels: 0.96 M parameters."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                         latent_channels=8, norm_num_groups=16, sample_size=32)


@torch.no_grad()
def reader_check(vae, n: int = 400) -> dict:
    """Exact readings of ``n`` fresh renders' reconstructions (posterior mean) against their attributes."""
    from . import world
    from .evaluate import balanced_attrs, fidelity

    vae.eval()
    attrs = balanced_attrs(n // 4, 5)
    ren = world.to_float(world.render_batch(attrs, seed=7))                      # [n, 3, 32, 32] in [0, 1]
    rec = (vae.decode(vae.encode(ren * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    fid, by_value, _ = fidelity(rec, attrs)
    return {"fidelity": fid, "fidelity_by_value": by_value, "n": len(attrs)}


def _vae_lr(cfg: VaeTrainConfig, step: int) -> float:
    return _lr(step, cfg.steps, cfg.lr, cfg.warmup) if cfg.cosine else cfg.lr * min(1.0, (step + 1) / cfg.warmup)


def train_vae(out: str | Path, cfg: VaeTrainConfig) -> Path:
    """Train (or resume) into ``out``: ``vae/``, ``ae_check.json``, ``vae_log.jsonl``, ``ckpt/vae.pt``."""
    from diffusers import AutoencoderKL

    out = Path(out)
    if cfg.init_from and not (Path(cfg.init_from) / "config.json").is_file():
        raise ConfigError(f"init_from {cfg.init_from}: not an autoencoder folder (no config.json); give an earlier run's OUT/vae")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL.from_pretrained(cfg.init_from) if cfg.init_from else new_vae()
    data, g = Data(ToyTrainConfig(seed=cfg.seed, n_images=cfg.n_images)), torch.Generator().manual_seed(cfg.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    ck, start, checks = out / "ckpt" / "vae.pt", 0, {}
    if ck.exists():
        state = torch.load(ck, weights_only=False)
        vae.load_state_dict(state["vae"]); opt.load_state_dict(state["opt"]); g.set_state(state["gen"])
        start, checks = state["step"], state["checks"]
        print(f"resumed at step {start}", flush=True)
    bar, t0 = _bar(cfg.steps, start, "toy vae"), time.time()
    for step in range(start, cfg.steps):
        for pg in opt.param_groups:
            pg["lr"] = _vae_lr(cfg, step)
        x, _, _ = data.batch(g, cfg.batch)                                         # [B, 3, 32, 32] in [-1, 1]
        post = vae.encode(x).latent_dist                                          # mean, std [B, 8, 8, 8]
        rec = vae.decode(post.mean + post.std * torch.randn(post.mean.shape, generator=g)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.kl_weight * post.kl().mean() / x[0].numel()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        bar.update(1)
        done = step + 1
        if done % cfg.check_every == 0 and done >= 1000:
            checks[str(done)] = reader_check(vae)["fidelity"]
            vae.train()
            _log(out, "vae_log.jsonl", event="check", step=done, loss=round(loss.item(), 4), check=checks[str(done)],
                 elapsed=round(time.time() - t0, 1))
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            ck.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "gen": g.get_state(), "step": done, "checks": checks},
                       str(ck) + ".tmp")
            os.replace(str(ck) + ".tmp", ck)
    bar.close()
    vae.save_pretrained(out / "vae")
    result = {"config": dataclasses.asdict(cfg), "checks": checks, **reader_check(vae)}
    (out / "ae_check.json").write_text(json.dumps(result, indent=2))
    return out / "vae"


class LatentSpace:
    """A frozen VAE and its normalisation ``z = (mean - shift) * scale``, one shift and scale measured on ``renders``."""

    def __init__(self, vae_dir: str | Path, renders: torch.Tensor, device: str = "cpu"):
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False).to(device)
        self.device = device
        with torch.no_grad():
            z = self.vae.encode(renders.float().to(device) / 127.5 - 1).latent_dist.mean   # [N, 8, 8, 8]
        self.shift, self.scale = z.mean().item(), 1.0 / z.std().item()

    @property
    def channels(self) -> int:
        return self.vae.config.latent_channels

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 32, 32] in [-1, 1] -> normalised posterior means [B, C, 8, 8]."""
        return (self.vae.encode(x.to(self.device)).latent_dist.mean - self.shift) * self.scale

    def save(self, dest: Path) -> None:
        """The VAE with ``scaling_factor`` and ``shift_factor`` in its config (SD3's), as ``load_model`` decodes."""
        import copy

        vae = copy.deepcopy(self.vae).cpu()
        vae.register_to_config(scaling_factor=self.scale, shift_factor=self.shift)
        vae.save_pretrained(dest)

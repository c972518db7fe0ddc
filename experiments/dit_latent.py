"""Does toy-dit learn the toy world faster in a latent space, as SD3 itself runs? A recipe probe.

Usage::

    python -m experiments.dit_latent ae  --out /tmp/lat --steps 3000                 # AutoencoderKL, f4, 8 channels
    python -m experiments.dit_latent ae  --out /tmp/lat2 --steps 3000 --init-from /tmp/lat/vae --lr 5e-4 --cosine
    python -m experiments.dit_latent dit --vae /tmp/lat/vae --out /tmp/latdit --steps 2000   # scored every 500
    python -m experiments.dit_latent dit --vae /tmp/lat/vae --out /tmp/latdit2 --steps 2500 --init-from /tmp/latdit/transformer --lr 5e-4 --warmup 100

Stage ``ae`` trains diffusers' ``AutoencoderKL`` (32x32x3 -> 8x8x8, 0.96 M parameters; L1 + MSE + 1e-4 KL)
on the toy world's training renders, then reads back its reconstructions of 400 fresh renders with the
exact readers (``ae_check.json``): the ceiling any latent model inherits. Stage ``dit`` trains the
shipped toy-dit's transformer (6 blocks, width 128, 3.47 M parameters) on those latents at patch 1,
so it sees 64 image tokens as the shipped patch-4 pixel model does and costs the same per step, with
the recipe of runs r5/r6 (seed 0, lr 1e-3, 200 warm-up, cosine to 0, batch 64, EMA 0.999, 10 %
caption dropout, logit-normal sigma). Every ``--every`` steps the EMA samples evaluate's 100
balanced prompts (Euler 20 steps, guidance 3, the empty caption as negative), decodes them and reads
them exactly: ``curve.jsonl`` and ``samples_STEP.png``. Latents are normalised as SD3's VAE
config does it: ``z = (mean - shift) * scale`` with one shift and scale measured on 2,000 renders.

Every draw comes from explicit generators, one thread: a run repeats bit for bit on the CPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

TEXT_DIR = Path(__file__).resolve().parent / "toy" / "weights" / "model"


def new_vae():
    """The probe's autoencoder: three levels (two 2x downsamplings), 8 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                         latent_channels=8, norm_num_groups=16, sample_size=32)


@torch.no_grad()
def reader_check(vae, n: int = 400) -> dict:
    """Exact readings of ``n`` fresh renders' reconstructions (posterior mean) against their attributes."""
    from diffloc_toy import world
    from diffloc_toy.evaluate import balanced_attrs, fidelity

    vae.eval()
    attrs = balanced_attrs(n // 4, 5)
    ren = world.to_float(world.render_batch(attrs, seed=7))                      # [n, 3, 32, 32] in [0, 1]
    rec = (vae.decode(vae.encode(ren * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    fid, by_value, _ = fidelity(rec, attrs)
    return {"fidelity": fid, "fidelity_by_value": by_value, "n": len(attrs)}


def train_ae(out: Path, steps: int, init_from: str | None = None, lr: float = 1e-3, cosine: bool = False) -> dict:
    from diffusers import AutoencoderKL

    from diffloc_toy.train_base import Data, ToyTrainConfig, _lr

    torch.manual_seed(0)
    vae = new_vae()
    if init_from:
        vae = AutoencoderKL.from_pretrained(init_from)
    data, g = Data(ToyTrainConfig(seed=0, n_images=60_000)), torch.Generator().manual_seed(11)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    checks, t0 = {}, time.time()
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, steps, lr, 100) if cosine else lr * min(1.0, (step + 1) / 100)
        x, _, _ = data.batch(g, 32)                                               # [32, 3, 32, 32] in [-1, 1]
        post = vae.encode(x).latent_dist                                          # mean, std [32, 8, 8, 8]
        rec = vae.decode(post.mean + post.std * torch.randn(post.mean.shape, generator=g)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * post.kl().mean() / x[0].numel()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % 500 == 0 and step + 1 >= 1000:
            checks[step + 1] = reader_check(vae)["fidelity"]
            vae.train()
            print("check", step + 1, checks[step + 1], round(time.time() - t0), flush=True)
    vae.save_pretrained(out / "vae")
    result = {"steps": steps, "init_from": init_from, "lr": lr, "cosine": cosine, "checks": checks, **reader_check(vae)}
    (out / "ae_check.json").write_text(json.dumps(result, indent=2))
    return result


class LatentDit:
    """The text tower, the frozen VAE and its normalisation: encode renders, sample and decode."""

    def __init__(self, vae_dir: str | Path, renders: torch.Tensor, device: str = "cpu"):
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        from diffloc_toy.train_dit import encode

        self.device = device
        self.vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False).to(device)
        self.tok = CLIPTokenizer.from_pretrained(TEXT_DIR, subfolder="tokenizer")
        self.te = CLIPTextModel.from_pretrained(TEXT_DIR, subfolder="text_encoder").eval().requires_grad_(False)
        self.un_seq, self.un_pooled = (t.to(device) for t in encode(self.te, self.tok, [""]))   # [1, 77, 64], [1, 64]
        with torch.no_grad():
            z = self.vae.encode(renders.float().to(device) / 127.5 - 1).latent_dist.mean   # [N, 8, 8, 8]
        self.shift, self.scale = z.mean().item(), 1.0 / z.std().item()

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        return (self.vae.encode(x.to(self.device)).latent_dist.mean - self.shift) * self.scale

    @torch.no_grad()
    def sample(self, net, prompts: list[str], seed: int, steps: int = 20, guidance: float = 3.0,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Euler on FlowMatchEulerDiscreteScheduler (shift 1) with CFG; images [B, 3, 32, 32] in [0, 1]."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        ids = self.tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        o = self.te(ids)
        b = len(prompts)
        c = torch.cat([self.un_seq.expand(b, -1, -1), o.last_hidden_state.to(self.device)])
        p = torch.cat([self.un_pooled.expand(b, -1), o.pooler_output.to(self.device)])
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        sched.set_timesteps(steps)
        if noise is None:
            noise = torch.randn((b, 8, 8, 8), generator=torch.Generator().manual_seed(seed))
        x = noise.to(self.device)
        for t in sched.timesteps:
            v = net(torch.cat([x, x]), encoder_hidden_states=c, pooled_projections=p, timestep=t.expand(2 * b)).sample
            vu, vc = v.chunk(2)
            x = sched.step(vu + guidance * (vc - vu), t, x).prev_sample
        return (self.vae.decode(x / self.scale + self.shift).sample / 2 + 0.5).clamp(0, 1).cpu()


def export(lat: LatentDit, net, dest: Path, steps_trained: int) -> Path:
    """A toy-dit folder ``load_model`` opens as a latent model: ``transformer/``, ``vae/`` (its config carrying
    the latent ``scaling_factor`` and ``shift_factor``, as SD3's), ``scheduler/``, ``diffloc.json``."""
    import shutil

    from diffusers import FlowMatchEulerDiscreteScheduler

    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    net.save_pretrained(tmp / "transformer")
    vae = copy.deepcopy(lat.vae).cpu()
    vae.register_to_config(scaling_factor=lat.scale, shift_factor=lat.shift)
    vae.save_pretrained(tmp / "vae")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(tmp / "scheduler")
    meta = {"arch": "toy-dit", "world": "toy", "text_encoder_from": os.path.relpath(TEXT_DIR, dest), "guidance_scale": 3.0,
            "num_inference_steps": 20, "seed": 0, "steps_trained": steps_trained, "latent": "experiments.dit_latent"}
    (tmp / "diffloc.json").write_text(json.dumps(meta, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def score(lat: LatentDit, net, step: int, out: Path) -> dict:
    """Fidelity of ``net`` on evaluate's 100 balanced prompts (chunks of 50, seed = first index), read exactly."""
    import torchvision

    from diffloc_toy.evaluate import eval_prompts, fidelity

    attrs, prompts = eval_prompts(25, 0)
    imgs = torch.cat([lat.sample(net, prompts[i:i + 50], seed=i) for i in range(0, len(prompts), 50)])
    fid, by_value, _ = fidelity(imgs, attrs)
    row = {"step": step, "n": len(attrs), "fidelity": fid, "fidelity_by_value": by_value}
    with open(out / "curve.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    torchvision.utils.save_image(imgs[:32], out / f"samples_{step}.png", nrow=16, padding=1)
    print("eval", step, {k: round(v, 2) for k, v in fid.items()}, flush=True)
    return row


def _latent_loss(model, lat: LatentDit, data, g: torch.Generator, seq, pooled, device: str) -> torch.Tensor:
    """Rectified-flow loss of one batch of 64 on the VAE's latents; every draw from the CPU generator ``g``."""
    x0, _, cap = data.batch(g, 64)
    z0 = lat.latents(x0)                                                          # [64, 8, 8, 8], unit std
    drop = torch.rand(len(z0), generator=g) < 0.1                                 # draws on the CPU generator, on any device
    sigma = torch.sigmoid(torch.randn(len(z0), generator=g))                      # logit-normal, as SD3
    noise = torch.randn(z0.shape, generator=g)
    cap, drop, sigma, noise = (v.to(device) for v in (cap, drop, sigma, noise))
    c = torch.where(drop[:, None, None], lat.un_seq.expand(len(z0), -1, -1), seq[cap])   # [64, 77, 64]
    p = torch.where(drop[:, None], lat.un_pooled.expand(len(z0), -1), pooled[cap])       # [64, 64]
    s = sigma.view(-1, 1, 1, 1)
    pred = model((1 - s) * z0 + s * noise, encoder_hidden_states=c, pooled_projections=p, timestep=sigma * 1000).sample
    return F.mse_loss(pred, noise - z0)


def train_latent_dit(out: Path, vae_dir: str, steps: int, every: int = 500, device: str = "cpu",
                     init_from: str | None = None, lr: float = 1e-3, warmup: int = 200, ckpt_every: int = 100,
                     n_images: int = 60_000) -> None:
    """From scratch, or (``init_from``: an earlier run's OUT/transformer) warm-started on a new warm-up + cosine.
    Resumable: ``OUT/ckpt.pt`` (weights, EMA, Adam, generator) every ``ckpt_every`` steps; a rerun goes on from it."""
    from diffusers import SD3Transformer2DModel

    from diffloc_toy.train_base import Data, ToyTrainConfig, _lr, _seed_all, ema_update
    from diffloc_toy.train_dit import encode

    data = Data(ToyTrainConfig(seed=0, n_images=n_images))
    lat = LatentDit(vae_dir, data.images[:2000], device)
    seq, pooled = (t.to(device) for t in encode(lat.te, lat.tok, data.captions))   # [C, 77, 64], [C, 64]
    _seed_all(5)
    model = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=8, out_channels=8, num_layers=6,
                                  attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
                                  caption_projection_dim=128, pooled_projection_dim=64, pos_embed_max_size=8, qk_norm="rms_norm")
    if init_from:
        model = SD3Transformer2DModel.from_pretrained(init_from)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g, first, ck = torch.Generator().manual_seed(7 if not init_from else 8), 0, out / "ckpt.pt"
    if ck.exists():
        state = torch.load(ck, weights_only=False, map_location=device)
        model.load_state_dict(state["model"]); ema.load_state_dict(state["ema"]); opt.load_state_dict(state["opt"])
        g.set_state(state["gen"]); first = state["step"]
        print(f"resumed at step {first}", flush=True)
    (out / "latent_norm.json").write_text(json.dumps({"shift": lat.shift, "scale": lat.scale, "vae": str(vae_dir)}))
    for step in range(first, steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, steps, lr, warmup)
        loss = _latent_loss(model, lat, data, g, seq, pooled, device)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, step, 0.999)
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "gen": g.get_state(),
                        "step": step + 1}, str(ck) + ".tmp")
            os.replace(str(ck) + ".tmp", ck)
        if (step + 1) % every == 0 or step + 1 == steps:
            score(lat, ema.eval(), step + 1, out)
            ema.save_pretrained(out / "transformer")
            export(lat, ema, out / "dit", step + 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=["ae", "dit"])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--vae", default=None, help="dit: the ae stage's OUT/vae")
    p.add_argument("--every", type=int, default=500, help="dit: score every N steps")
    p.add_argument("--device", default="cpu", help="dit: cpu or cuda (draws stay on the CPU generator)")
    p.add_argument("--init-from", default=None, help="ae: an earlier OUT/vae; dit: an earlier OUT/transformer (warm start)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--warmup", type=int, default=200, help="dit: warm-up steps")
    p.add_argument("--cosine", action="store_true", help="ae: cosine to 0 after the warm-up instead of constant")
    a = p.parse_args(argv)
    if a.steps < 1 or a.every < 1:
        p.error(f"--steps and --every must be >= 1, got {a.steps} and {a.every}")
    for name, path in (("--vae", a.vae), ("--init-from", a.init_from)):
        if path and not (Path(path) / "config.json").is_file():
            p.error(f"{name} {path}: not a diffusers model folder (no config.json); give an earlier stage's OUT/vae or OUT/transformer")
    if a.device != "cpu" and not a.device.startswith("cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {a.device!r}")
    if a.stage == "dit" and not a.vae:
        p.error("the dit stage needs --vae (the ae stage's OUT/vae)")
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.enable_grad():
        if a.stage == "ae":
            print(json.dumps(train_ae(out, a.steps, a.init_from, a.lr, a.cosine)["fidelity"]))
        else:
            train_latent_dit(out, a.vae, a.steps, a.every, a.device, a.init_from, a.lr, a.warmup)


if __name__ == "__main__":
    main()

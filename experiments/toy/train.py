"""Train the toy world's model and scorer, reproducibly, on CPU.

Three stages, each resumable and skipped when its output exists:

a. ``clip``   a tiny transformers ``CLIPModel`` trained contrastively on renders + captions;
              its text tower (a ``CLIPTextModel``) is then frozen and becomes the diffusion
              model's text encoder, the way Stable Diffusion freezes OpenAI's CLIP.
b. ``scorer`` a separately trained tiny open_clip ``CLIP`` (own configs, another seed), saved
              as a folder ``open_clip.create_model_and_transforms('local-dir:PATH')`` loads.
c. ``unet``   a pixel-space diffusers ``UNet2DConditionModel`` trained with DDPM (epsilon),
              10 % caption dropout, EMA, conditioned on the frozen encoder's
              ``last_hidden_state`` of the 77-token padded caption, exactly as SD.

Usage::

    python -m diffloc_toy.train --out experiments/toy/weights
    python -m diffloc_toy.train --out /tmp/toy --unet-steps 200 --clip-steps 50 --scorer-steps 50   # smoke

Outputs under ``OUT``: ``model/`` (text_encoder, tokenizer, unet, scheduler, diffloc.json),
``scorer/`` (open_clip_config.json + open_clip_model.safetensors), and, outside the shipped
folders, ``train_log.jsonl`` and ``ckpt/`` (resume state).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world
from .train_base import Data, ToyTrainConfig, _bar, _log, _lr, _multi_positive_loss, _seed_all, ema_update, state_hash  # noqa: F401

SCHEDULER_KW = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)


# ----------------------------------------------------------------------------- (a) tiny CLIP
def clip_config(cfg: ToyTrainConfig):
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
                num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
                projection_dim=cfg.projection_dim, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 4, num_hidden_layers=cfg.vision_layers,
                  num_attention_heads=cfg.vision_heads, image_size=world.SIZE, patch_size=cfg.vision_patch,
                  num_channels=3, projection_dim=cfg.projection_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)


def train_clip(out: Path, cfg: ToyTrainConfig, data: Data, tokenizer) -> None:
    from transformers import CLIPModel

    dest = out / "model" / "text_encoder"
    if (dest / "config.json").exists():
        print("stage clip: done already", flush=True)
        return
    _seed_all(cfg.seed)
    model = CLIPModel(clip_config(cfg)).to(cfg.device)
    ids = tokenizer(data.captions, padding="max_length", max_length=cfg.clip_train_length, truncation=True, return_tensors="pt").input_ids
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(cfg.seed + 11)
    t0 = time.time()
    bar = _bar(cfg.clip_steps, 0, "toy clip")
    for step in range(cfg.clip_steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, cfg.clip_steps, cfg.clip_lr, 100)
        x, combo, cap = data.batch(g, cfg.clip_batch, noise_aug=True)
        x, combo = x.to(cfg.device), combo.to(cfg.device)
        img = model.get_image_features(pixel_values=x)
        txt = model.get_text_features(input_ids=ids[cap].to(cfg.device))
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        loss = _multi_positive_loss(img, txt, model.logit_scale, combo)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.clip_steps - 1:
            _log(out, stage="clip", step=step, loss=round(loss.item(), 4), elapsed=round(time.time() - t0, 1))
        bar.update(1); bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval().cpu()
    text_encoder = _text_tower(model, cfg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    text_encoder.save_pretrained(dest)
    _log(out, stage="clip", event="saved", path=str(dest), elapsed=round(time.time() - t0, 1), sha=state_hash(text_encoder))


def _text_tower(model, cfg: ToyTrainConfig):
    """The CLIPModel's text tower as a standalone CLIPTextModel (same weights)."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(model.config.text_config)
    src = model.text_model.state_dict()
    missing, unexpected = te.load_state_dict(src, strict=False)
    if missing or unexpected:  # transformers 5 dropped the .text_model wrapper; names must still line up
        raise RuntimeError(f"text tower does not match CLIPTextModel: missing {missing}, unexpected {unexpected}")
    return te.eval()


# ----------------------------------------------------------------------------- (b) scorer
def scorer_config(cfg: ToyTrainConfig) -> dict:
    return {
        "model_cfg": {
            "embed_dim": cfg.projection_dim,
            "vision_cfg": {"image_size": world.SIZE, "layers": cfg.scorer_layers, "width": cfg.scorer_width,
                           "head_width": cfg.scorer_width // cfg.scorer_heads, "mlp_ratio": 4.0, "patch_size": 4},
            "text_cfg": {"context_length": cfg.scorer_context, "vocab_size": 49408, "width": cfg.scorer_width,
                         "heads": cfg.scorer_heads, "layers": cfg.scorer_layers},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                           "resize_mode": "shortest", "size": world.SIZE},
    }


def _hard_negative_loss(model, img: torch.Tensor, cap: torch.Tensor, ids: torch.Tensor, data: Data, g: torch.Generator,
                        object_share: float = 0.0) -> torch.Tensor:
    """Each image ranks its caption against the captions (same template) that differ from it
    in one random attribute only: the zero-shot task the scorer is evaluated on."""
    keys = list(world.ATTRIBUTES)
    img = F.normalize(img, dim=-1)
    texts, groups, targets = [], [], []
    for i, c in enumerate(cap.tolist()):
        combo, tpl = divmod(c, data.n_templates)
        a = data.combos[combo]
        if object_share > 0 and float(torch.rand(1, generator=g)) < object_share:
            k = "object"
        else:
            k = keys[int(torch.randint(len(keys), (1,), generator=g))]
        vals = world.ATTRIBUTES[k]
        start = len(texts)
        for v in vals:
            texts.append(data.combo_index[tuple(sorted({**a, k: v}.items()))] * data.n_templates + tpl)
        groups.append((start, len(vals)))
        targets.append(vals.index(a[k]))
    txt = F.normalize(model.encode_text(ids[torch.tensor(texts)].to(img.device)), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    loss = 0.0
    for i, ((start, n), t) in enumerate(zip(groups, targets)):
        logits = scale * txt[start:start + n] @ img[i]
        loss = loss + F.cross_entropy(logits[None], torch.tensor([t], device=img.device))
    return loss / len(groups)


def train_scorer(out: Path, cfg: ToyTrainConfig, data: Data) -> None:
    import open_clip
    from safetensors.torch import save_file

    dest = out / "scorer"
    if (dest / "open_clip_model.safetensors").exists():
        print("stage scorer: done already", flush=True)
        return
    _seed_all(cfg.scorer_seed)
    oc = scorer_config(cfg)
    model = open_clip.CLIP(**oc["model_cfg"]).to(cfg.device)
    tok = open_clip.SimpleTokenizer(context_length=cfg.scorer_context)
    ids = tok(data.captions)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.scorer_lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(cfg.scorer_seed + 11)
    t0 = time.time()
    bar = _bar(cfg.scorer_steps, 0, "toy scorer")
    for step in range(cfg.scorer_steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, cfg.scorer_steps, cfg.scorer_lr, 100)
        x, combo, cap = data.batch(g, cfg.scorer_batch, noise_aug=True)
        x, combo = x.to(cfg.device), combo.to(cfg.device)
        img = model.encode_image(x)  # preprocess_cfg maps [0, 1] to [-1, 1]: x already is
        txt = model.encode_text(ids[cap].to(cfg.device))
        loss = _multi_positive_loss(img, txt, model.logit_scale, combo)
        if cfg.scorer_hard_negatives:
            loss = loss + _hard_negative_loss(model, img[:cfg.scorer_hard_negatives], cap[:cfg.scorer_hard_negatives], ids, data, g,
                                              cfg.scorer_hard_object_share)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.scorer_steps - 1:
            _log(out, stage="scorer", step=step, loss=round(loss.item(), 4), elapsed=round(time.time() - t0, 1))
        bar.update(1); bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "open_clip_config.json", "w") as f:
        json.dump(oc, f, indent=2)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(dest / "open_clip_model.safetensors"))
    _log(out, stage="scorer", event="saved", path=str(dest), elapsed=round(time.time() - t0, 1), sha=state_hash(model))


# ----------------------------------------------------------------------------- (c) UNet
def unet_config(cfg: ToyTrainConfig) -> dict:
    n, k = len(cfg.block_out_channels), cfg.attention_levels
    down = tuple("CrossAttnDownBlock2D" if i >= n - k else "DownBlock2D" for i in range(n))
    return dict(sample_size=world.SIZE, in_channels=3, out_channels=3, layers_per_block=cfg.layers_per_block,
                block_out_channels=tuple(cfg.block_out_channels),
                down_block_types=down, up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cfg.text_hidden,
                attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups)


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str], batch: int = 256) -> torch.Tensor:
    """SD conditioning: last_hidden_state (after final_layer_norm) of the 77-token padded caption."""
    out = []
    for i in range(0, len(captions), batch):
        ids = tokenizer(captions[i:i + batch], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out.append(text_encoder(ids).last_hidden_state)
    return torch.cat(out)


def _export(out: Path, cfg: ToyTrainConfig, ema, step: int, tokenizer) -> None:
    from diffusers import DDIMScheduler

    model_dir = out / "model"
    tmp = model_dir / "unet.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    ema.save_pretrained(tmp)
    if (model_dir / "unet").exists():
        shutil.rmtree(model_dir / "unet")
    tmp.rename(model_dir / "unet")
    DDIMScheduler(**SCHEDULER_KW, set_alpha_to_one=False, steps_offset=1).save_pretrained(model_dir / "scheduler")
    tokenizer.save_pretrained(model_dir / "tokenizer")
    meta_path = model_dir / "diffloc.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({"arch": "toy", "pixel_space": True, "sample_size": world.SIZE,
                 "guidance_scale": meta.get("guidance_scale", cfg.guidance_scale),
                 "num_inference_steps": cfg.num_inference_steps, "seed": cfg.seed, "unet_steps_trained": step,
                 "train_config": dataclasses.asdict(cfg), "attributes": {k: list(v) for k, v in world.ATTRIBUTES.items()},
                 "templates": list(world.TEMPLATES)})
    meta_path.write_text(json.dumps(meta, indent=2))


def diffusion_loss(pred: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Epsilon MSE, optionally Min-SNR-gamma weighted: w(t) = min(SNR, gamma) / SNR, SNR = abar / (1 - abar).

    Usage: ``diffusion_loss(pred, noise, alphas_cumprod[t], 5.0)``; ``snr_gamma=0`` is the plain mean MSE."""
    per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))   # [B]
    if snr_gamma <= 0:
        return per.mean()
    snr = alpha_bar / (1 - alpha_bar)
    return (per * torch.clamp(snr, max=snr_gamma) / snr).mean()


def _resume(ck: Path, cfg: ToyTrainConfig, unet, ema, opt, g: torch.Generator) -> int:
    """Load the UNet checkpoint ``ck`` into the models, optimiser and generator, if it exists; the step to start at."""
    start = 0
    if ck.exists():
        state = torch.load(ck, weights_only=False, map_location=cfg.device)
        unet.load_state_dict(state["unet"]); ema.load_state_dict(state["ema"]); opt.load_state_dict(state["opt"])
        g.set_state(state["gen"].cpu()); start = state["step"]
        print(f"resumed UNet at step {start}", flush=True)
    return start


def _save_progress(out: Path, cfg: ToyTrainConfig, ck: Path, unet, ema, opt, g: torch.Generator, done: int, tokenizer) -> None:
    """Checkpoint (every ``ckpt_every`` steps) and export the EMA UNet (every ``export_every``), both at the last step."""
    if done % cfg.ckpt_every == 0 or done == cfg.unet_steps:
        ck.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "gen": g.get_state(), "step": done}, str(ck) + ".tmp")
        os.replace(str(ck) + ".tmp", ck)
        _log(out, stage="unet", event="ckpt", step=done, sha_ema=state_hash(ema))
    if done % cfg.export_every == 0 or done == cfg.unet_steps:
        _export(out, cfg, ema, done, tokenizer)
        _log(out, stage="unet", event="exported", step=done)


def train_unet(out: Path, cfg: ToyTrainConfig, data: Data, tokenizer) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    ck = out / "ckpt" / "unet.pt"
    _seed_all(cfg.seed + 2)
    text_encoder = CLIPTextModel.from_pretrained(out / "model" / "text_encoder", dtype=torch.float32).eval().requires_grad_(False)
    t0 = time.time()
    cond = encode_captions(text_encoder, tokenizer, data.captions).to(cfg.device)   # [n_captions, 77, 64], frozen encoder
    uncond = encode_captions(text_encoder, tokenizer, [""])[0].to(cfg.device)
    print(f"encoded {len(data.captions)} captions in {time.time() - t0:.1f}s", flush=True)
    unet = UNet2DConditionModel(**unet_config(cfg)).to(cfg.device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    sched = DDPMScheduler(**SCHEDULER_KW)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    start = _resume(ck, cfg, unet, ema, opt, g)
    if start >= cfg.unet_steps and (out / "model" / "unet").exists():
        print("stage unet: done already", flush=True)
        return
    n_params = sum(p.numel() for p in unet.parameters())
    _log(out, stage="unet", event="start", step=start, params=n_params)
    ac = sched.alphas_cumprod.to(cfg.device)
    t0 = time.time()
    run = 0.0
    bar = _bar(cfg.unet_steps, start, "toy unet")
    for step in range(start, cfg.unet_steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, cfg.unet_steps, cfg.unet_lr, cfg.unet_warmup)
        x, _, cap = data.batch(g, cfg.unet_batch)                           # random draws stay on the CPU generator
        drop = torch.rand(len(x), generator=g) < cfg.caption_dropout
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x),), generator=g)
        noise = torch.randn(x.shape, generator=g)
        x, cap, drop, t, noise = (v.to(cfg.device) for v in (x, cap, drop, t, noise))
        c = cond[cap]                                                         # [B, 77, 64]
        c = torch.where(drop[:, None, None], uncond.expand_as(c), c)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=c).sample
        loss = diffusion_loss(pred, noise, a.view(-1), cfg.snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema, unet, step, cfg.ema_decay)
        run = loss.item() if step == start else 0.98 * run + 0.02 * loss.item()
        if step % 50 == 0 or step == cfg.unet_steps - 1:
            _log(out, stage="unet", step=step, loss=round(loss.item(), 4), loss_avg=round(run, 4),
                 lr=round(opt.param_groups[0]["lr"], 6), elapsed=round(time.time() - t0, 1))
        bar.update(1); bar.set_postfix(loss=f"{run:.4f}", refresh=False)
        _save_progress(out, cfg, ck, unet, ema, opt, g, step + 1, tokenizer)
    bar.close()


# ----------------------------------------------------------------------------- entry points
def train(out_dir: str | Path, config: ToyTrainConfig | None = None, stages: tuple[str, ...] = ("clip", "scorer", "unet")) -> Path:
    """Run the stages into ``out_dir`` (resumable); returns ``out_dir/model``."""
    from diffloc.tracing.tokenizer import clip_tokenizer

    cfg = config or ToyTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    tokenizer = clip_tokenizer()
    data = Data(cfg)
    with torch.enable_grad():  # whatever the caller's grad mode
        if "clip" in stages:
            train_clip(out, cfg, data, tokenizer)
        if "scorer" in stages:
            train_scorer(out, cfg, data)
        if "unet" in stages:
            train_unet(out, cfg, data, tokenizer)
    return out / "model"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--stages", default="clip,scorer,unet")
    for f in dataclasses.fields(ToyTrainConfig):
        if f.type in ("int", "float", "str", int, float, str):
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    args = p.parse_args(argv)
    over = {f.name: getattr(args, f.name) for f in dataclasses.fields(ToyTrainConfig) if getattr(args, f.name, None) is not None}
    train(args.out, ToyTrainConfig(**over), stages=tuple(args.stages.split(",")))


if __name__ == "__main__":
    main()

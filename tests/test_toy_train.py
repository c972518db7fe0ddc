"""`diffloc toy train`: a tiny run is reproducible to the bit, loadable, and its recipe checks itself."""
from __future__ import annotations

import json

import pytest
import torch

from diffloc_toy.train import ToyTrainConfig, diffusion_loss, train, unet_config

TINY = dict(n_images=64, text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64, vision_hidden=32, vision_layers=1,
            vision_heads=2, projection_dim=32, clip_steps=2, clip_batch=16, scorer_width=32, scorer_layers=1, scorer_heads=2,
            scorer_steps=2, scorer_batch=16, scorer_hard_negatives=4, block_out_channels=(16, 32, 32), attention_head_dim=2,
            unet_steps=3, unet_batch=8, unet_warmup=1, ckpt_every=2, export_every=3, attention_levels=2, snr_gamma=5.0)


def _hashes(folder) -> list:
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [(r["stage"], r.get("step"), r.get("sha") or r.get("sha_ema")) for r in rows if r.get("sha") or r.get("sha_ema")]


def test_tiny_training_is_bit_reproducible_and_loads(tmp_path):
    threads = torch.get_num_threads()
    try:
        cfg = ToyTrainConfig(**TINY)
        a = train(tmp_path / "a", cfg)
        train(tmp_path / "b", cfg)
    finally:
        torch.set_num_threads(threads)
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert [h[0] for h in ha] == ["clip", "scorer", "unet", "unet"]  # text tower, scorer, ckpt at steps 2 and 3
    assert ha == hb
    assert json.loads((a / "diffloc.json").read_text())["train_config"]["snr_gamma"] == 5.0

    from diffloc.tracing.models import load_model
    from diffloc.tracing.sampler import SamplerConfig, generate

    model = load_model(str(a))
    names = {s.path for s in model.sites.denoiser}
    assert any(n.startswith("down_blocks.1.attentions.0") for n in names)  # attention_levels=2: 16x16 too
    img = generate(model, ["a photo of one red circle at the top on a plain background"], cfg=SamplerConfig(num_inference_steps=2),
                   generator=torch.Generator().manual_seed(0))
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()

    c = ToyTrainConfig(**{**TINY, "seed": 1})
    train(tmp_path / "c", c, stages=("clip",))
    torch.set_num_threads(threads)
    assert _hashes(tmp_path / "c")[0] != ha[0]  # the seed matters


def test_min_snr_weighting():
    g = torch.Generator().manual_seed(0)
    pred, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    abar = torch.tensor([0.999, 0.9, 0.5, 0.01])
    plain = diffusion_loss(pred, noise, abar, 0.0)
    assert torch.allclose(plain, torch.nn.functional.mse_loss(pred, noise))
    per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    snr = abar / (1 - abar)
    expected = (per * torch.minimum(snr, torch.tensor(5.0)) / snr).mean()
    assert torch.allclose(diffusion_loss(pred, noise, abar, 5.0), expected)
    # low-noise steps (SNR > gamma) are down-weighted, high-noise ones keep weight 1
    assert diffusion_loss(pred[:1], noise[:1], abar[:1], 5.0) < diffusion_loss(pred[:1], noise[:1], abar[:1], 0.0) / 100
    assert torch.allclose(diffusion_loss(pred[3:], noise[3:], abar[3:], 5.0), diffusion_loss(pred[3:], noise[3:], abar[3:], 0.0))


def test_attention_levels_place_cross_attention_from_the_bottom():
    one = unet_config(ToyTrainConfig(attention_levels=1))
    two = unet_config(ToyTrainConfig(attention_levels=2))
    assert one["down_block_types"] == ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    assert two["down_block_types"] == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert two["up_block_types"] == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


@pytest.mark.parametrize("field, value, msg", [("attention_levels", 0, "attention_levels"), ("snr_gamma", -1.0, "snr_gamma"),
                                               ("unet_steps", 0, "unet_steps"), ("device", "tpu", "device must be")])
def test_bad_training_config_is_refused(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        ToyTrainConfig(**{field: value})

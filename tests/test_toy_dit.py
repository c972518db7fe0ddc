"""toy-dit: a train_dit.py export loads, samples as an independent Euler + CFG loop, and traces exactly."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from diffloc.tracing.models import ModelSpecError, load_model
from diffloc.tracing.sampler import Restore, SamplerConfig, generate, hooked_generate, initial_latents, make_corruption, patched_generate

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A 2-layer toy-dit in train_dit.py's export layout (random weights), next to the shipped text tower."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from diffloc_toy.paths import MODEL_DIR
    from diffloc_toy.train_dit import DitTrainConfig, transformer_config

    dest = tmp_path_factory.mktemp("toy_dit") / "dit"
    torch.manual_seed(0)
    cfg = DitTrainConfig(num_layers=2, head_dim=8)
    SD3Transformer2DModel(**transformer_config(cfg, 64)).save_pretrained(dest / "transformer")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift).save_pretrained(dest / "scheduler")
    meta = {"arch": "toy-dit", "world": "toy", "text_encoder_from": os.path.relpath(MODEL_DIR, dest), "guidance_scale": 3.0,
            "num_inference_steps": 4}
    (dest / "diffloc.json").write_text(json.dumps(meta))
    return dest


@pytest.fixture(scope="module")
def model(export):
    torch.set_num_threads(1)
    return load_model(str(export))


def test_loads_as_toy_dit(model):
    assert model.arch == "toy-dit" and model.denoiser.__class__.__name__ == "SD3Transformer2DModel"
    assert model.text_components == ("text_encoder",) and model.vae is None
    assert [s.path for s in model.sites.denoiser[:4]] == ["time_text_embed", "transformer_blocks.0.attn.to_add_out",
                                                          "transformer_blocks.0.attn.txt2img", "transformer_blocks.0.attn.to_out.0"]
    assert model.sites.denoiser[-1].path == "transformer_blocks.1@image"


@torch.no_grad()
def _reference(model, latents, steps: int, scale: float) -> torch.Tensor:
    """Euler + CFG written out: "" encoded as the unconditional input, velocity = v_u + s (v_c - v_u)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    tok, te = model.tokenizers["text_encoder"], model.modules["text_encoder"]
    out = te(tok(["", PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids)
    x = latents
    for t in sched.timesteps:
        v = model.denoiser(torch.cat([x, x]), encoder_hidden_states=out.last_hidden_state, pooled_projections=out.pooler_output,
                           timestep=t.expand(2)).sample
        x = sched.step(v[:1] + scale * (v[1:] - v[:1]), t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def test_clean_row_matches_reference_loop(model):
    latents = initial_latents(model, torch.Generator().manual_seed(0))
    assert latents.shape == (1, 3, 32, 32)
    ours = generate(model, [PROMPT], cfg=SamplerConfig(4, 3.0), latents=latents)
    assert (ours - _reference(model, latents, 4, 3.0)).abs().max() < 1e-5


def test_exact_tracing_restores_clean_and_corrupted_rows(model):
    cfg = SamplerConfig(3, 3.0)
    latents = initial_latents(model, torch.Generator().manual_seed(1))
    corr = make_corruption(model, [2], torch.Generator().manual_seed(0), scale=10.0)
    imgs = patched_generate(model, PROMPT, [Restore(), Restore(tuple(model.sites.denoiser))], corr, cfg=cfg, latents=latents)
    corrupted = hooked_generate(model, PROMPT, latents, cfg, corr)
    assert (imgs[0] - imgs[1]).abs().max() > 1e-4
    assert (imgs[1] - corrupted[0]).abs().max() < 1e-5
    assert (imgs[2] - imgs[0]).abs().max() < 1e-5


def test_missing_shipped_weights_is_one_line(tmp_path, monkeypatch):
    from diffloc.tracing.worlds import WORLDS

    monkeypatch.setattr(type(WORLDS.get("toy")), "dit_model_dir", lambda self: tmp_path / "dit")
    with pytest.raises(ModelSpecError, match="toy-dit weights missing") as err:
        load_model("toy-dit")
    assert "\n" not in str(err.value)

"""The toy world: renderer, captions, exact readers, and the shipped weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffloc_toy import world
from diffloc_toy.world import ATTRIBUTES, TEMPLATES

WEIGHTS = Path(world.__file__).resolve().parent / "weights"
A = {"object": "circle", "colour": "red", "style": "striped", "viewpoint": "top", "count": "two"}


def test_render_is_deterministic_per_seed():
    a, b, c = world.render(A, seed=7), world.render(A, seed=7), world.render(A, seed=8)
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    attrs = world.all_attrs()[:20]
    assert torch.equal(world.render_batch(attrs, seed=3), world.render_batch(attrs, seed=3))


def test_background_is_achromatic_and_objects_saturated():
    img = world.render({**A, "count": "one"}, seed=0).int()
    sat = img.max(0).values - img.min(0).values
    assert (sat == 0).float().mean() > 0.8          # background pixels: R = G = B
    assert sat.max() > 150


@pytest.fixture(scope="module")
def renders():
    return world.random_dataset(1200, seed=123)


def _accuracy(images, attrs):
    reads = [world.read(x) for x in images]
    return {k: np.mean([r[k] == a[k] for r, a in zip(reads, attrs)]) for k in ATTRIBUTES}


def test_readers_exact_on_renders(renders):
    images, attrs, _ = renders
    acc = _accuracy(images, attrs)
    assert all(v >= 0.99 for v in acc.values()), acc


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.exp(-torch.arange(-2, 3).float() ** 2 / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, 5).repeat(3, 1, 1, 1)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.transpose(2, 3), groups=3)


def test_readers_robust_to_blur_and_noise(renders):
    images, attrs, _ = renders
    g = torch.Generator().manual_seed(0)
    x = world.to_float(images[:400])
    x = (_blur(x, 0.7) + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    acc = _accuracy(x, attrs[:400])
    assert all(v >= 0.97 for v in acc.values()), acc


def test_reader_accepts_float_and_numpy():
    img = world.render(A, seed=1)
    assert world.read(img) == A
    assert world.read(world.to_float(img)) == A
    assert world.read(img.permute(1, 2, 0).numpy()) == A


def test_no_object_is_unreadable():
    grey = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    r = world.read(grey)
    assert r["object"] is None and r["colour"] is None and r["count"] is None and r["viewpoint"] is None
    assert r["style"] == "plain"


def test_caption_round_trip_every_combination_and_template():
    combos = world.all_attrs()
    assert len(combos) == np.prod([len(v) for v in ATTRIBUTES.values()])
    for a in combos:
        for t in range(len(TEMPLATES)):
            assert world.parse_caption(world.caption(a, t)) == a


def test_captions_read_naturally():
    assert world.caption(A, 0) == "a photo of two red circles at the top on a striped background"
    one = {**A, "count": "one", "object": "triangle", "colour": "blue", "viewpoint": "bottom", "style": "plain"}
    assert world.caption(one, 2) == "an image of one blue triangle at the bottom on a plain background"
    assert len(set(world.paraphrases(A))) == len(TEMPLATES)


@pytest.mark.parametrize("attribute,word", [("colour", "red"), ("object", "circles"), ("count", "two"),
                                            ("viewpoint", "top"), ("style", "striped")])
def test_mark_brackets_the_attribute_word(attribute, word):
    for t in range(len(TEMPLATES)):
        marked = world.mark(A, attribute, t)
        clean, words = world.unmark(marked)
        assert words == [word]
        assert clean == world.caption(A, t)
    assert world.mark(A, "colour", 0) == "a photo of two [red] circles at the top on a striped background"


def test_bad_attribute_value_is_refused():
    with pytest.raises(ValueError, match="colour"):
        world.render({**A, "colour": "purple"})


# ----------------------------------------------------------------------------- shipped weights
def test_shipped_weights_load_with_library_loaders():
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = WEIGHTS / "model"
    meta = json.loads((folder / "diffloc.json").read_text())
    assert meta["arch"] == "toy" and meta["pixel_space"] and meta["sample_size"] == 32
    assert {"guidance_scale", "num_inference_steps", "train_config", "seed"} <= set(meta)
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    sched = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    assert te.config.vocab_size == 49408 and te.config.max_position_embeddings == 77
    assert unet.config.cross_attention_dim == te.config.hidden_size
    assert unet.config.in_channels == unet.config.out_channels == 3 and unet.config.sample_size == 32
    assert sched.config.prediction_type == "epsilon"
    from diffloc.tracing.tokenizer import clip_tokenizer

    text = world.caption(A, 0)
    assert tok(text).input_ids == clip_tokenizer()(text).input_ids
    ids = tok([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
    h = te(ids).last_hidden_state
    assert h.shape == (1, 77, te.config.hidden_size)
    out = unet(torch.zeros(1, 3, 32, 32), 10, encoder_hidden_states=h).sample
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_shipped_scorer_loads_with_open_clip_and_ranks_renders():
    import open_clip

    from diffloc_toy.scorer import load_toy_scorer, pick

    folder = WEIGHTS / "scorer"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    assert isinstance(model, open_clip.CLIP)
    model, preprocess, tok = load_toy_scorer()
    images = world.to_float(world.render_batch(world.all_attrs()[::40], seed=5))
    attrs = world.all_attrs()[::40]
    cands = [[world.caption({**a, "colour": c}) for c in ATTRIBUTES["colour"]] for a in attrs]
    picked = pick(images, cands)
    assert np.mean([p == ATTRIBUTES["colour"].index(a["colour"]) for p, a in zip(picked, attrs)]) >= 0.8


def test_shipped_size_budget():
    total = sum(p.stat().st_size for d in ("model", "scorer") for p in (WEIGHTS / d).rglob("*") if p.is_file())
    assert total <= 40 * 2**20, f"{total / 2**20:.1f} MB"


def test_sampler_equals_independent_reference_ddim_loop():
    """tracing.sampler.generate against diffloc_toy.evaluate.reference_ddim (a separate DDIM + CFG loop)."""
    from diffloc.tracing.models import load_model
    from diffloc.tracing.sampler import SamplerConfig, generate, initial_latents
    from diffloc_toy.evaluate import reference_ddim

    model = load_model("toy")
    prompts = ["a photo of two red circles at the top on a plain background", "one blue square in the middle, striped background"]
    lat = initial_latents(model, torch.Generator().manual_seed(3), batch=2)
    ours = generate(model, prompts, cfg=SamplerConfig(num_inference_steps=4, guidance_scale=2.0), latents=lat)
    ref = reference_ddim(model, prompts, lat, num_inference_steps=4, guidance_scale=2.0)
    assert (ours - ref).abs().max() < 1e-5
    other = reference_ddim(model, prompts, lat, num_inference_steps=4, guidance_scale=3.0)
    assert (ours - other).abs().max() > 1e-3, "the comparison can tell two samplers apart"


def test_toy_world_plugs_in_through_the_registry():
    from diffloc.tracing.worlds import World, get_world

    toy = get_world("toy")
    assert isinstance(toy, World) and toy.has_readers and toy.attributes == tuple(ATTRIBUTES)
    caption = world.caption({"object": "circle", "colour": "red", "style": "plain", "viewpoint": "top", "count": "two"})
    assert toy.parse_caption(caption) == world.parse_caption(caption)
    assert toy.read(world.render(world.parse_caption(caption), seed=1)) == world.parse_caption(caption)
    assert sorted(p.stem for p in toy.prompt_dir.glob("*.txt")) == sorted(ATTRIBUTES)

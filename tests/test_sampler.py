"""Invariants of the batched patched sampler (the foundation every trace stands on)."""
from __future__ import annotations

import pytest
import torch

from diffloc.tracing.hooks import hook_count
from diffloc.tracing.models import load_model
from diffloc.tracing.sampler import Restore, SamplerConfig, generate, initial_latents, make_corruption, patched_generate
from diffloc.tracing.sites import Site

CFG = SamplerConfig(num_inference_steps=4, guidance_scale=3.0)
PROMPT = "a photo of two red circles at the top on a striped background"


def _run(model, rows, seed=0, noise_seed=1, positions=(5,)):
    corr = make_corruption(model, positions, torch.Generator().manual_seed(noise_seed))
    return patched_generate(model, PROMPT, rows, corr, torch.Generator().manual_seed(seed), CFG)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_clean_row_matches_stock_pipeline(family):
    """Row 0 of a patched batch equals diffusers' StableDiffusionPipeline for the same noise."""
    from diffloc.tracing.replicas import replica_pipeline

    pipe = replica_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    model = load_model(f"tiny-{family}")
    lat = initial_latents(model, torch.Generator().manual_seed(0))
    ours = patched_generate(model, PROMPT, [Restore()], make_corruption(model, [5], torch.Generator().manual_seed(1)), cfg=CFG, latents=lat)[0]
    ref = pipe(PROMPT, num_inference_steps=CFG.num_inference_steps, guidance_scale=CFG.guidance_scale,
               latents=lat.clone(), output_type="pt").images[0]
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref.float(), atol=1e-4), (ours - ref).abs().max()


def test_complete_cut_restores_clean_and_empty_restore_is_corrupted(pixel_model):
    m = pixel_model
    rows = [
        Restore(),                                                   # restores nothing: corrupted
        Restore((Site.parse("unet:conv_out"),)),                     # the UNet's output at every step: a cut
        Restore((Site.parse("text_encoder:final_layer_norm"),)),     # all tokens of the text output: a cut
        Restore((Site.parse("text_encoder:encoder.layers.2"),)),     # last layer's residual, all tokens: a cut
        Restore(tuple(m.sites.text_layer(0).values())[:1], tokens=(5,)),  # partial: neither
    ]
    imgs = _run(m, rows)
    corrupted = generate(m, [PROMPT], torch.Generator().manual_seed(0), CFG)  # reference clean run, 1 row
    assert (imgs[1] - imgs[0]).abs().max() > 1e-2, "corruption must change the image"
    for i in (2, 3, 4):
        assert torch.allclose(imgs[i], imgs[0], atol=1e-5), f"row {i} should equal clean"
    assert torch.allclose(imgs[0], corrupted[0], atol=1e-4)
    # the corrupted row equals a batch holding only the corrupted row
    alone = _run(m, [Restore()])
    assert torch.allclose(alone[1], imgs[1], atol=1e-5)
    assert not torch.allclose(imgs[5], imgs[0], atol=1e-4)


def test_step_window_restores_only_inside_window(pixel_model):
    m = pixel_model
    out = Site.parse("unet:conv_out")
    imgs = _run(m, [Restore(), Restore((out,), window=(0, CFG.num_inference_steps)), Restore((out,), window=(0, 2)), Restore((out,), window=(2, 4))])
    assert torch.allclose(imgs[2], imgs[0], atol=1e-5)
    assert not torch.allclose(imgs[3], imgs[0], atol=1e-4)
    assert not torch.allclose(imgs[4], imgs[0], atol=1e-4)
    assert not torch.allclose(imgs[3], imgs[4], atol=1e-4)


def test_rows_do_not_leak_into_each_other(pixel_model):
    """A row's image depends only on its own restoration, not on its batch neighbours."""
    m = pixel_model
    site = Site.parse("unet:mid_block.resnets.0")
    a = _run(m, [Restore((site,))])
    b = _run(m, [Restore((Site.parse("unet:conv_out"),)), Restore(), Restore((site,))])
    assert torch.allclose(a[1], b[3], atol=1e-5)


def test_noise_and_seeds_are_explicit(pixel_model):
    m = pixel_model
    a = _run(m, [Restore()], seed=0, noise_seed=1)
    b = _run(m, [Restore()], seed=0, noise_seed=1)
    c = _run(m, [Restore()], seed=0, noise_seed=2)
    d = _run(m, [Restore()], seed=3, noise_seed=1)
    assert torch.equal(a, b)
    assert torch.allclose(a[0], c[0]) and not torch.allclose(a[1], c[1])
    assert not torch.allclose(a[0], d[0])


def test_noise_scale_is_three_sigma(pixel_model):
    corr = make_corruption(pixel_model, (2, 3), torch.Generator().manual_seed(0), scale=3.0)
    noise = corr.noise["text_encoder"]
    assert noise.shape == (2, pixel_model.text_encoder.config.hidden_size)
    ref = torch.randn(2, noise.shape[1], generator=torch.Generator().manual_seed(0)) * 3.0 * pixel_model.embed_std()
    assert torch.allclose(noise, ref)


def test_hooks_leave_no_trace_also_on_error(pixel_model):
    m = pixel_model
    assert hook_count(m.modules) == 0
    _run(m, [Restore((Site.parse("unet:mid_block.resnets.0"),))])
    assert hook_count(m.modules) == 0
    from diffloc.tracing.hooks import hooks

    with pytest.raises(RuntimeError):
        with hooks(m.modules, {Site.parse("unet:conv_out"): lambda mod, i, o: None}):
            assert hook_count(m.modules) == 1
            raise RuntimeError("boom")
    assert hook_count(m.modules) == 0


@pytest.mark.parametrize("row, message", [
    (Restore((Site("unet", "down_blocks.9.resnets.0"),)), "unknown site"),
    (Restore((Site("text_encoder", "encoder.layers.0"),), tokens=(99,)), "outside the prompt"),
    (Restore((Site("unet", "conv_out"),), window=(2, 9)), "outside the step range"),
])
def test_bad_rows_raise_one_line_errors(pixel_model, row, message):
    with pytest.raises(Exception) as err:
        _run(pixel_model, [row])
    assert message in str(err.value) and "\n" not in str(err.value)

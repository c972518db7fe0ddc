"""The nnsight bridge: a restoration written in nnsight's syntax gives diffloc's own images, bit for bit."""
from __future__ import annotations

import pytest
import torch

from diffloc.tracing.hooks import hook_count
from diffloc.tracing.nnsight import wrap
from diffloc.tracing.sampler import Restore, SamplerConfig, make_corruption, patched_generate
from diffloc.tracing.sites import Site

PROMPT = "a photo of two red circles at the top"
TOKEN = 4  # 'red'
CFG = SamplerConfig(num_inference_steps=3, guidance_scale=2.0)


def _corruption(model):
    return make_corruption(model, [TOKEN], torch.Generator().manual_seed(7))


def test_text_restoration_in_nnsight_equals_diffloc_hooks(pixel_model):
    site = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")
    corruption = _corruption(pixel_model)
    ours = patched_generate(pixel_model, PROMPT, [Restore(), Restore((site,), tokens=(TOKEN,))], corruption,
                            torch.Generator().manual_seed(0), CFG)
    bridge = wrap(pixel_model)

    def restore(bridge, call):
        if call.index == 0:  # the prompt; call 1 is CFG's empty prompt
            out = bridge.site_envoy(site).output  # [R, 77, D]
            out[2, TOKEN] = out[0, TOKEN]

    with bridge.intervene(text_encoder=restore):
        theirs = patched_generate(bridge.model, PROMPT, [Restore(), Restore()], corruption, torch.Generator().manual_seed(0), CFG)
    assert not torch.equal(ours[1], ours[2]), "the restoration changes the image (the test can fail)"
    assert torch.equal(ours, theirs)


def test_unet_restoration_in_nnsight_equals_diffloc_hooks(pixel_model):
    site = next(s for s in pixel_model.sites.denoiser if s.kind == "attn2")
    corruption = _corruption(pixel_model)
    ours = patched_generate(pixel_model, PROMPT, [Restore(), Restore((site,))], corruption, torch.Generator().manual_seed(0), CFG)
    bridge = wrap(pixel_model)

    def restore(bridge, call):
        R = call.batch // 2  # [uncond rows, cond rows]
        out = bridge.site_envoy(site).output
        out[[2, R + 2]] = out[[0, R]]

    with bridge.intervene(unet=restore):
        theirs = patched_generate(bridge.model, PROMPT, [Restore(), Restore()], corruption, torch.Generator().manual_seed(0), CFG)
    assert bridge.calls == {}, "the context resets its call counters"
    assert not torch.equal(ours[1], ours[2])
    assert torch.equal(ours, theirs)
    assert hook_count(pixel_model.modules) == 0


def test_bridge_names_bad_sites_and_components(pixel_model):
    from diffloc.tracing.errors import DifflocInputError
    from diffloc.tracing.sites import SiteError

    bridge = wrap(pixel_model)
    with pytest.raises(SiteError, match="unknown site"):
        bridge.site_envoy("unet:down_blocks.9.resnets.0")
    with pytest.raises(DifflocInputError, match="no component 'vae'"):
        with bridge.intervene(vae=lambda b, c: None):
            pass


@pytest.fixture(scope="module")
def sd3():
    from diffloc.tracing.models import load_model

    return load_model("tiny-sd3")


@pytest.mark.parametrize("name", ["transformer:transformer_blocks.1@text", "transformer:transformer_blocks.1.attn.to_add_out",
                                  "transformer:transformer_blocks.1@image"])
def test_dit_restoration_in_nnsight_equals_diffloc_hooks(sd3, name):
    """tiny-sd3 (MM-DiT, CFG): a joint block's text or image stream, or its text-stream attention output, restored in nnsight."""
    site = Site.parse(name)
    corruption = _corruption(sd3)
    cfg = SamplerConfig(num_inference_steps=2, guidance_scale=sd3.defaults["guidance_scale"])
    ours = patched_generate(sd3, PROMPT, [Restore(), Restore((site,))], corruption, torch.Generator().manual_seed(0), cfg)
    own = hook_count(sd3.modules)  # transformers' CLIP towers keep output-capturing hooks of their own once run
    bridge = wrap(sd3)

    def restore(bridge, call):
        R = call.batch // 2  # [uncond rows, cond rows]
        out = bridge.site_output(site)
        out[[2, R + 2]] = out[[0, R]]

    with bridge.intervene(transformer=restore):
        theirs = patched_generate(bridge.model, PROMPT, [Restore(), Restore()], corruption, torch.Generator().manual_seed(0), cfg)
    assert bridge.calls == {} and hook_count(sd3.modules) == own, "the bridge leaves no hook behind"
    assert not torch.equal(ours[1], ours[2]), "the restoration changes the image (the test can fail)"
    assert torch.equal(ours, theirs)

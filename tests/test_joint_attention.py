"""The text->image split of joint attention against diffusers' own processor, and attention
contribution against a brute-force per-token sum."""
from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from diffloc.tracing.families.joint_attention import ConceptContribution, install_split, joint_attentions
from diffloc.tracing.hooks import Recorder, hooks
from diffloc.tracing.sites import Site


def _tiny(seed=0, qk_norm="rms_norm"):
    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=3, out_channels=3, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                                 pooled_projection_dim=12, pos_embed_max_size=4, qk_norm=qk_norm).eval()


def _inputs(b=3):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(b, 3, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 7, 12, generator=g),
                pooled_projections=torch.randn(b, 12, generator=g), timestep=torch.tensor([500.0] * b))


def test_split_processor_equals_diffusers_joint_attention():
    m, x = _tiny(), _inputs()
    with torch.no_grad():
        ref = m(**x).sample
        paths = install_split(m)
        out = m(**x).sample
    assert paths == ["transformer_blocks.0.attn.txt2img", "transformer_blocks.1.attn.txt2img"]
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_restoring_the_slice_from_another_row_changes_only_that_row_and_zeroing_it_removes_the_prompt():
    m, x = _tiny(), _inputs()
    install_split(m)
    site = Site("transformer", "transformer_blocks.0.attn.txt2img")
    with torch.no_grad():
        base = m(**x).sample

        def copy(mod, inp, out):  # [B, N_img, H*d]: row 2 takes row 0's slice
            new = out.clone()
            new[2] = out[0]
            return new

        with hooks({"transformer": m}, {site: [copy]}):
            patched = m(**x).sample
    assert torch.equal(patched[:2], base[:2])
    assert not torch.allclose(patched[2], base[2])
    with Recorder({"transformer": m}, [site]) as rec, torch.no_grad():
        m(**x)
    assert rec.outputs[site].shape == (3, 16, 16)  # 4x4 patches, 2 heads x 8


def test_concept_contribution_equals_a_brute_force_sum():
    m, x = _tiny(), _inputs(b=2)
    concept = [2, 4]
    attn = dict(joint_attentions(m))["transformer_blocks.1.attn"]
    seen = {}
    attn.register_forward_pre_hook(lambda mod, a, kw: seen.update(h=kw["hidden_states"], c=kw["encoder_hidden_states"]), with_kwargs=True)
    with ConceptContribution(m, concept) as cc, torch.no_grad():
        m(**x)
    h, c = seen["h"], seen["c"]
    H, d = attn.heads, 8
    with torch.no_grad():  # by hand: per head, per image query, per concept token
        def split(t):
            return t.view(t.shape[0], t.shape[1], H, d)
        q = torch.cat([attn.norm_q(split(attn.to_q(h)).transpose(1, 2)), attn.norm_added_q(split(attn.add_q_proj(c)).transpose(1, 2))], 2)
        k = torch.cat([attn.norm_k(split(attn.to_k(h)).transpose(1, 2)), attn.norm_added_k(split(attn.add_k_proj(c)).transpose(1, 2))], 2)
        v = torch.cat([split(attn.to_v(h)).transpose(1, 2), split(attn.add_v_proj(c)).transpose(1, 2)], 2)
        n = h.shape[1]
        expect = torch.zeros(2)
        for b in range(2):
            norms = []
            for i in range(n):
                acc = torch.zeros(H * d)
                for hd in range(H):
                    logits = torch.stack([q[b, hd, i] @ k[b, hd, j] / d ** 0.5 for j in range(k.shape[2])])
                    p = logits.softmax(0)
                    acc[hd * d:(hd + 1) * d] = sum(p[n + j] * v[b, hd, n + j] for j in concept)
                norms.append((attn.to_out[0].weight @ acc).norm())
            expect[b] = torch.stack(norms).mean()
    got = cc.scores["transformer_blocks.1.attn"]
    assert torch.allclose(got, expect, rtol=1e-4), (got, expect)
    assert cc.calls["transformer_blocks.1.attn"] == 1

"""Per-head sites: spelling, head counts from configs, hooks on head slices, tracing and screens over heads."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from diffloc.tracing.hooks import Recorder, hook_count, hooks
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import Restore, SamplerConfig, make_corruption, patched_generate
from diffloc.tracing.sites import Site, SiteError, build_site_table, head_slice
from diffloc.tracing.trace_config import RowSpec, TraceConfig, denoiser_rows

PROMPT = MarkedPrompt.parse("a photo of two [red] circles at the top")
CFG = SamplerConfig(num_inference_steps=3, guidance_scale=2.0)
TEXT_ATTN = Site.parse("text_encoder:encoder.layers.1.self_attn.out_proj")
UNET_ATTN = Site.parse("unet:down_blocks.1.attentions.0.transformer_blocks.0.attn2")


def _heads(model, site):
    heads = model.sites.heads_of(site)
    assert len(heads) > 1
    return heads


# --- spelling ---------------------------------------------------------------------------------

def test_head_site_spelling():
    t = Site.parse("text_encoder:encoder.layers.0.self_attn.heads.3")
    u = Site.parse("unet:down_blocks.1.attentions.0.transformer_blocks.0.attn2.heads.2")
    x = Site.parse("text_encoder_2:text_model.encoder.layers.5.self_attn.heads.0")
    assert str(t) == "text_encoder:encoder.layers.0.self_attn.heads.3"
    assert (t.kind, t.head, t.layer, t.attn_path, t.module_path) == (
        "attn_head", 3, 0, "encoder.layers.0.self_attn", "encoder.layers.0.self_attn.out_proj")
    assert (u.kind, u.head, u.block, u.module_path) == (
        "attn2_head", 2, "down_blocks.1", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0")
    assert Site("unet", u.path.replace("attn2", "attn1")).kind == "attn1_head"
    assert (x.kind, x.layer, x.module_path) == ("attn_head", 5, "text_model.encoder.layers.5.self_attn.out_proj")
    for s in (TEXT_ATTN, UNET_ATTN, Site.parse("unet:mid_block.resnets.0")):  # other sites unchanged
        assert s.head is None and s.module_path == s.path == s.attn_path
    assert (TEXT_ATTN.kind, UNET_ATTN.kind) == ("attn", "attn2")


def test_bad_head_sites_are_site_errors(pixel_model):
    with pytest.raises(SiteError, match="head 9 out of range"):
        pixel_model.module("text_encoder:encoder.layers.0.self_attn.heads.9")
    with pytest.raises(SiteError, match="not an attention module"):
        pixel_model.module("text_encoder:encoder.layers.0.mlp.heads.0")
    with pytest.raises(SiteError, match="not a head site"):
        head_slice(TEXT_ATTN, pixel_model.modules)
    with pytest.raises(SiteError, match="head 8 out of range"):
        with hooks(pixel_model.modules, {"unet:" + UNET_ATTN.path + ".heads.8": lambda m, i, o: None}):
            pass
    assert hook_count(pixel_model.modules) == 0


# --- head counts and widths, against the built modules -----------------------------------------

def _check_heads(sites, modules):
    """Every attention module with heads has exactly its heads listed, each slice head_dim wide."""
    for comp, root in modules.items():
        named = dict(root.named_modules())
        attns = {p: m for p, m in named.items() if p.rsplit(".", 1)[-1] in ("self_attn", "attn1", "attn2")}
        listed: dict[str, list[int]] = {}
        for h in sites.heads(comp):
            listed.setdefault(h.attn_path, []).append(h.head)
        assert set(listed) == set(attns), comp
        for path, attn in attns.items():
            n = attn.heads if hasattr(attn, "heads") else attn.num_heads
            dim = attn.inner_dim // attn.heads if hasattr(attn, "heads") else attn.head_dim
            assert listed[path] == list(range(n)), path
            slices = [head_slice(Site(comp, f"{path}.heads.{h}"), modules)[1] for h in range(n)]
            assert all(s.stop - s.start == dim for s in slices) and slices[-1].stop == n * dim
            assert head_slice(Site(comp, f"{path}.heads.0"), modules)[0] is named[Site(comp, f"{path}.heads.0").module_path]
    return {(comp, h.attn_path.rsplit(".", 1)[-1]) for comp in modules for h in sites.heads(comp)}


@pytest.mark.parametrize("spec", ["toy", "tiny-sd1", "tiny-sd2", "tiny-sdxl"])
def test_head_counts_match_built_models(spec):
    from diffloc.tracing.models import load_model

    m = load_model(spec)
    kinds = _check_heads(m.sites, m.modules)
    assert ("unet", "attn1") in kinds and ("unet", "attn2") in kinds and ("text_encoder", "self_attn") in kinds


def test_head_counts_of_the_tiny_pixel_model(pixel_model):
    _check_heads(pixel_model.sites, pixel_model.modules)


@pytest.mark.parametrize("family, unet_dims", [("sd1", {40, 80, 160}), ("sd2", {64}), ("sdxl", {64})])
def test_head_counts_match_published_models(family, unet_dims):
    """Full-size published configs (meta device): SD 1.x has 8 heads of 40-160 channels; SD 2.x and XL
    spell heads per block in the misnamed attention_head_dim key, 64 channels per head."""
    from diffloc.tracing.replicas import build_published

    parts = build_published(family)
    modules = {k: v for k, v in parts.items() if k in ("unet", "text_encoder", "text_encoder_2")}
    texts = {k: v.config for k, v in modules.items() if k != "unet"}
    table = build_site_table(family, parts["unet"].config, texts, "unet")
    _check_heads(table, modules)
    dims = {head_slice(table.heads_of(s)[0], modules)[1].stop for s in table.denoiser_heads}
    assert dims == unet_dims


# --- hooks on head slices ---------------------------------------------------------------------

def _manual_heads(q, k, v, n_heads, causal):
    """Per-head attention output [B, T, n_heads * d] from projected q [B, T, n·d], k, v [B, S, n·d]."""
    B, T, _ = q.shape
    d = q.shape[-1] // n_heads
    split = lambda x: x.view(x.shape[0], x.shape[1], n_heads, d).transpose(1, 2)  # noqa: E731  [B, n, T, d]
    w = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)
    if causal:
        w = w.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return (w.softmax(-1) @ split(v)).transpose(1, 2).reshape(B, T, n_heads * d)


def test_head_slice_is_that_heads_attention_output(pixel_model):
    """What a head site's hook sees is softmax(q_h k_hᵀ/√d) v_h, recomputed from the q/k/v projections."""
    m = pixel_model
    ids = m.tokenize([PROMPT.text])
    text = _heads(m, TEXT_ATTN)
    qkv = [Site("text_encoder", f"{text[0].attn_path}.{p}_proj") for p in "qkv"]
    with torch.no_grad(), Recorder(m.modules, text + qkv) as rec:
        m.text_encoder(ids)
    ref = _manual_heads(*(rec.outputs[s] for s in qkv), len(text), causal=True)
    for h in text:
        assert torch.allclose(rec.outputs[h], ref[..., head_slice(h, m.modules)[1]], atol=1e-5), h

    unet = _heads(m, UNET_ATTN) + _heads(m, Site("unet", UNET_ATTN.path.replace("attn2", "attn1")))
    qkv = {a: [Site("unet", f"{a}.to_{p}") for p in "qkv"] for a in {h.attn_path for h in unet}}
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), Recorder(m.modules, unet + [s for v in qkv.values() for s in v]) as rec:
        m.denoiser(x, torch.tensor(10), encoder_hidden_states=ctx)
    for a, sites in qkv.items():
        heads = [h for h in unet if h.attn_path == a]
        ref = _manual_heads(*(rec.outputs[s] for s in sites), len(heads), causal=False)
        for h in heads:
            assert torch.allclose(rec.outputs[h], ref[..., head_slice(h, m.modules)[1]], atol=1e-5), h


@pytest.mark.parametrize("site", [TEXT_ATTN, UNET_ATTN])
def test_zeroing_a_head_equals_out_proj_of_the_zeroed_input(pixel_model, site):
    m = pixel_model
    head = _heads(m, site)[1]
    proj = Site(site.component, head.module_path)
    cols = head_slice(head, m.modules)[1]

    def run(fns):
        with torch.no_grad(), hooks(m.modules, fns):
            if site.component == "unet":
                x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
                m.denoiser(x, torch.tensor(10), encoder_hidden_states=torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1)))
            else:
                m.text_encoder(m.tokenize([PROMPT.text]))

    seen: dict = {}
    keep = lambda key: (lambda mod, inp, out: seen.setdefault(key, (inp[0].clone(), out.clone())) and None)  # noqa: E731
    run({proj: keep("plain")})
    run({head: lambda mod, inp, out: torch.zeros_like(out), proj: keep("zeroed")})
    x, plain_out = seen["plain"]
    x0 = x.clone()
    x0[..., cols] = 0
    module = m.module(proj)
    assert torch.allclose(seen["zeroed"][1], module(x0), atol=1e-6)
    assert not torch.allclose(seen["zeroed"][1], plain_out, atol=1e-4), "zeroing the head changes the output"
    assert hook_count(m.modules) == 0


def test_restoring_all_heads_equals_restoring_the_layer(pixel_model):
    m = pixel_model
    pos = PROMPT.positions(m.tokenizer)
    corr = make_corruption(m, pos, torch.Generator().manual_seed(7))
    tok = (pos[-1],)
    text, unet = _heads(m, TEXT_ATTN), _heads(m, UNET_ATTN)
    rows = [Restore((TEXT_ATTN,), tokens=tok), Restore(tuple(text), tokens=tok), Restore(text[:1], tokens=tok),
            Restore((UNET_ATTN,)), Restore(tuple(unet)), Restore(unet[:1])]
    img = patched_generate(m, PROMPT.text, [Restore()] + rows, corr, torch.Generator().manual_seed(0), CFG)
    assert torch.allclose(img[2], img[3], atol=1e-6) and torch.allclose(img[5], img[6], atol=1e-6)
    assert not torch.allclose(img[2], img[1], atol=1e-4) and not torch.allclose(img[5], img[1], atol=1e-4)
    assert not torch.allclose(img[2], img[4], atol=1e-4) and not torch.allclose(img[5], img[7], atol=1e-4), "one head is not all"
    assert hook_count(m.modules) == 0


# --- the nnsight bridge -----------------------------------------------------------------------

def test_nnsight_bridge_agrees_with_head_sites(pixel_model):
    from diffloc.tracing.nnsight import wrap

    m = pixel_model
    head = _heads(m, TEXT_ATTN)[2]
    bridge = wrap(m)
    assert bridge.site_envoy(head).path.endswith(head.module_path)
    assert bridge.head_slice(head) == head_slice(head, m.modules)[1]
    pos = PROMPT.positions(m.tokenizer)
    corr = make_corruption(m, pos, torch.Generator().manual_seed(7))
    ours = patched_generate(m, PROMPT.text, [Restore(), Restore((head,), tokens=(pos[-1],))], corr, torch.Generator().manual_seed(0), CFG)
    cols, t = bridge.head_slice(head), pos[-1]

    def restore(bridge, call):
        if call.index == 0:  # the prompt; call 1 is CFG's empty prompt
            x = bridge.site_envoy(head).input  # [R, 77, heads * head_dim]
            x[2, t, cols] = x[0, t, cols]

    with bridge.intervene(text_encoder=restore):
        theirs = patched_generate(bridge.model, PROMPT.text, [Restore(), Restore()], corr, torch.Generator().manual_seed(0), CFG)
    assert not torch.equal(ours[1], ours[2]), "restoring the head changes the image (the test can fail)"
    assert torch.equal(ours, theirs)


# --- planning, sweeps and screens -------------------------------------------------------------

def test_heads_on_a_unet_without_attention_is_a_config_error():
    from diffloc.tracing.errors import ConfigError

    config = dict(down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), mid_block_type=None, layers_per_block=1)
    fake = SimpleNamespace(sites=build_site_table("x", config, {}, "unet"), name="no-attention", family=SimpleNamespace(denoiser="unet"))
    assert fake.sites.heads() == []
    with pytest.raises(ConfigError, match="has no attention heads") as err:
        denoiser_rows(fake, TraceConfig(component="unet", heads=True), 3)
    assert "\n" not in str(err.value)
    assert len(denoiser_rows(fake, TraceConfig(component="unet"), 3)) == len(fake.sites.denoiser)


def test_sweep_with_heads_has_head_rows(tmp_path, pixel_model, scorer):
    from diffloc.tracing.sweep import run_sweep

    cfg = TraceConfig(model="tiny", attribute="colour", prompts=(PROMPT.marked,), seeds=(0,), num_inference_steps=2,
                      batch_size=128, heads=True)
    table = run_sweep(cfg, tmp_path / "heads", model=pixel_model, scorer=scorer)
    n_tok = len(PROMPT.tokens(pixel_model.tokenizer))
    text = table[table.kind == "attn_head"]
    assert len(text) == len(pixel_model.sites.heads("text_encoder")) * n_tok
    assert set(text.site) == {str(h) for h in pixel_model.sites.heads("text_encoder")}
    unet = table[table.kind.isin(["attn1_head", "attn2_head"])]
    assert sorted(unet.site) == sorted(str(h) for h in pixel_model.sites.heads("unet"))
    assert (table.kind == "attn").sum() == pixel_model.sites.text_layers["text_encoder"] * n_tok  # layer rows kept
    assert unet.clip_score.notna().all() and unet.clip_score.nunique() > 1
    assert text.skipped_noop.sum() == len(pixel_model.sites.heads("text_encoder")) * PROMPT.positions(pixel_model.tokenizer)[0]
    # the figures: head rows get their own heatmap (one cell per head), not grey bars in the UNet chart
    from matplotlib.image import imread

    from diffloc.plots import head_heatmap, unet_chart

    fig = tmp_path / "fig"
    fig.mkdir()
    heat = imread(head_heatmap(table, fig)[0])
    assert heat.shape[0] > 100 and heat[..., :3].std() > 0.05  # drawn, not blank
    with_heads = imread(unet_chart(table, fig)[0]).shape
    without = imread(unet_chart(table[~table.kind.str.endswith("_head")], fig)[0]).shape
    assert with_heads == without  # head rows add no bars to the UNet chart


@pytest.fixture(scope="module")
def f64():
    from diffloc.tracing.attribution import clip_score_fn
    from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer

    model, scorer = tiny_pixel_model(), tiny_scorer()
    for mod in model.modules.values():
        mod.double()
    scorer.model.double()
    corr = make_corruption(model, PROMPT.positions(model.tokenizer), torch.Generator().manual_seed(1))
    return model, clip_score_fn(scorer), corr


def _row(sites, tokens=None, window=None) -> RowSpec:
    return RowSpec(Restore(tuple(sites), tokens=tokens, window=window), sites[0].component, sites[0].kind, str(sites[0]))


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_screen_over_heads_sums_to_the_layer(f64, method):
    """out_proj is linear: Δout · ∂s/∂out = Δin · Wᵀ ∂s/∂out = Σ_h Δin_h · ∂s/∂in_h, exactly, at every path point."""
    from diffloc.tracing.attribution import screen

    model, fn, corr = f64
    tok = (PROMPT.positions(model.tokenizer)[-1],)
    text, unet = _heads(model, TEXT_ATTN), _heads(model, UNET_ATTN)
    rows = [_row([TEXT_ATTN], tok)] + [_row([h], tok) for h in text] + [_row([UNET_ATTN], window=(1, 3))] + [_row([h], window=(1, 3)) for h in unet]
    res = screen(model, PROMPT, rows, corr, torch.Generator().manual_seed(0), CFG, fn, ig_steps=None if method == "atp" else 2)
    est = res.estimates
    n = len(text)
    assert abs(est[0]) > 1e-6 and abs(est[n + 1]) > 1e-6, "vacuous case"
    assert est[1 : n + 1].sum() == pytest.approx(est[0], rel=1e-8, abs=1e-12)
    assert est[n + 2 :].sum() == pytest.approx(est[n + 1], rel=1e-8, abs=1e-12)
    assert len(set(est[1 : n + 1].round(12))) > 1, "heads differ"
    assert hook_count(model.modules) == 0

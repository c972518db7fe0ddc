"""SD3, FLUX and PixArt families: stock-pipeline equivalence, site tables, stream sites, bad input."""
from __future__ import annotations

import pytest
import torch

from diffloc.tracing.errors import ConfigError, DifflocInputError
from diffloc.tracing.hooks import hooks
from diffloc.tracing.models import _from_parts, load_model
from diffloc.tracing.sampler import Restore, SamplerConfig, generate, hooked_generate, initial_latents, make_corruption, patched_generate
from diffloc.tracing.sites import Site, SiteError, resolve

PROMPT = "a red car in front of a house"
FAMS = ("sd3", "flux", "pixart")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_cache: dict = {}


def tiny(fam: str):
    if fam not in _cache:
        _cache[fam] = load_model(f"tiny-{fam}")
    return _cache[fam]


def _stock(model, latents, steps, scale):
    fam, pipe = model.family, model.family.stock_pipeline(model)
    px = latents.shape[-1] * 8
    kw = dict(height=px, width=px, num_inference_steps=steps, guidance_scale=scale, output_type="pt")
    if fam.name == "flux":
        from diffloc.tracing.families.flux import pack

        return pipe(PROMPT, latents=pack(latents), **kw).images
    if fam.name == "pixart":
        kw.update(use_resolution_binning=False, clean_caption=False)
    return pipe(PROMPT, negative_prompt="", latents=latents, **kw).images


@pytest.mark.parametrize("fam", FAMS)
def test_clean_row_matches_stock_pipeline(fam):
    model = tiny(fam)
    cfg = SamplerConfig(3, model.defaults["guidance_scale"])
    latents = initial_latents(model, torch.Generator().manual_seed(0))
    ours = generate(model, [PROMPT], cfg=cfg, latents=latents)
    ref = _stock(model, latents, 3, cfg.guidance_scale)
    assert ours.shape == ref.shape == (1, 3, 64, 64)
    assert (ours - ref).abs().max() < 1e-4


def test_flux_schnell_matches_stock_pipeline():
    from diffloc.tracing.families.dit_replicas import build_dit_models, dit_replica_configs, with_tokenizers

    cfgs = dit_replica_configs("flux")
    cfgs["transformer/config.json"]["guidance_embeds"] = False
    cfgs["scheduler/scheduler_config.json"].update(shift=1.0, use_dynamic_shifting=False)
    model = _from_parts(with_tokenizers(build_dit_models(cfgs, 0), cfgs), "schnell", defaults={"latent_size": 8})
    latents = initial_latents(model, torch.Generator().manual_seed(1))
    ours = generate(model, [PROMPT], cfg=SamplerConfig(2, 0.0), latents=latents)
    assert (ours - _stock(model, latents, 2, 0.0)).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="schnell"):
        generate(model, [PROMPT], cfg=SamplerConfig(2, 5.0), latents=latents)


def _forward_order(model) -> list[Site]:
    """Denoiser sites in the order their hooks fire in one sampling step."""
    seen: list[Site] = []
    fns = {s: (lambda m, i, o, s=s: seen.append(s)) for s in model.sites.denoiser}
    with hooks(model.modules, fns):
        generate(model, [PROMPT], torch.Generator().manual_seed(0), SamplerConfig(1, 1.0))
    return list(dict.fromkeys(seen))


@pytest.mark.parametrize("fam", FAMS)
def test_site_order_matches_hooked_forward(fam):
    model = tiny(fam)
    assert _forward_order(model) == list(model.sites.denoiser)
    for head in model.sites.heads():  # every head resolves to a projection whose input holds it
        resolve(head, model.modules)


@pytest.mark.parametrize("fam,n_sites,heads", [("sd3", 142, 24 * 24), ("flux", 229, (19 + 38) * 24), ("pixart", 84, 28 * 2 * 16)])
def test_sites_against_published_model_on_meta(fam, n_sites, heads):
    from diffloc.tracing.families import FAMILIES
    from diffloc.tracing.replicas import build_published

    real = build_published(fam)
    texts = {k: v.config for k, v in real.items() if k.startswith("text_encoder")}
    table = FAMILIES.get(fam).site_table(real["transformer"].config, texts)
    modules = {k: v for k, v in real.items()}
    assert len(table.denoiser) == n_sites and len(table.heads("transformer")) == heads
    for site in [*table.all_sites(), *table.heads()]:
        resolve(site, modules)
    replica = tiny(fam)
    assert [str(s) for s in table.all_sites()] == [str(s) for s in replica.sites.all_sites()]
    for comp, mod in real.items():
        if comp in replica.modules:
            assert {n for n, _ in mod.named_modules()} == {n for n, _ in replica.modules[comp].named_modules()}


def test_published_parameter_counts():
    from diffloc.tracing.replicas import build_published

    count = {f: sum(p.numel() for p in build_published(f)["transformer"].parameters()) for f in FAMS}
    assert 2.0e9 < count["sd3"] < 2.1e9       # SD3-medium's "2B" MM-DiT
    assert 11.8e9 < count["flux"] < 12.0e9    # FLUX.1-dev's 11.9 B
    assert 0.6e9 < count["pixart"] < 0.62e9   # PixArt-Σ XL's 0.6 B


def test_stream_sites_restore_one_element():
    model = tiny("sd3")
    kinds = {s.kind for s in model.sites.denoiser}
    assert kinds == {"pooled", "attn_image", "attn_text", "ff", "ff_context", "out_text", "out_image"}
    t5 = model.sites.text_layer(3, "text_encoder_3")
    assert [s.kind for s in t5.values()] == ["hidden", "attn", "mlp"] and t5["attn"].layer == 3
    assert model.sites.heads_of(t5["attn"])[0].path == "encoder.block.3.layer.0.SelfAttention.heads.0"
    with pytest.raises(SiteError, match="context_pre_only"):
        resolve("transformer:transformer_blocks.23@text", model.modules)
    shapes = {}
    fns = {Site.parse(f"transformer:transformer_blocks.2@{k}"): (lambda m, i, o, k=k: shapes.update({k: o.shape})) for k in ("text", "image")}
    with hooks(model.modules, fns):
        generate(model, [PROMPT], torch.Generator().manual_seed(0), SamplerConfig(1, 1.0))
    assert shapes == {"text": (1, 77 + 256, 32), "image": (1, 16, 32)}


@pytest.mark.parametrize("fam", FAMS)
def test_exact_restoration_on_every_site(fam):
    model = tiny(fam)
    cfg = SamplerConfig(2, model.defaults["guidance_scale"])
    corr = make_corruption(model, [2, 3], torch.Generator().manual_seed(0), scale=10.0)
    latents = initial_latents(model, torch.Generator().manual_seed(0))
    rows = [Restore(), Restore(tuple(model.sites.denoiser)), Restore((model.sites.denoiser[-1],), window=(0, 1))]
    imgs = patched_generate(model, PROMPT, rows, corr, cfg=cfg, latents=latents)
    corrupted = hooked_generate(model, PROMPT, latents, cfg, corr)
    assert (imgs[1] - corrupted[0]).abs().max() < 1e-5 and (imgs[0] - imgs[1]).abs().max() > 1e-4
    assert (imgs[2] - imgs[0]).abs().max() < 1e-5      # every denoiser site restored: the clean row
    assert (imgs[3] - imgs[1]).abs().max() > 1e-4      # the last site in step 0 only: neither
    assert (imgs[3] - imgs[0]).abs().max() > 1e-6


def test_bad_input_is_one_line():
    flux = tiny("flux")
    with pytest.raises(ConfigError, match="guidance scale > 0") as err:
        generate(flux, [PROMPT], torch.Generator().manual_seed(0), SamplerConfig(1, 0.0))
    with pytest.raises(SiteError, match="head 4 out of range; .* has heads 0..3") as err2:
        resolve("transformer:single_transformer_blocks.0.attn.heads.4", flux.modules)
    sd1 = load_model("tiny-sd1")
    with pytest.raises(SiteError, match="not a T5 encoder") as err3:
        resolve("text_encoder:encoder.block.0.layer.0.SelfAttention.o", sd1.modules)
    for e in (err, err2, err3):
        assert "\n" not in str(e.value)
    assert isinstance(err.value, DifflocInputError)

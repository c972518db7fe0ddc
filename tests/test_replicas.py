"""Tiny replicas keep the published models' structure, sites and pipelines.

For each family (sd1, sd2, sdxl) the full published model is built on the meta device (no
memory, no weights) and compared with the tiny replica: identical module names, every site
resolving in both, site counts and execution order checked against a forward pass, and a
saved replica opening in the stock diffusers pipeline.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from diffloc.tracing.arch import detect_arch, published_site_table, site_table
from diffloc.tracing.configs import FAMILIES, published
from diffloc.tracing.replicas import build_published, build_replica, replica_configs, save_replica, text_components
from diffloc.tracing.sites import TEXT_PREFIX, resolve

MODEL_PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")
# Config keys a replica may change; everything else (the structure) must be the published value.
WIDTH_KEYS = {
    "unet/config.json": {"block_out_channels", "norm_num_groups", "attention_head_dim", "cross_attention_dim",
                         "sample_size", "addition_time_embed_dim", "projection_class_embeddings_input_dim"},
    "vae/config.json": {"block_out_channels", "norm_num_groups", "sample_size"},
    "text": {"hidden_size", "num_attention_heads", "intermediate_size", "projection_dim"},
}
FILE_KEYS = {"_name_or_path", "architectures", "torch_dtype", "transformers_version", "_diffusers_version"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine OpenMP's spinning
    threads make each small op ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


_cache: dict = {}


@pytest.fixture(scope="module")
def replica(family):
    if ("replica", family) not in _cache:
        _cache["replica", family] = build_replica(family, seed=0)
    return _cache["replica", family]


@pytest.fixture(scope="module")
def real(family):
    if ("real", family) not in _cache:
        _cache["real", family] = build_published(family)  # meta device
    return _cache["real", family]


def models(parts):
    return {k: v for k, v in parts.items() if k in MODEL_PARTS}


def unet_inputs(unet, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    kwargs = {}
    if cfg.addition_embed_type == "text_time":
        pooled = unet.add_embedding.linear_1.in_features - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    return dict(sample=torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g),
                timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(batch, 77, cfg.cross_attention_dim, generator=g), **kwargs)


# (a) structure ------------------------------------------------------------------------------

def test_replica_changes_only_widths(family):
    pub, tiny = published(family), replica_configs(family)
    assert set(pub) == set(tiny)
    for key in pub:
        if not isinstance(pub[key], dict):
            assert tiny[key] == pub[key], key
            continue
        allowed = FILE_KEYS | WIDTH_KEYS.get("text" if key.startswith("text_encoder") else key, set())
        changed = {k for k in pub[key].keys() | tiny[key].keys() if pub[key].get(k) != tiny[key].get(k)}
        assert changed <= allowed, (key, changed - allowed)


def test_same_module_names_as_published(real, replica):
    assert set(models(real)) == set(models(replica))
    for name, model in models(real).items():
        assert next(model.parameters()).device.type == "meta"
        real_names = [n for n, _ in model.named_modules()]
        tiny_names = [n for n, _ in replica[name].named_modules()]
        assert real_names == tiny_names, name
        real_types = [type(m).__name__ for _, m in model.named_modules()]
        assert real_types == [type(m).__name__ for _, m in replica[name].named_modules()], name


def test_published_parameter_counts(real, family):
    """The meta models have the published sizes, a check on the JSON configs themselves."""
    expected = {  # numel of the released checkpoints' modules
        "sd1": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
        "sd2": {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
        "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                 "vae": 83_653_863},
    }[family]
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in models(real).items()} == expected


# (b) sites resolve ---------------------------------------------------------------------------

def test_every_site_resolves_in_real_and_replica(real, replica, family):
    table = published_site_table(family)
    assert table.arch == family
    assert table.text_components == tuple(text_components(published(family)))
    for site in table.all_sites():
        resolve(site, models(real))
        resolve(site, models(replica))


def test_replica_detects_as_its_family(replica, family):
    texts = {k: replica[k].config for k in replica if k.startswith("text_encoder")}
    assert detect_arch(replica["unet"].config, texts) == family
    assert detect_arch(replica["unet"].config, list(texts.values())) == family  # list form, as models.py passes
    got, want = site_table(replica["unet"].config, texts), published_site_table(family)
    # the same sites in the same order; head counts shrink with the widths (a replica's own
    # counts are checked against its built modules in tests/test_heads.py)
    blank = dict(text_heads={}, denoiser_heads={}, text_paths={})
    assert dataclasses.replace(got, **blank) == dataclasses.replace(want, **blank)
    assert set(got.denoiser_heads) == set(want.denoiser_heads) and set(got.text_heads) == set(want.text_heads)


def test_detect_arch_toy_and_unknown():
    toy_unet = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "block_out_channels": [32, 64]}
    toy_text = {"text_encoder": {"num_hidden_layers": 4, "hidden_act": "quick_gelu"}}
    assert detect_arch(toy_unet, toy_text) == "toy"
    big = dict(published("sd1")["unet/config.json"], layers_per_block=3)
    with pytest.raises(ValueError, match="layers_per_block"):
        detect_arch(big, {"text_encoder": published("sd1")["text_encoder/config.json"]})


# (c) counts and execution order --------------------------------------------------------------

def execution_order(unet):
    """UNet sites as a forward pass meets them, found by module class, not by the site table."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    watched = {}
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D):
            watched[name] = module
        elif isinstance(module, BasicTransformerBlock):
            for child in ("attn1", "attn2", "ff"):
                watched[f"{name}.{child}"] = getattr(module, child)
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n)) for n, m in watched.items()]
    try:
        with torch.no_grad():
            unet(**unet_inputs(unet))
    finally:
        for h in handles:
            h.remove()
    assert sorted(order) == sorted(watched), "every watched module runs exactly once"
    return order


def class_counts(model):
    names = [type(m).__name__ for m in model.modules()]
    return names.count("ResnetBlock2D"), names.count("BasicTransformerBlock")


def test_unet_table_is_execution_order(replica, real, family):
    table = published_site_table(family)
    assert [s.path for s in table.denoiser] == execution_order(replica["unet"])
    n_res, n_blocks = class_counts(real["unet"])
    assert (n_res, n_blocks) == class_counts(replica["unet"])
    assert len(table.denoiser) == n_res + 3 * n_blocks
    assert [s.kind for s in table.denoiser].count("resnet") == n_res


@pytest.mark.parametrize("fam, resnets, blocks, text_layers", [
    ("sd1", 22, 16, {"text_encoder": 12}),
    ("sd2", 22, 16, {"text_encoder": 23}),
    # SDXL: resnets 3*2 down + 2 mid + 3*3 up = 17; transformer blocks (down_blocks.0 has
    # none) 2*2 + 2*10 down, 10 mid, 3*10 + 3*2 up = 70.
    ("sdxl", 17, 70, {"text_encoder": 12, "text_encoder_2": 32}),
])
def test_site_counts(fam, resnets, blocks, text_layers):
    table = published_site_table(fam)
    kinds = [s.kind for s in table.denoiser]
    assert kinds.count("resnet") == resnets
    assert kinds.count("attn1") == kinds.count("attn2") == kinds.count("ff") == blocks
    assert len(table.denoiser) == resnets + 3 * blocks  # sd1: 70
    assert dict(table.text_layers) == text_layers
    for comp, n in text_layers.items():
        sites = table.text_sites(comp)
        assert len(sites) == 3 * n
        assert [s.kind for s in sites[:3]] == ["hidden", "attn", "mlp"]
        assert str(sites[-1]) == f"{comp}:{TEXT_PREFIX[comp]}encoder.layers.{n - 1}.mlp.fc2"
        assert [s.layer for s in sites] == [i for i in range(n) for _ in range(3)]


# determinism ---------------------------------------------------------------------------------

def test_replica_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = build_replica("sd1", seed=0), build_replica("sd1", seed=0), build_replica("sd1", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("unet", "text_encoder", "vae"):
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert not all(torch.equal(sa[k], sc[k]) for k in sa), name


# (d) stock pipelines open a saved replica ----------------------------------------------------

def test_saved_replica_runs_in_stock_pipeline(family, replica, tmp_path_factory):
    import diffusers

    path = save_replica(family, tmp_path_factory.mktemp(family))
    cls = getattr(diffusers, published(family)["model_index.json"]["_class_name"])
    pipe = cls.from_pretrained(path)
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    for name, model in models(replica).items():  # saved weights are the built ones
        saved = getattr(pipe, name).state_dict()
        assert all(torch.equal(t, saved[k]) for k, t in model.state_dict().items()), name
    if family != "sdxl":
        assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.tokenizer.pad_token == published(family)["tokenizer/tokenizer_config.json"]["pad_token"]
    texts = {k: getattr(pipe, k).config for k in text_components(published(family))}
    assert detect_arch(pipe.unet.config, texts) == family
    out = pipe("a red circle", num_inference_steps=1, generator=torch.Generator().manual_seed(0),
               output_type="np")
    image = out.images
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(torch.as_tensor(image)).all()


# (e) random full-size models for benchmarks --------------------------------------------------

def test_random_spec_is_the_full_published_model_with_random_weights():
    """`random-sd1` (what `experiments/gpu_bench.py` times) is the published model, not a replica:
    the released checkpoint's parameter counts, its site table, and weights that are not zero."""
    from diffloc.tracing.models import load_model

    state = torch.random.get_rng_state()
    model = load_model("random-sd1")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    parts = {**model.modules, "vae": model.vae}
    counts = {k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "text_encoder", "vae")}
    assert counts == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
    real = build_published("sd1")
    assert [n for n, _ in model.denoiser.named_modules()] == [n for n, _ in real["unet"].named_modules()]
    assert model.denoiser.conv_in.weight.abs().sum() > 0 and model.module("text_encoder:encoder.layers.0.mlp.fc2").weight.std() > 0
    assert model.sites.denoiser == load_model("tiny-sd1").sites.denoiser  # same spelling of every UNet site


def test_random_scorer_is_open_clip_with_random_weights():
    from diffloc.tracing.scoring import load_scorer

    scorer = load_scorer("ViT-B-32/random")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    scores = scorer.score(images, ["a red car", "a blue car"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert scorer.image_size == 224 and scorer.model_id == "ViT-B-32/random"

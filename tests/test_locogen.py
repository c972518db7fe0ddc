"""crossattn-swap (LocoGen): altered prompts, windows of attn2 layers, the swap itself, the table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffloc.tracing.arch import published_site_table
from diffloc.tracing.causal import site_effects
from diffloc.tracing.errors import ConfigError
from diffloc.tracing.hooks import hook_count, hooks
from diffloc.tracing.locogen import altered_captions, attn2_sites, layer_windows, swap_generate, swap_hooks, world_values
from diffloc.tracing.methods import TRACE_METHODS
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import SamplerConfig, encode, initial_latents
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig
from diffloc.tracing.worlds import get_world

P = "a photo of two red circles at the top on a plain background"
A = "a photo of two blue circles at the top on a plain background"
CFG = SamplerConfig(num_inference_steps=3, guidance_scale=2.0)


OPTIONS = ("ig_steps", "confirm_top", "window", "swap")  # a method's own options: TraceConfig.method_options


def _cfg(**kw):
    opts = {k: kw.pop(k) for k in OPTIONS if k in kw}
    base = dict(model="tiny", attribute="colour", method="crossattn-swap", component="denoiser", seeds=(0,),
                prompts=("a photo of two [red] circles at the top on a plain background",), num_inference_steps=2)
    return TraceConfig(**{**base, **kw}, method_options=opts)


# (a) a window over every attn2 layer is generation from the altered prompt -------------------
def test_window_over_all_cross_attention_is_the_altered_prompt(pixel_model):
    from diffloc_toy.evaluate import reference_ddim  # an independent DDIM + CFG loop, UNet called directly

    layers = tuple(attn2_sites(pixel_model.sites))
    lat = initial_latents(pixel_model, torch.Generator().manual_seed(0))
    img = swap_generate(pixel_model, P, A, [layers, layers[:-1]], cfg=CFG, latents=lat)
    assert torch.equal(img[2], img[1]), "all attn2 layers fed the altered prompt = the altered reference row"
    altered = reference_ddim(pixel_model, [A], lat, CFG.num_inference_steps, CFG.guidance_scale)[0]
    original = reference_ddim(pixel_model, [P], lat, CFG.num_inference_steps, CFG.guidance_scale)[0]
    assert (img[2] - altered).abs().max() < 5e-5
    assert (img[0] - original).abs().max() < 5e-5
    assert (altered - original).abs().max() > 1e-2, "the two prompts give different images"
    assert (img[3] - img[1]).abs().max() > 1e-3, "leaving one attn2 layer on the original prompt changes the image"
    assert hook_count(pixel_model.modules) == 0


# (b) the swap writes the conditional rows of its windows only --------------------------------
def test_swap_leaves_the_unconditional_half_and_other_rows_untouched(pixel_model):
    m = pixel_model
    layers = tuple(attn2_sites(m.sites))
    windows = [(), layers, layers[1:2]]  # empty window, all layers, one layer
    R = 2 + len(windows)
    cond = encode(m, [P, A]).embeds
    cond = cond[torch.tensor([0, 1] + [0] * len(windows))]
    un = m.family.uncond(m, R).embeds
    ehs = torch.cat([un, cond])  # [2R, 77, D]: uncond rows, then cond rows, as the sampler batches them
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).expand(2 * R, -1, -1, -1)
    t = torch.tensor(500)
    with torch.no_grad():
        plain = m.denoiser(x, t, encoder_hidden_states=ehs).sample
        with hooks(m.modules, swap_hooks(m, windows, R, cfg_on=True)):
            swapped = m.denoiser(x, t, encoder_hidden_states=ehs).sample
    assert torch.equal(swapped[:R], plain[:R]), "the unconditional half must not see the altered prompt"
    assert torch.equal(swapped[R : R + 2], plain[R : R + 2]), "reference rows are untouched"
    assert torch.equal(swapped[R + 2], plain[R]), "an empty window is the original prompt"
    assert torch.equal(swapped[R + 3], plain[R + 1]), "a window over every layer is the altered prompt"
    assert not torch.equal(swapped[R + 4], plain[R]) and not torch.equal(swapped[R + 4], plain[R + 1])
    # without CFG the batch has no unconditional half: rows are written at their own index
    with torch.no_grad(), hooks(m.modules, swap_hooks(m, windows, R, cfg_on=False)):
        no_cfg = m.denoiser(x[:R], t, encoder_hidden_states=cond).sample
    assert torch.equal(no_cfg[3], plain[R + 1]) and torch.equal(no_cfg[2], plain[R])
    with pytest.raises(ConfigError, match="attn2"):
        swap_hooks(m, [(m.sites.denoiser[0],)], R, True)


# (c) the table: columns the summaries read, effects on the stated scale ----------------------
@pytest.fixture(scope="module")
def swap_run(tmp_path_factory, pixel_model, scorer):
    out = tmp_path_factory.mktemp("swap")
    return out, run_sweep(_cfg(window=2), out, model=pixel_model, scorer=scorer)


def test_table_columns_effects_and_site_effects(swap_run, pixel_model):
    out, table = swap_run
    layers = [str(s) for s in attn2_sites(pixel_model.sites)]  # 4 in the tiny model
    assert list(table.alt_value.unique()) == ["green", "blue", "yellow"]  # every other toy colour, in the world's order
    assert table.unit.nunique() == 3 and (table.groupby("unit").size() == 2 + 3).all()
    for col in ("prompt_index", "seed", "noise_index", "unit", "method", "component", "kind", "site", "layer", "token_role",
                "window_start", "window_end", "window_layers", "reference", "alt_prompt", "clip_score", "clip_alt_score",
                "gt_score", "gt_alt_score", "clip_clean", "clip_corrupted", "effect_clip", "effect_clip_alt", "effect_gt_alt"):
        assert col in table.columns, col
    assert set(table.method) == {"crossattn-swap"}
    refs = table[table.row < 2]
    assert list(refs.reference[:2]) == ["original", "altered"] and list(refs.kind[:2]) == ["corrupted", "clean"]
    win = table[table.kind == "attn2"]
    assert (win.component == "unet").all() and sorted(win.layer.unique()) == [0, 1, 2]
    for r in win.itertuples():
        assert list(r.window_layers) == layers[r.layer : r.layer + 2] and r.site == layers[r.layer]
    # effect = (row - original reference) / (altered reference - original reference), per unit
    for unit, g in table.groupby("unit"):
        g = g.set_index("row")
        for m in ("clip", "clip_alt"):
            orig, alt = g.loc[0, f"{m}_score"], g.loc[1, f"{m}_score"]
            assert np.allclose(g[f"{m}_clean"], alt) and np.allclose(g[f"{m}_corrupted"], orig)
            assert np.allclose(g[f"effect_{m}"], (g[f"{m}_score"] - orig) / (alt - orig))
        assert g.loc[1, "effect_clip"] == pytest.approx(1.0) and g.loc[0, "effect_clip"] == pytest.approx(0.0)
    assert (table.gt_alt_score[table.row == 1] == table.gt_alt_clean[table.row == 1]).all()
    eff = site_effects(table, "clip")
    assert len(eff) == 3 and list(eff.site) == layers[:3] and eff.effect.notna().all()
    assert (out / "causal_sites.json").exists() and (out / "trace.parquet").exists()


def test_remove_swap_drops_the_attribute_and_leaves_ground_truth_of_it_empty(tmp_path, pixel_model, scorer):
    table = run_sweep(_cfg(swap="remove", window=4), tmp_path, model=pixel_model, scorer=scorer)
    assert set(table.alt_prompt) == {"a photo of two circles at the top on a plain background"}
    assert table.unit.nunique() == 1 and (table.kind == "attn2").sum() == 1
    assert table.gt_alt_score.isna().all() and table.gt_score.notna().all()
    g = table.set_index("row")
    assert g.loc[2, "clip_score"] == g.loc[1, "clip_score"], "one window over all 4 layers is the altered row"


# (d) bad input ------------------------------------------------------------------------------
def test_too_large_a_window_is_a_one_line_config_error(pixel_model):
    method = TRACE_METHODS.get("crossattn-swap")
    prompts = [MarkedPrompt.parse(p) for p in _cfg().prompts]
    with pytest.raises(ConfigError) as err:
        method.plan(_cfg(window=5), pixel_model, prompts, 2)
    assert str(err.value) == "window 5 larger than the 4 cross-attention layers of this model; allowed 1..4"
    with pytest.raises(ConfigError, match="--component text_encoder has none"):
        method.plan(_cfg(component="text_encoder"), pixel_model, prompts, 2)
    assert len(method.plan(_cfg(window=4, batch_size=1), pixel_model, prompts, 2)) == 3  # one window x 3 colours


# (e) every family's site table ----------------------------------------------------------------
@pytest.mark.parametrize("family,n_attn2", [("sd1", 16), ("sd2", 16), ("sdxl", 70)])
def test_windows_of_the_published_site_tables(family, n_attn2):
    table = published_site_table(family)
    assert len(attn2_sites(table)) == n_attn2
    assert len(layer_windows(table, 2)) == n_attn2 - 1 and len(layer_windows(table, n_attn2)) == 1
    wins = layer_windows(table, 3)
    assert all(a[1:] == b[:-1] for a, b in zip(wins, wins[1:])), "windows slide one layer at a time"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_runs_on_tiny_replicas(tmp_path, family, scorer):
    from diffloc.tracing.models import load_model

    model = load_model(f"tiny-{family}")
    cfg = TraceConfig(model=f"tiny-{family}", attribute="style", method="crossattn-swap", component="denoiser", method_options={"swap": "remove"},
                      prompts=("a painting of a house in the style of [Van Gogh]",), seeds=(0,), num_inference_steps=1,
                      guidance_scale=5.0, batch_size=128)
    table = run_sweep(cfg, tmp_path, model=model, scorer=scorer)
    n = len(attn2_sites(published_site_table(family)))
    assert len(attn2_sites(model.sites)) == n
    assert (table.kind == "attn2").sum() == n - 1 and table.layer.max() == n - 2
    assert table.clip_score.notna().all() and len(site_effects(table, "clip")) == n - 1
    assert set(table.alt_prompt) == {"a painting of a house in the style"}


# altered prompts ------------------------------------------------------------------------------
def test_altered_captions_on_the_toy_and_sd_worlds():
    toy, sd = get_world("toy"), get_world("sd")
    p = MarkedPrompt.parse("three red [squares] at the top, plain background")
    values = world_values(toy, "object")
    assert values == ["circle", "square", "triangle", "diamond"]
    assert altered_captions(toy, p, "object", "value", values)[0] == ("three red triangles at the top, plain background", "triangle")
    assert altered_captions(toy, p, "object", "remove", values) == [("", "")]  # nouns with modifiers: the neutral caption
    view = MarkedPrompt.parse("one blue square in the [middle], plain background")
    assert altered_captions(toy, view, "viewpoint", "remove", [])[0][0] == "one blue square, plain background"
    count = MarkedPrompt.parse("a photo of [one] yellow square at the top on a striped background")
    assert [v for _, v in altered_captions(toy, count, "count", "value", world_values(toy, "count"))] == ["two", "three"]
    assert altered_captions(toy, count, "count", "value", world_values(toy, "count"))[0][0].startswith("a photo of two yellow squares")
    apple = MarkedPrompt.parse("a [green] apple on a table")
    alts = altered_captions(sd, apple, "colour", "value", world_values(sd, "colour", [apple]))
    assert [t for t, _ in alts] == ["a purple apple on a table", "a white apple on a table", "an orange apple on a table"]
    assert altered_captions(sd, apple, "colour", "remove", [])[0][0] == "an apple on a table"

"""crossattn-swap on diffusion transformers: the text-stream swap and the joint-attention K/V swap (MM-DiT),
the cross-attention K/V swap under PixArt's text mask, and the method through the CLI on every DiT replica."""
from __future__ import annotations

import pytest
import torch

from diffloc.cli.app import main
from diffloc.tracing.errors import ConfigError
from diffloc.tracing.hooks import hook_count, hooks
from diffloc.tracing.io import read_trace
from diffloc.tracing.methods import TRACE_METHODS
from diffloc.tracing.models import load_model
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import SamplerConfig, _sample, encode, initial_latents
from diffloc.tracing.swaps import swap_generate, swap_hooks, swap_readers
from diffloc.tracing.trace_config import TraceConfig

P = "a photo of two red circles at the top on a plain background"
A = "a photo of two blue circles at the top on a plain background"
_cache: dict = {}


def tiny(spec: str):
    if spec not in _cache:
        _cache[spec] = load_model(spec)
        encode(_cache[spec], [""])  # transformers adds its own output-recording hooks at the first encoding
    return _cache[spec]


def _run(spec: str, swap_input: str, pooled: str, altered: str = A, steps: int = 2):
    """(model, images of [original, altered, every layer swapped, all but the first swapped], latents, cfg)."""
    m = tiny(spec)
    cfg = SamplerConfig(steps, m.defaults["guidance_scale"])
    lat = initial_latents(m, torch.Generator().manual_seed(0))
    every = tuple(r.site for r in swap_readers(m, swap_input))
    before = hook_count(m.modules)
    img = swap_generate(m, P, altered, [every, every[1:]], cfg=cfg, latents=lat, swap_input=swap_input, pooled=pooled)
    assert hook_count(m.modules) == before, "every hook is removed"
    return m, img, lat, cfg


# (a) a window over every block reproduces the altered prompt ----------------------------------
@pytest.mark.parametrize("spec", ["tiny-sd3", "toy-dit"])
def test_text_stream_window_over_every_block_is_the_altered_image(spec):
    m, img, lat, cfg = _run(spec, "text-stream", "altered")
    altered = _sample(m, encode(m, [A]), lat, cfg)[0]  # independent: the altered prompt, no hooks, alone in its batch
    assert (img[1] - altered).abs().max() < 1e-5, "row 1 is the altered prompt's image"
    assert (img[2] - img[1]).abs().max() < 1e-5, "every block reading the altered text stream (and pooled vector) = row 1"
    assert (img[1] - img[0]).abs().max() > 1e-3, "the two prompts give different images"
    assert (img[3] - img[1]).abs().max() > 1e-5, "block 0 left on the original text stream changes the image"
    _, kept, _, _ = _run(spec, "text-stream", "original")
    assert torch.equal(kept[:2], img[:2])
    assert (kept[2] - img[1]).abs().max() > 1e-4, "LocoGen's default: window rows keep the original pooled vector"


# (b) the K/V swap is a different intervention ----------------------------------------------------
def test_kv_swap_of_every_block_differs_from_the_text_stream_swap():
    m, kv, _, _ = _run("toy-dit", "kv", "original")
    _, stream, _, _ = _run("toy-dit", "text-stream", "original")
    assert torch.equal(kv[:2], stream[:2]), "same references"
    assert (kv[2] - stream[2]).abs().max() > 1e-4, "keys and values of the altered row are not the altered text stream"
    assert [r.kind for r in swap_readers(m, "kv")] == ["joint_kv"] * 6
    assert all(s.path.endswith((".add_k_proj", ".add_v_proj")) for r in swap_readers(m, "kv") for s in r.swapped)
    _, kv_pooled, _, _ = _run("toy-dit", "kv", "altered")
    assert (kv_pooled[2] - kv_pooled[1]).abs().max() < 1e-5, "with the altered pooled vector, every block's K/V is the altered image"


def test_swaps_write_the_conditional_rows_only():
    m = tiny("toy-dit")
    every = tuple(r.site for r in swap_readers(m, "text-stream"))
    R = 3
    cond = encode(m, [P, A]).rows(torch.tensor([0, 1, 0]))
    both = m.family.uncond(m, R).cat(cond)  # [2R, ...]: uncond rows, then cond rows
    x = torch.randn(1, *initial_latents(m, torch.Generator().manual_seed(1)).shape[1:]).expand(2 * R, -1, -1, -1)
    t = torch.tensor(500.0)
    with torch.no_grad():
        plain = m.family.denoise(m, x, t, both, 0)
        with hooks(m.modules, swap_hooks(m, [every], R, cfg_on=True, swap_input="text-stream")):
            swapped = m.family.denoise(m, x, t, both, 0)
    assert torch.equal(swapped[: R + 2], plain[: R + 2]), "unconditional half and reference rows untouched"
    assert not torch.equal(swapped[R + 2], plain[R])


# (c) PixArt: cross-attention K/V with the altered prompt's text mask -------------------------------
def test_pixart_kv_swap_of_every_attn2_is_the_altered_image_under_its_mask(monkeypatch):
    import diffloc.tracing.swaps as swaps

    shorter = "a photo of two circles at the top on a plain background"
    m = tiny("tiny-pixart")
    lengths = [int(encode(m, [t]).mask.sum()) for t in (P, shorter)]
    assert lengths[0] != lengths[1], "the two captions' masks differ"
    m, img, lat, cfg = _run("tiny-pixart", "kv", "original", altered=shorter)
    assert (img[2] - img[1]).abs().max() < 1e-5 and (img[1] - img[0]).abs().max() > 1e-3
    assert [r.kind for r in swap_readers(m, "kv")] == ["attn2"] * 28
    monkeypatch.setattr(swaps, "mask_hooks", lambda *a, **k: {})
    _, unmasked, _, _ = _run("tiny-pixart", "kv", "original", altered=shorter)
    assert (unmasked[2] - unmasked[1]).abs().max() > 1e-3, "without the altered mask the altered keys are read under the wrong mask"


# (d) bad input ----------------------------------------------------------------------------------
def test_text_stream_on_a_cross_attention_model_is_a_one_line_error(pixel_model, tmp_path, capsys):
    method = TRACE_METHODS.get("crossattn-swap")
    cfg = TraceConfig(model="toy", attribute="colour", method="crossattn-swap", component="denoiser", seeds=(0,),
                      prompts=("a photo of two [red] circles at the top on a plain background",),
                      method_options={"swap_input": "text-stream"})
    prompts = [MarkedPrompt.parse(p) for p in cfg.prompts]
    with pytest.raises(ConfigError, match="Allowed here: kv"):
        method.plan(cfg, pixel_model, prompts, 2)
    with pytest.raises(ConfigError, match="no pooled text vector; allowed: original"):
        method.plan(TraceConfig(**{**cfg.to_dict(), "method_options": {"pooled": "altered"}}), pixel_model, prompts, 2)
    with pytest.raises(SystemExit) as done:
        main(["trace", "--model", "toy", "--attribute", "colour", "--method", "crossattn-swap", "--swap-input", "text-stream",
              "--out", str(tmp_path / "o")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --swap-input text-stream swaps the text-stream input of joint-attention blocks (MM-DiT); "
                   "toy (family toy) has none. Allowed here: kv"]


# (e) end to end through the CLI on every DiT replica -----------------------------------------------
@pytest.mark.parametrize("spec, extra, kind, n_layers", [
    ("tiny-sd3", ("--swap-input", "text-stream", "--window", "20"), "text_stream", 24),
    ("tiny-sd3", ("--window", "20", "--pooled", "altered"), "joint_kv", 24),
    ("tiny-flux", ("--swap-input", "text-stream", "--window", "54"), "text_stream", 19 + 38),
    ("tiny-pixart", ("--window", "25",), "attn2", 28),
])
def test_swap_runs_through_the_cli(tmp_path, spec, extra, kind, n_layers):
    out = tmp_path / "run"
    main(["--quiet", "trace", "--model", spec, "--attribute", "colour", "--method", "crossattn-swap", "--scorer", "toy",
          "--max-prompts", "1", "--seed", "0", "--steps", "1", "--no-plot", "--out", str(out), *extra])
    table = read_trace(out / "trace.parquet")
    win = table[table.row >= 2]
    size = int(extra[extra.index("--window") + 1])
    assert list(table.reference[table.row < 2].unique()) == ["original", "altered"]
    assert set(win.kind) == {kind} and (win.component == "transformer").all()
    assert len(win) == (n_layers - size + 1) * table.unit.nunique() and sorted(win.layer.unique()) == list(range(n_layers - size + 1))
    assert all(len(w) == size for w in win.window_layers)
    assert table.clip_score.notna().all()

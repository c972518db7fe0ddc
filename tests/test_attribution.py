"""Gradient screens (AtP, IG) against independent references: finite differences, exact patching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffloc.tracing.attribution import clip_score_fn, screen
from diffloc.tracing.errors import DifflocInputError
from diffloc.tracing.hooks import hook_count
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.sampler import Restore, SamplerConfig, hooked_generate, initial_latents, make_corruption, patched_generate
from diffloc.tracing.sites import Site
from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer
from diffloc.tracing.trace_config import RowSpec

CFG = SamplerConfig(num_inference_steps=4, guidance_scale=3.0)
PROMPT = MarkedPrompt.parse("a photo of two [red] circles at the top")


@pytest.fixture(scope="module")
def setup():
    """A float64 tiny model and scorer (finite differences need the precision)."""
    model, scorer = tiny_pixel_model(), tiny_scorer()
    for m in model.modules.values():
        m.double()
    scorer.model.double()
    pos = PROMPT.positions(model.tokenizer)
    corr = make_corruption(model, pos, torch.Generator().manual_seed(1))
    return model, clip_score_fn(scorer), corr, pos


def _row(sites, tokens=None, window=None) -> RowSpec:
    sites = tuple(Site.parse(s) for s in sites)
    return RowSpec(Restore(sites, tokens=tokens, window=window), sites[0].component, sites[0].kind, str(sites[0]))


def _screen(setup, rows, method="atp", ig_steps=8, **kw):
    """``method`` atp: the gradient at the corrupted run (ig_steps None); ig: ``ig_steps`` path points."""
    model, fn, corr, _ = setup
    steps = None if method == "atp" else ig_steps
    return screen(model, PROMPT, rows, corr, torch.Generator().manual_seed(0), CFG, fn, ig_steps=steps, **kw)


def _nudged_images(model, corr, row: Restore, eps: float) -> torch.Tensor:
    """Corrupted run whose row sites move ``eps`` of the way to their clean values (eps=1: restore)."""
    lat = initial_latents(model, torch.Generator().manual_seed(0))
    clock, clean = {"i": 0}, {}
    text = lambda s: s.component.startswith("text_encoder")  # noqa: E731
    key = lambda s: (s, -1 if text(s) else clock["i"])  # noqa: E731

    def rec(site):
        def fn(mod, inp, out):
            clean[key(site)] = out.clone()
        return fn

    def nudge(site):
        def fn(mod, inp, out):  # text out [1, 77, D]; UNet out [2 (uncond, cond), ...]
            if not text(site) and row.window and not row.window[0] <= clock["i"] < row.window[1]:
                return None
            new, c = out.clone(), clean[key(site)]
            idx = (slice(None), list(row.tokens)) if text(site) and row.tokens is not None else (slice(None),)
            new[idx] = out[idx] + eps * (c[idx] - out[idx])
            return new
        return fn

    def run(make, corruption):
        th = {s: make(s) for s in row.sites if text(s)}
        uh = {s: make(s) for s in row.sites if not text(s)}
        return hooked_generate(model, PROMPT.text, lat, CFG, corruption, 1.0, th, uh, clock)

    with torch.no_grad():
        run(rec, None)
        return run(nudge, corr)


FD_ROWS = [
    (("text_encoder:encoder.layers.1",), "subject", None),
    (("text_encoder:encoder.layers.0.self_attn.out_proj", "text_encoder:encoder.layers.1.self_attn.out_proj"), "after", None),
    (("unet:mid_block.resnets.0",), None, None),
    (("unet:down_blocks.1.attentions.0.transformer_blocks.0.attn2",), None, (1, 3)),
]


def _fd_rows(pos):
    toks = {"subject": (pos[-1],), "after": (pos[-1] + 1,), None: None}
    return [_row(s, toks[t], w) for s, t, w in FD_ROWS]


def test_atp_equals_finite_difference_of_partial_restoration(setup):
    """AtP of a row = d/dε score(corrupted run with the row's sites moved ε towards clean) at ε=0."""
    model, fn, corr, pos = setup
    rows = _fd_rows(pos)
    res = _screen(setup, rows, method="atp")
    eps = 1e-4
    for row, est in zip(rows, res.estimates):
        up = fn(_nudged_images(model, corr, row.restore, eps), [PROMPT.text])
        down = fn(_nudged_images(model, corr, row.restore, -eps), [PROMPT.text])
        fd = float((up - down).sum()) / (2 * eps)
        assert abs(fd) > 1e-5, f"{row.site}: vacuous case"
        assert est == pytest.approx(fd, rel=1e-5, abs=1e-9), row.site


def test_per_step_contributions_are_finite_differences_of_one_step_and_sum_to_the_estimate(setup):
    """row_steps[k] of a UNet row = d/dε score with the row nudged at step k only; the steps sum to the estimate,
    are 0 outside a step window, and text rows have none (the cancellation evidence of screen validation)."""
    model, fn, corr, pos = setup
    rows = _fd_rows(pos)
    res = _screen(setup, rows, method="atp")
    assert res.row_steps[0] is None and res.row_steps[1] is None
    full, windowed = res.row_steps[2], res.row_steps[3]
    assert full.shape == (CFG.num_inference_steps,) and np.count_nonzero(full) == CFG.num_inference_steps
    assert windowed[0] == 0 and windowed[3] == 0 and np.count_nonzero(windowed[1:3]) == 2
    for steps, est in ((full, res.estimates[2]), (windowed, res.estimates[3])):
        assert steps.sum() == pytest.approx(est, rel=1e-9, abs=1e-12)
    eps, k = 1e-4, 2
    one_step = Restore(rows[2].restore.sites, window=(k, k + 1))
    fd = float((fn(_nudged_images(model, corr, one_step, eps), [PROMPT.text])
                - fn(_nudged_images(model, corr, one_step, -eps), [PROMPT.text])).sum()) / (2 * eps)
    assert abs(fd) > 1e-7, "vacuous case"
    assert full[k] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_nudge_at_one_is_exact_patching_with_both_cfg_halves(setup):
    """The finite-difference reference at ε=1 is exactly patched_generate's restoration."""
    model, fn, corr, pos = setup
    rows = _fd_rows(pos)
    exact = patched_generate(model, PROMPT.text, [r.restore for r in rows], corr, torch.Generator().manual_seed(0), CFG)
    for i, row in enumerate(rows):
        assert torch.allclose(_nudged_images(model, corr, row.restore, 1.0)[0], exact[1 + i], atol=1e-10), row.site


def test_clean_and_corrupted_scores_match_exact_patching(setup):
    model, fn, corr, pos = setup
    res = _screen(setup, _fd_rows(pos)[:1], method="atp")
    imgs = patched_generate(model, PROMPT.text, [Restore()], corr, torch.Generator().manual_seed(0), CFG)
    ref = fn(imgs, [PROMPT.text] * 2)
    assert res.clean_score == pytest.approx(float(ref[0]), abs=1e-9)
    assert res.corrupted_score == pytest.approx(float(ref[1]), abs=1e-9)
    assert res.effects[0] == pytest.approx(res.estimates[0] / (res.clean_score - res.corrupted_score))


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_checkpointing_does_not_change_estimates(setup, method):
    rows = _fd_rows(setup[3])
    on = _screen(setup, rows, method=method, ig_steps=2, checkpoint=True)
    off = _screen(setup, rows, method=method, ig_steps=2, checkpoint=False)
    assert on.checkpoint and not off.checkpoint
    assert torch.allclose(torch.tensor(on.estimates), torch.tensor(off.estimates), rtol=1e-9, atol=1e-12)
    assert hook_count(setup[0].modules) == 0


def test_checkpointed_screen_holds_less_and_leaves_the_unet_setting(setup):
    """Checkpointing (each step, and diffusers' blocks inside a step's recomputation) lowers the
    screen's live tensor peak, and the UNet's own checkpointing flag is left as it was."""
    from diffloc.bench_memory import LiveTensorPeak

    rows, unet = _fd_rows(setup[3]), setup[0].denoiser
    peaks = {}
    for ckpt in (True, False):
        mode = LiveTensorPeak()
        with mode:
            _screen(setup, rows, method="atp", checkpoint=ckpt)
        peaks[ckpt] = mode.peak
        assert not unet.is_gradient_checkpointing
    assert peaks[True] < peaks[False] / 2, peaks


def test_ig_is_complete_on_the_input_cut_and_beats_atp(setup):
    """Restoring every token embedding is a complete cut on IG's straight path: exact effect 1."""
    model, fn, corr, _ = setup
    row = _row(("text_encoder:embeddings.token_embedding",))
    exact = patched_generate(model, PROMPT.text, [Restore(), row.restore], corr, torch.Generator().manual_seed(0), CFG)
    s = fn(exact, [PROMPT.text] * 3)
    exact_effect = float((s[2] - s[1]) / (s[0] - s[1]))
    assert exact_effect == pytest.approx(1.0, abs=1e-9)  # the cut restores the clean image
    atp = _screen(setup, [row], method="atp").effects[0]
    coarse = _screen(setup, [row], method="ig", ig_steps=4).effects[0]
    ig = _screen(setup, [row], method="ig", ig_steps=32)
    # completeness: Σ Δa·(mean gradient on the path) ≈ clean − corrupted; the quadrature error
    # shrinks with the points (≈1/N here: the decode's clamp and the score's max(·, 0) have kinks)
    assert ig.estimates[0] == pytest.approx(ig.clean_score - ig.corrupted_score, rel=0.03)
    assert abs(ig.effects[0] - exact_effect) < abs(coarse - exact_effect) < abs(atp - exact_effect)
    assert abs(ig.effects[0] - exact_effect) < abs(atp - exact_effect) / 10


def test_clip_score_fn_matches_scorer_and_has_gradient():
    scorer = tiny_scorer()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    texts = ["a red circle", "two blue squares"]
    ours = clip_score_fn(scorer)(images, texts)
    assert torch.allclose(ours.detach(), scorer.score(images.detach(), texts), atol=1e-4)
    ours.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("kw, message", [
    ({"method": "ig", "ig_steps": 0}, "ig_steps must be an integer >= 1, got 0"),
    ({"method": "ig", "ig_steps": 2.5}, "ig_steps must be an integer >= 1, got 2.5"),
])
def test_bad_arguments_raise_one_line_input_errors(setup, kw, message):
    with pytest.raises(DifflocInputError) as err:
        _screen(setup, _fd_rows(setup[3])[:1], **kw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_non_differentiable_scorer_is_an_input_error(setup):
    model, _, corr, pos = setup
    scorer = tiny_scorer()
    frozen = lambda images, texts: scorer.score(images.float(), texts).detach()  # noqa: E731  (no graph to the images)
    with pytest.raises(DifflocInputError) as err:
        screen(model, PROMPT, _fd_rows(pos)[:1], corr, torch.Generator().manual_seed(0), CFG, frozen)
    assert "not differentiable" in str(err.value) and "\n" not in str(err.value)
    assert hook_count(model.modules) == 0


def test_checkpointed_sampler_recomputes_each_step_with_its_own_hooks(setup):
    """A step-dependent hook under gradient checkpointing gives the same gradient as without."""
    model = setup[0]
    lat = initial_latents(model, torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (True, False):
        w, clock = torch.ones((), dtype=torch.float64, requires_grad=True), {"i": 0}
        scale = lambda mod, inp, out: out * (1 + 0.3 * clock["i"] * w) ** 2  # noqa: E731  out [2, C, h, w]
        with torch.enable_grad():
            img = hooked_generate(model, PROMPT.text, lat, CFG, step_hooks={Site.parse("unet:mid_block.resnets.0"): scale},
                                  clock=clock, checkpoint=ckpt)
            img.pow(2).sum().backward()
        grads.append(w.grad)
    assert grads[0] != 0 and torch.allclose(grads[0], grads[1], rtol=1e-10)
    assert hook_count(model.modules) == 0

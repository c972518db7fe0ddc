"""Gradient screens: every site's indirect effect from a few forward and backward passes.

Usage::

    score_fn = clip_score_fn(scorer)                        # scorer.score: differentiable max(100·cos, 0)
    corr = make_corruption(model, prompt.positions(model.tokenizer), torch.Generator().manual_seed(1))
    rows = text_rows(model, prompt, tcfg) + denoiser_rows(model, tcfg, cfg.num_inference_steps)
    res = screen(model, prompt, rows, corr, torch.Generator().manual_seed(0), cfg, score_fn, ig_steps=8)
    res.effects          # [len(rows)] on exact patching's scale (restored − corrupted)/(clean − corrupted)

Exact causal tracing generates one image per restored row. A screen estimates all rows at once
from the first-order term of restoring a site: ``(a_clean − a_corrupted) · ∂score/∂a``.

- ``ig_steps=None`` (AtP, method ``atp``): the gradient is taken at the corrupted run: one clean forward (no grad, records every
  site) and one corrupted forward + backward.
- ``ig_steps=N`` (integrated gradients, method ``ig``): the gradient is averaged over ``N`` points on the straight path from the
  corrupted input to the clean one (the corruption noise scaled by ``1 − α``), EAP-IG style;
  every site's gradient comes from the same ``ig_steps`` backward passes. The points are the
  midpoints ``α = (k + ½)/N``: with N gradient evaluations the midpoint rule has half the
  error of a trapezoid over N intervals (and a quarter of one over the N − 1 intervals that N
  trapezoid points span), it needs no evaluation at α = 1 where a saturated score has no
  gradient, and N = 1 is a usable one-point rule (the trapezoid needs two).

Gradients flow through every denoising step, the scheduler, classifier-free guidance, the
decode and the score. They are caught on zero-valued leaf *probes* added to each site's output
by a hook (``tracing.hooks.hooks``, so any site spelling the hooks resolve works, heads
included). Each probe's gradient is reduced to ``Δa · grad`` (per token for text sites, per
step for UNet sites) as soon as it is accumulated, so only ``Δa`` is kept for every step.
With ``checkpoint=True`` (default) each UNet call is recomputed in the backward pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import DifflocInputError
from .prompts import MarkedPrompt
from .sampler import Corruption, SamplerConfig, _check_rows, hooked_generate, initial_latents
from .sites import Site
from .trace_config import RowSpec

ScoreFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class ScreenResult:
    """Estimated indirect effects of the rows of one prompt × seed × noise sample.

    ``estimates[i]``: the estimated score change ``restored − corrupted`` of ``rows[i]``;
    ``effects[i]``: the same over ``clean − corrupted`` (NaN if those are equal).
    ``site_values[str(site)]``: ``Δa · grad`` per token [77] (text sites) or per step [S] (UNet).
    ``estimates_abs[i]``: the same sum as ``estimates[i]`` over absolute contributions (cancellation).
    ``seconds``: wall time of the clean run, the corrupted run, the gradient runs, and in total.
    """

    rows: tuple[RowSpec, ...]
    estimates: np.ndarray
    effects: np.ndarray
    clean_score: float
    corrupted_score: float
    seconds: dict
    ig_steps: int | None = None             # None: AtP (gradient at the corrupted run)
    checkpoint: bool = True
    site_values: dict = field(default_factory=dict, repr=False)
    estimates_abs: np.ndarray | None = None  # Σ |per-token or per-step contribution| of each row
    row_steps: tuple = ()  # per row: its contributions per denoising step [S] (denoiser rows), None (text rows)


def clip_score_fn(scorer) -> ScoreFn:
    """The differentiable CLIP score ``max(100·cos, 0)`` of a :class:`~tracing.scoring.ClipScorer`: its ``score``.

    Usage::

        fn = clip_score_fn(load_scorer("toy"))
        s = fn(images, ["a red circle"] * len(images))      # [B], with a graph back to images
    """
    return scorer.score


class _Taps:
    """Hooks at every screened site: record clean values, turn them into Δa, add probes, reduce grads.

    Keys are ``(site, step)``; text sites use step -1 (the text encoder runs once per image).
    ``record``: "clean" stores the output, "delta" subtracts it from the stored clean value,
    None records nothing (as in the backward pass's recomputation). ``probing`` adds probes.
    """

    def __init__(self, sites: Sequence[Site], n_tokens: int, n_steps: int, clock: dict, device: torch.device | str = "cpu"):
        self.sites = list(sites)
        self.clock = clock
        self.record: str | None = None
        self.probing = False
        self.delta: dict[tuple[Site, int], torch.Tensor] = {}
        self.probes: dict[tuple[Site, int], torch.Tensor] = {}
        # sums live on the model's device: no host sync per probe
        self.values = {s: torch.zeros(n_tokens if _is_text(s) else n_steps, dtype=torch.float64, device=device)
                       for s in self.sites}

    def hooks(self) -> tuple[dict, dict]:
        """(text hooks, denoiser hooks) for :func:`tracing.sampler.hooked_generate`."""
        text = {s: self._fn(s) for s in self.sites if _is_text(s)}
        denoiser = {s: self._fn(s) for s in self.sites if not _is_text(s)}
        return text, denoiser

    def _fn(self, site: Site):
        text = _is_text(site)

        def fn(module, inputs, output):  # output: text [1, 77, ...]; UNet [2 (uncond, cond) or 1, ...]
            key = (site, -1 if text else self.clock["i"])
            if self.record == "clean":
                self.delta[key] = output.detach().clone()
            elif self.record == "delta":
                self.delta[key].sub_(output.detach())  # Δa = clean − corrupted, in place
            if not self.probing:
                return None
            if key not in self.probes:
                probe = torch.zeros((), dtype=output.dtype, device=output.device).expand(output.shape).requires_grad_()
                probe.register_post_accumulate_grad_hook(self._reduce(key))
                self.probes[key] = probe
            return output + self.probes[key]

        return fn

    def _reduce(self, key: tuple[Site, int]):
        site, step = key

        def fn(probe: torch.Tensor) -> None:
            prod = (self.delta[key] * probe.grad).double()
            if step < 0:
                per_token = prod.flatten(2).sum(-1).sum(0)  # [T]: per token, rows summed (T: 77 for CLIP, 256 for SD3's T5)
                if self.values[site].shape != per_token.shape:  # an encoder with its own length: sized at its first gradient
                    self.values[site] = torch.zeros_like(per_token)
                self.values[site] += per_token
            else:
                self.values[site][step] += prod.sum()
            probe.grad = None  # keep no gradient around: only Δa is stored per step

        return fn


def _is_text(site: Site) -> bool:
    return site.component.startswith("text_encoder")


def _row_estimate(row: RowSpec, values: dict[Site, torch.Tensor]) -> tuple[float, float]:
    """(Σ contributions, Σ |contributions|) of a row's sites over its tokens (text) or steps (UNet).

    The second is the estimate had no token or step cancelled another: their ratio shows
    cancellation, one way a first-order screen misses a real effect.
    """
    total = absolute = 0.0
    for site in row.restore.sites:
        v = values[site]
        if _is_text(site):
            part = v if row.restore.tokens is None else v[list(row.restore.tokens)]
        else:
            a, b = row.restore.window or (0, len(v))
            part = v[a:b]
        total += float(part.sum())
        absolute += float(part.abs().sum())
    return total, absolute


def _row_steps(row: RowSpec, values: dict[Site, torch.Tensor]) -> np.ndarray | None:
    """A denoiser row's contributions per denoising step [S] (zero outside its step window); None for a text row."""
    if any(_is_text(site) for site in row.restore.sites):
        return None
    out = sum(values[site].double() for site in row.restore.sites).numpy().copy()
    a, b = row.restore.window or (0, len(out))
    out[:a], out[b:] = 0.0, 0.0
    return out


def _check_args(ig_steps: int | None) -> None:
    if ig_steps is None:
        return
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise DifflocInputError(f"ig_steps must be an integer >= 1, got {ig_steps!r}")


def _first_score(score_fn: ScoreFn, images: torch.Tensor, text: str) -> float:
    """Score the clean image, checking on the way that ``score_fn`` is differentiable."""
    x = images.detach().clone().requires_grad_()
    with torch.enable_grad():
        s = score_fn(x, [text] * len(x))
    if not isinstance(s, torch.Tensor) or s.shape != (len(x),):
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise DifflocInputError(f"score function returned {got}; allowed: a tensor [B] of one score per image")
    if not s.requires_grad:
        raise DifflocInputError("score function is not differentiable (its output has no grad_fn); "
                                "allowed: a differentiable scorer such as tracing.attribution.clip_score_fn(scorer)")
    return float(s.sum())


def screen(model, prompt: MarkedPrompt, rows: Sequence[RowSpec], corruption: Corruption, generator: torch.Generator,
           cfg: SamplerConfig, score_fn: ScoreFn, ig_steps: int | None = None, checkpoint: bool = True,
           latents: torch.Tensor | None = None) -> ScreenResult:
    """Estimate the indirect effect of every row (see the module docstring).

    Usage::

        res = screen(model, prompt, rows, corr, torch.Generator().manual_seed(0), cfg, clip_score_fn(scorer))

    ``ig_steps``: None takes the gradient at the corrupted run (AtP); N averages it over N points
    of the path from corrupted to clean (IG). ``generator`` draws the initial noise exactly as :func:`~tracing.sampler.patched_generate`
    does (or pass ``latents`` [1, C, h, w]), so estimates compare row by row with exact patching.
    """
    _check_args(ig_steps)
    _check_rows(model, [r.restore for r in rows], cfg)
    t0 = time.perf_counter()
    latents = initial_latents(model, generator) if latents is None else latents[:1]
    sites = list(dict.fromkeys(s for r in rows for s in r.restore.sites))
    clock = {"i": 0}
    taps = _Taps(sites, model.tokenizer.model_max_length, cfg.num_inference_steps, clock, model.device)
    text_hooks, unet_hooks = taps.hooks()
    text = prompt.text

    def run(scale: float | None, ckpt: bool = False) -> torch.Tensor:
        return hooked_generate(model, text, latents, cfg, None if scale is None else corruption, 1.0 if scale is None else scale,
                               text_hooks, unet_hooks, clock, checkpoint=ckpt)

    def backward(scale: float) -> float:
        with torch.enable_grad():
            s = score_fn(run(scale, checkpoint), [text])
            taps.record = None  # the recomputation in backward must not record again
            s.sum().backward()
        return float(s.detach().sum())

    taps.record = "clean"
    with torch.no_grad():
        clean = _first_score(score_fn, run(None), text)
    t1 = time.perf_counter()
    taps.record = "delta"
    if ig_steps is None:  # AtP: the corrupted run is the gradient run
        taps.probing = True
        corrupted = backward(1.0)
        t2 = t3 = time.perf_counter()
    else:
        with torch.no_grad():
            corrupted = float(score_fn(run(1.0), [text]).sum())
        t2 = time.perf_counter()
        taps.record, taps.probing = None, True
        for k in range(ig_steps):
            backward(1.0 - (k + 0.5) / ig_steps)  # midpoint rule on α ∈ [0, 1]
        for v in taps.values.values():
            v /= ig_steps
        t3 = time.perf_counter()
    taps.values = {s: v.cpu() for s, v in taps.values.items()}
    both = np.array([_row_estimate(r, taps.values) for r in rows], dtype=float).reshape(-1, 2)
    estimates, absolute = both[:, 0], both[:, 1]
    denom = clean - corrupted
    effects = estimates / denom if denom != 0 else np.full(len(rows), np.nan)
    seconds = {"clean": t1 - t0, "corrupted": t2 - t1, "gradient": t3 - t1 if ig_steps is None else t3 - t2, "total": t3 - t0}
    return ScreenResult(tuple(rows), estimates, effects, clean, corrupted, seconds, ig_steps, checkpoint,
                        {str(s): v.numpy() for s, v in taps.values.items()}, absolute,
                        tuple(_row_steps(r, taps.values) for r in rows))

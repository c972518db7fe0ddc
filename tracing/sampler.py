"""The sampling loop: plain generation, and patched generation for causal tracing.

Usage::

    cfg = SamplerConfig(num_inference_steps=20, guidance_scale=2.0)
    images = generate(model, ["a red circle"], torch.Generator().manual_seed(0), cfg)   # [1,3,H,W]

    corruption = make_corruption(model, word_positions(model, MarkedPrompt.parse("a [red] circle")), g_noise)
    corruption = make_corruption(model, [2], g_noise)   # or one list of positions for every text encoder
    rows = [Restore(), Restore((Site.parse("unet:mid_block.resnets.0"),))]
    images = patched_generate(model, "a red circle", rows, corruption, g_latents, cfg)
    # images[0] clean, images[1] corrupted (restores nothing), images[2] restores mid_block.resnets.0

All rows share one initial noise. Row 0 is the clean run; every other row has the same
corruption (Gaussian noise on each text encoder's token embeddings at that encoder's positions
of the marked word, :mod:`tracing.encoders`) and copies the clean
row's output back in at its own sites: text-encoder sites at chosen token positions,
UNet sites at every denoising step or inside a step window, as ROME's ``trace_with_patch``
does. The clean run is simply row 0 of the batch, so no activation cache is needed and one
batched call serves many restorations.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.utils.checkpoint

from .families import Conditioning
from .hooks import hooks
from .models import Model
from .sites import Site


class NonFiniteError(RuntimeError):
    """NaN or inf appeared in an activation or image; the run stops instead of writing garbage."""


@dataclass(frozen=True)
class SamplerConfig:
    """Denoising steps and classifier-free guidance (``guidance_scale <= 1`` disables CFG)."""

    num_inference_steps: int = 20
    guidance_scale: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {self.num_inference_steps!r}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale!r}")

    @classmethod
    def for_model(cls, model: Model, **overrides) -> "SamplerConfig":
        base = {k: model.defaults[k] for k in ("num_inference_steps", "guidance_scale") if k in model.defaults}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @property
    def guided(self) -> bool:
        """Classifier-free guidance on (scale > 1, as diffusers' UNet pipelines; a family may decide otherwise)."""
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class Restore:
    """What one corrupted row copies back from the clean row.

    ``tokens``: token positions restored at text-encoder sites (None: all 77).
    ``window``: denoising steps ``[start, end)`` in which UNet sites are restored (None: all).
    """

    sites: tuple[Site, ...] = ()
    tokens: tuple[int, ...] | None = None
    window: tuple[int, int] | None = None


@dataclass(frozen=True)
class Corruption:
    """Noise added to each corrupted text encoder's token embeddings, at that encoder's own positions.

    ``noise[c]`` [P_c, D_c] is added at positions ``at(c)`` of encoder ``c``: ``per_encoder[c]``
    where given, else ``positions``. ``positions`` are the first corrupted encoder's (tokenizers
    split words differently: SD3's T5 has no BOS and its own pieces, see :mod:`tracing.encoders`).
    An encoder without a ``noise`` entry is not corrupted.
    """

    positions: tuple[int, ...]
    noise: dict = field(default_factory=dict)  # component -> Tensor [P_c, D_c]
    per_encoder: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # component -> its positions (absent: positions)

    def at(self, component: str) -> tuple[int, ...]:
        """The token positions the noise of ``component`` lands on."""
        return tuple(self.per_encoder.get(component, self.positions))


def make_corruption(model: Model, positions: Sequence[int] | Mapping[str, Sequence[int]], generator: torch.Generator,
                    scale: float = 3.0) -> Corruption:
    """Gaussian noise of std ``scale × σ_c`` (σ_c: encoder ``c``'s token-embedding std) at each encoder's positions.

    ``positions``: {component: positions} (:func:`tracing.encoders.word_positions`; only the encoders
    named are corrupted), or one sequence used in every text encoder. Noise is drawn per encoder in
    the model's encoder order, ``[P_c, D_c]`` each.
    """
    per = dict(positions) if isinstance(positions, Mapping) else {c: positions for c in model.text_components}
    if not per or set(per) - set(model.text_components):
        raise ValueError(f"corrupted encoders {sorted(per)} invalid; allowed: a non-empty subset of {', '.join(model.text_components)}")
    noise, at = {}, {}
    for comp in (c for c in model.text_components if c in per):
        pos, n_tokens = [int(p) for p in per[comp]], _n_tokens(model, comp)
        if not pos or any(not 0 <= p < n_tokens for p in pos):
            where = "" if not isinstance(positions, Mapping) else f" in {comp}"
            raise ValueError(f"token positions {list(per[comp])}{where} invalid; allowed: a non-empty subset of 0..{n_tokens - 1}")
        dim = model.modules[comp].get_input_embeddings().embedding_dim
        sample = torch.randn(len(pos), dim, generator=generator)  # [P_c, D_c]
        noise[comp], at[comp] = sample * scale * model.embed_std(comp), tuple(pos)
    return Corruption(next(iter(at.values())), noise, at)


def initial_latents(model: Model, generator: torch.Generator, batch: int = 1, size: int | None = None) -> torch.Tensor:
    """Initial noise as the family's diffusers pipeline draws it (before init_noise_sigma), e.g. [B, C, h, w]."""
    shape = model.family.latent_shape(model, batch, size)
    return torch.randn(shape, generator=generator, dtype=model.dtype, device=generator.device).to(model.device)


def encode(model: Model, texts: Sequence[str], text_hooks: dict | None = None, rows: int | None = None) -> Conditioning:
    """The conditioning the family's pipeline builds from ``texts`` (one prompt may be repeated
    over ``rows``), with ``text_hooks`` active in the text encoders."""
    ids = model.family.tokenize(model, list(texts))
    if rows is not None:
        ids = {c: v.expand(rows, -1) for c, v in ids.items()}
    return model.family.encode(model, ids, text_hooks or {})


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, tokens: torch.Tensor | None = None):
    """Hook body: row ``dst[i]`` takes the value of row ``src[i]`` (at ``tokens[i]`` if given)."""

    def fn(module, inputs, output):
        new = output.clone()
        if tokens is None:
            new[dst] = output[src]  # [n, ...]
        else:
            new[dst, tokens] = output[src, tokens]  # [n, D] at (row, token) pairs
        return new

    return fn


def _sample(model: Model, cond: Conditioning, latents: torch.Tensor, cfg: SamplerConfig,
            patches: dict | None = None, step_hooks: dict | None = None, clock: dict | None = None,
            checkpoint: bool = False) -> torch.Tensor:
    """Denoise ``latents`` [R, C, h, w] under ``cond`` (R rows); returns images [R, 3, H, W] in [0, 1].

    The one loop behind every public sampler function. ``patches`` restore row 0 into rows at
    denoiser sites; ``step_hooks`` are extra hook functions read at each denoiser call, which
    find the current step in ``clock["i"]``. Gradients flow when the caller enables them (the
    public functions run under ``torch.no_grad``); ``checkpoint`` recomputes each denoiser call
    in the backward pass (reentrant ``torch.utils.checkpoint``) instead of keeping its activations.
    """
    family = model.family
    R = cond.embeds.shape[0]
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    family.prepare_scheduler(scheduler, cfg.num_inference_steps, model, latents)
    if hasattr(scheduler, "init_noise_sigma"):  # flow-matching schedulers start at unit noise and have none
        latents = latents * scheduler.init_noise_sigma
    guided = family.guidance(model, cfg.guidance_scale)
    embeds = family.uncond(model, R).cat(cond) if guided else cond  # [2R, ...]: uncond rows, then cond rows
    if hasattr(family, "with_guidance"):  # FLUX.1-dev: the distilled guidance scale rides in the conditioning
        embeds = family.with_guidance(model, embeds, cfg.guidance_scale)
    step = clock if clock is not None else {"i": 0}
    fns: dict = {site: [_windowed(rows, R, guided, step)] for site, rows in (patches or {}).items()}
    for site, fn in (step_hooks or {}).items():
        fns.setdefault(site, []).extend(fn if isinstance(fn, (list, tuple)) else [fn])

    recompute = checkpoint and torch.is_grad_enabled()
    if recompute and not latents.requires_grad:
        latents = latents.detach().requires_grad_()  # a reentrant checkpoint passes gradients only when an input needs them

    # The conditioning's tensors enter a checkpointed step as explicit inputs: a reentrant
    # checkpoint passes gradients only to its inputs, and the text encoders' graph (the screens'
    # probes sit there) must be walked once per step's backward, not freed by the first.
    names = [k for k in ("embeds", "pooled", "mask") if getattr(embeds, k) is not None]
    extra_keys = list(embeds.extra)

    # Head probes replace an attention's output-projection input by a concatenation of slices; diffusers' per-block
    # checkpointing would recompute the block after these hooks have exited, without that concatenation (under CFG
    # a joint attention's input is a strided slice, and the saved tensors then differ): no block checkpointing there.
    heads = any((Site.parse(k) if isinstance(k, str) else k).head is not None for k in fns)

    def guided_eps(x: torch.Tensor, i: int, t: torch.Tensor, *flat: torch.Tensor) -> torch.Tensor:
        cond = embeds.with_(**dict(zip(names, flat)), extra=dict(zip(extra_keys, flat[len(names):]))) if flat else embeds
        step["i"] = i  # set here, so that a checkpoint's recomputation sees its own step
        # under checkpointing the hooks live inside the step: the backward pass's recomputation
        # (after this function has returned) must see the same hooks as the forward pass
        with hooks(model.modules, fns) if recompute else nullcontext(), _block_checkpointing(model.denoiser, recompute and not heads):
            eps = family.denoise(model, x, t, cond, i)  # [2R or R, C, h, w]
        if guided:
            e_un, e_text = eps.chunk(2)
            eps = e_un + cfg.guidance_scale * (e_text - e_un)
        return eps

    with nullcontext() if recompute else hooks(model.modules, fns):
        for i, t in enumerate(scheduler.timesteps):
            x = torch.cat([latents] * 2) if guided else latents  # [2R, C, h, w]
            x = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            if recompute:  # reentrant: the forward runs without a graph (non-reentrant keeps every step's nodes: 3× the RSS)
                flat = [getattr(embeds, k) for k in names] + [embeds.extra[k] for k in extra_keys]
                eps = torch.utils.checkpoint.checkpoint(guided_eps, x, i, t, *flat, use_reentrant=True)
            else:
                eps = guided_eps(x, i, t)
            if not torch.isfinite(eps).all():
                raise NonFiniteError(f"non-finite denoiser output at denoising step {i}; try --dtype float32")
            latents = scheduler.step(eps, t, latents).prev_sample
    return _decode(model, latents)


@contextmanager
def _block_checkpointing(denoiser, on: bool):
    """diffusers' own per-block gradient checkpointing, on only while a checkpointed step is
    recomputed with gradients (so a step's backward holds one block's graph, not the whole UNet's:
    the toy screen's live peak fell from 30.5 to 12.0 MB). Restores the model's setting after."""
    if not (on and torch.is_grad_enabled() and getattr(denoiser, "_supports_gradient_checkpointing", False)) \
            or denoiser.is_gradient_checkpointing:
        yield
        return
    denoiser.enable_gradient_checkpointing()
    try:
        yield
    finally:
        denoiser.disable_gradient_checkpointing()


def _windowed(rows: list[tuple[int, tuple[int, int] | None]], R: int, guided: bool, step: dict):
    """Denoiser hook restoring row 0 into each (row, window) whose window holds the current step."""
    cache: dict[int, object] = {}

    def fn(module, inputs, output):
        i = step["i"]
        if i not in cache:
            active = [r for r, w in rows if w is None or w[0] <= i < w[1]]
            if not active:
                cache[i] = None
            else:
                dst = torch.tensor(active + ([R + r for r in active] if guided else []), device=output.device)
                src = torch.tensor([0] * len(active) + ([R] * len(active) if guided else []), device=output.device)
                cache[i] = _copy_rows(dst, src)
        body = cache[i]
        return None if body is None else body(module, inputs, output)

    return fn


@torch.no_grad()
def encode_images(model: Model, images: torch.Tensor) -> torch.Tensor:
    """``decode``'s inverse: float images [B, 3, H, W] in [0, 1] to what the denoiser samples (the VAE's
    posterior mean, shifted and scaled as ``decode`` undoes it; pixels in [-1, 1] for pixel-space models)."""
    x = images.to(model.device) * 2 - 1
    if model.vae is None:
        return x
    vae = model.vae
    z = vae.encode(x.to(vae.dtype)).latent_dist.mean
    if getattr(vae.config, "shift_factor", None) is not None:
        z = z - vae.config.shift_factor
    return z * vae.config.scaling_factor


@torch.no_grad()
def decode(model: Model, latents: torch.Tensor) -> torch.Tensor:
    """Latents (or pixels, for pixel-space models) to float images [B, 3, H, W] in [0, 1]."""
    return _decode(model, latents)


def _decode(model: Model, latents: torch.Tensor) -> torch.Tensor:
    if model.vae is not None:
        vae = model.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None:  # SD3 / FLUX VAEs
            latents = latents + vae.config.shift_factor
        x = vae.decode(latents).sample
    else:
        x = latents
    images = (x.to(torch.promote_types(x.dtype, torch.float32)) / 2 + 0.5).clamp(0, 1)  # float32, or float64 models keep it
    if not torch.isfinite(images).all():
        raise NonFiniteError("non-finite values in decoded images; try --dtype float32")
    return images


@torch.no_grad()
def generate(model: Model, prompts: Sequence[str], generator: torch.Generator | None = None, cfg: SamplerConfig | None = None, latents: torch.Tensor | None = None) -> torch.Tensor:
    """Plain batched text-to-image generation: images [B, 3, H, W] in [0, 1]."""
    cfg = cfg or SamplerConfig.for_model(model)
    if latents is None:
        if generator is None:
            raise ValueError("generate needs a torch.Generator or explicit latents")
        latents = initial_latents(model, generator, batch=len(prompts))
    return _sample(model, encode(model, prompts), latents, cfg)


def embedding_site(model: Model, component: str) -> Site:
    """The site of a text component's token-embedding table (its ``get_input_embeddings()``; for a
    T5 encoder the ``encoder.embed_tokens`` module it really calls, which shares ``shared``'s weight)."""
    table = model.modules[component].get_input_embeddings()
    table = getattr(getattr(model.modules[component], "encoder", None), "embed_tokens", None) or table
    return Site(component, next(n for n, m in model.modules[component].named_modules() if m is table))


def corruption_hooks(model: Model, corruption: Corruption, first_row: int = 0, scale: float = 1.0) -> dict:
    """Text hooks adding ``scale ×`` the corruption noise to rows ``first_row..`` of each corrupted
    encoder's token embeddings, at that encoder's positions."""
    out: dict = {}
    for comp, noise in corruption.noise.items():

        def corrupt(module, inputs, output, noise=noise, pos=torch.tensor(corruption.at(comp))):
            new = output.clone()  # [R, L_c, D_c] token embeddings (L_c: 77 for CLIP, the family's T5 length)
            new[first_row:, pos.to(output.device)] += scale * noise.to(output.device, output.dtype)
            return new

        out[embedding_site(model, comp)] = [corrupt]
    return out


def hooked_generate(model: Model, prompt: str, latents: torch.Tensor, cfg: SamplerConfig, corruption: Corruption | None = None,
                    scale: float = 1.0, text_hooks: dict | None = None, step_hooks: dict | None = None,
                    clock: dict | None = None, checkpoint: bool = False) -> torch.Tensor:
    """One prompt, optionally corrupted (noise × ``scale``), with extra hooks: images [B, 3, H, W].

    Usage::

        clock = {"i": 0}
        with torch.enable_grad():
            img = hooked_generate(model, "a red circle", lat, cfg, corr, step_hooks={site: fn}, clock=clock, checkpoint=True)
        score_fn(img, ["a red circle"]).sum().backward()

    Not under ``torch.no_grad``: gradients flow from the image back to any tensor a hook adds
    (the attribution screens add zero-valued probes). Text hooks run after the corruption;
    denoiser hooks read the denoising step from ``clock["i"]``. ``latents`` [B, C, h, w].
    """
    fns = corruption_hooks(model, corruption, 0, scale) if corruption is not None else {}
    for site, fn in (text_hooks or {}).items():
        fns.setdefault(site, []).extend(fn if isinstance(fn, (list, tuple)) else [fn])
    cond = encode(model, [prompt], fns, rows=latents.shape[0])
    return _sample(model, cond, latents, cfg, step_hooks=step_hooks, clock=clock, checkpoint=checkpoint)


def _n_tokens(model: Model, component: str) -> int:
    """Tokens per prompt in ``component`` (a DiT family pads T5 to its own length, e.g. SD3's 256)."""
    return model.family.text_length(model, component)


def _check_rows(model: Model, rows: Sequence[Restore], cfg: SamplerConfig) -> None:
    for row in rows:
        for site in row.sites:
            model.module(site)  # raises SiteError naming the site
        comps = {s.component for s in row.sites if s.is_text} or {model.text_components[0]}
        for n_tok in sorted({_n_tokens(model, c) for c in comps}):
            if row.tokens is not None and any(not 0 <= t < n_tok for t in row.tokens):
                raise ValueError(f"token index in {list(row.tokens)} outside the prompt; allowed 0..{n_tok - 1}")
        if row.window is not None:
            a, b = row.window
            if not 0 <= a < b <= cfg.num_inference_steps:
                raise ValueError(f"step window {row.window} outside the step range; allowed [a, b) with 0 <= a < b <= {cfg.num_inference_steps}")


@torch.no_grad()
def patched_embeddings(model: Model, prompt: str, rows: Sequence[Restore], corruption: Corruption) -> Conditioning:
    """The conditioning (1 + len(rows) rows) that :func:`patched_generate` hands the denoiser:
    row 0 clean, then one corrupted row per :class:`Restore` with its text-encoder sites
    restored from row 0. No denoiser runs."""
    R = 1 + len(rows)
    text_hooks = corruption_hooks(model, corruption, first_row=1)
    text_pairs: dict[Site, list[tuple[int, int]]] = {}
    for r, row in enumerate(rows, start=1):
        for site in row.sites:
            if site.is_text:
                toks = row.tokens if row.tokens is not None else range(_n_tokens(model, site.component))
                text_pairs.setdefault(site, []).extend((r, t) for t in toks)
    for site, pairs in text_pairs.items():
        dst = torch.tensor([r for r, _ in pairs])
        tok = torch.tensor([t for _, t in pairs])
        text_hooks.setdefault(site, []).append(_copy_rows(dst, torch.zeros_like(dst), tok))
    return encode(model, [prompt], text_hooks, rows=R)


@torch.no_grad()
def patched_generate(model: Model, prompt: str, rows: Sequence[Restore], corruption: Corruption, generator: torch.Generator | None = None, cfg: SamplerConfig | None = None, latents: torch.Tensor | None = None) -> torch.Tensor:
    """Clean row 0 plus one corrupted row per :class:`Restore`: images [1 + len(rows), 3, H, W]."""
    cfg = cfg or SamplerConfig.for_model(model)
    _check_rows(model, rows, cfg)
    R = 1 + len(rows)
    if latents is None:
        latents = initial_latents(model, generator)
    latents = latents[:1].expand(R, -1, -1, -1)  # one initial noise shared by every row
    patches: dict[Site, list] = {}
    for r, row in enumerate(rows, start=1):
        for site in row.sites:
            if not site.is_text:
                patches.setdefault(site, []).append((r, row.window))
    return _sample(model, patched_embeddings(model, prompt, rows, corruption), latents, cfg, patches)

"""UNet cross-attention edit (TIME / UCE / LocoEdit form) on ``attn2.to_k`` and ``attn2.to_v``.

Usage::

    records = crossattn(model, "red", "blue", sites=["unet:mid_block.attentions.0.transformer_blocks.0.attn2"])
    records = crossattn(model, "red", "blue", preserve=["a green square", ...], lam=0.1)
    records = crossattn(model, "red", "blue", preserve=[...], preserve_mode="nullspace")  # preserved keys exactly
    records = crossattn_many(model, [("red", "blue", None, None), ("green", "yellow", None, None)])  # one solve

For each chosen cross-attention block, keys are the text encoder's output embeddings of the
source prompts (last subject token to the end) and values are the *unedited* projection of
the target prompts' embeddings at the paired positions, ``v = W0 e_target`` (pairs and
``targets`` as in :mod:`editing.quickfix`). Preserve
captions add keys whose values stay ``W0 k`` (UCE). Both ``to_k`` and ``to_v`` get
``W = (λW0 + Σ v kᵀ + Σ W0 k_p k_pᵀ)(λI + Σ k kᵀ + Σ k_p k_pᵀ)⁻¹`` (``preserve_mode="soft"``); with
``preserve_mode="nullspace"`` the update is confined to the complement of the preserve keys
(:func:`editing.closed_form.nullspace_update`), so their projections stay exactly ``W0 k_p``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from diffloc.tracing.sampler import encode
from diffloc.tracing.sites import Site

from .closed_form import NULLSPACE_RTOL, least_squares_update
from .protocol import Editor, TraceState, as_tuple, check_lam, check_prompts, option_kwargs, parse_site
from .quickfix import PAPER_TEMPLATES, aligned_positions, check_preserve_mode, check_rtol, prompt_pairs
from .records import EditError, EditRecord, apply_edit


@torch.no_grad()
def _embeddings(model, texts: Sequence[str]) -> torch.Tensor:
    embeds = encode(model, list(texts)).embeds
    return embeds.float()  # [B, 77, D]


def _attn2_sites(model, sites: Sequence[str | Site] | None) -> list[Site]:
    if not sites:
        return [s for s in model.sites.denoiser if s.kind == "attn2"]
    out = []
    for s in sites:
        s = Site.parse(s) if isinstance(s, str) else s
        if s.component != model.family.denoiser or s.kind != "attn2":
            raise EditError(f"crossattn edits UNet cross-attention blocks (...attn2); got {s}")
        model.module(s)
        out.append(s)
    return out


def crossattn_pairs(model, source: str, target: str, templates: Sequence[str] = PAPER_TEMPLATES,
                    targets: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Source keys K [n, D] and target embeddings T [n, D] at the paired positions."""
    src, tgt = prompt_pairs(source, target, templates, targets)
    e_src = _embeddings(model, [p.text for p in src])  # [B, 77, D]
    e_tgt = _embeddings(model, [p.text for p in tgt])
    ids_s = model.tokenize([p.text for p in src]).tolist()
    ids_t = model.tokenize([p.text for p in tgt]).tolist()
    K, T = [], []
    for i, (ps, pt) in enumerate(zip(src, tgt)):
        i_s, i_t = aligned_positions(ids_s[i], ids_t[i], ps.positions(model.tokenizer)[-1], pt.positions(model.tokenizer)[-1])
        K.append(e_src[i, i_s])
        T.append(e_tgt[i, i_t])
    return torch.cat(K), torch.cat(T)


def _solve(model, K: torch.Tensor, T: torch.Tensor, sites, lam: float, preserve: Sequence[str], preserve_mode: str = "soft",
           rtol: float = NULLSPACE_RTOL) -> dict:
    """New ``to_k`` / ``to_v`` weights of each attn2 site: values ``T W0ᵀ``, preserve keys kept."""
    check_preserve_mode(preserve_mode)
    Kp = _embeddings(model, list(preserve)).reshape(-1, K.shape[1]) if preserve else None  # [P*77, D]
    new = {}
    for site in _attn2_sites(model, sites):
        for proj in ("to_k", "to_v"):
            W0 = model.module(f"{site}.{proj}").weight.detach().float()  # [out, D]
            new[f"{site}.{proj}"] = least_squares_update(W0, K, T @ W0.T, lam=lam, K_preserve=Kp,
                                                            preserve_mode=preserve_mode, rtol=rtol)
    return new


def _rtol_info(preserve_mode: str, rtol: float) -> dict:
    return {"nullspace_rtol": rtol} if preserve_mode == "nullspace" else {}


def crossattn(model, source: str, target: str, sites: Sequence[str | Site] | None = None, lam: float = 0.1,
              preserve: Sequence[str] = (), templates: Sequence[str] = PAPER_TEMPLATES,
              targets: Sequence[str] | None = None, preserve_mode: str = "soft", nullspace_rtol: float = NULLSPACE_RTOL) -> list[EditRecord]:
    """Edit ``to_k``/``to_v`` of the given (default: all) attn2 sites so ``source`` attends like ``target``."""
    t0 = time.perf_counter()
    K, T = crossattn_pairs(model, source, target, templates, targets)
    new = _solve(model, K, T, sites, lam, preserve, preserve_mode, nullspace_rtol)
    info = {"source": source, "target": target, "lambda": lam, "templates": list(templates), "n_pairs": int(K.shape[0]),
            "n_preserve": len(preserve), "preserve_mode": preserve_mode, **_rtol_info(preserve_mode, nullspace_rtol), "seconds": round(time.perf_counter() - t0, 4)}
    if targets is not None:
        info["targets"] = list(targets)
    return apply_edit(model, "crossattn", new, info)


def crossattn_many(model, edits: Sequence[tuple[str, str, Sequence[str] | None, Sequence[str] | None]],
                   sites: Sequence[str | Site] | None = None, lam: float = 0.1, preserve: Sequence[str] = (),
                   preserve_mode: str = "soft", nullspace_rtol: float = NULLSPACE_RTOL) -> list[EditRecord]:
    """Many edits in one solve per projection (UCE's multi-concept form): keys and values stacked.

    Usage::

        crossattn_many(model, [("red", "blue", None, None), ("green", "yellow", None, None)], preserve=[...])
    """
    if not edits:
        raise EditError("no edits to apply; give at least one (source, target)")
    t0 = time.perf_counter()
    pairs = [crossattn_pairs(model, s, t, tpl or PAPER_TEMPLATES, tgt) for s, t, tpl, tgt in edits]
    K, T = torch.cat([k for k, _ in pairs]), torch.cat([t for _, t in pairs])
    new = _solve(model, K, T, sites, lam, preserve, preserve_mode, nullspace_rtol)
    listed = [{"source": s, "target": t, "n_pairs": int(k.shape[0])} for (s, t, _, _), (k, _) in zip(edits, pairs)]
    info = {"source": [e["source"] for e in listed], "target": [e["target"] for e in listed], "edits": listed,
            "n_edits": len(listed), "lambda": lam, "n_pairs": int(K.shape[0]), "n_preserve": len(preserve),
            "preserve_mode": preserve_mode, **_rtol_info(preserve_mode, nullspace_rtol), "seconds": round(time.perf_counter() - t0, 4)}
    return apply_edit(model, "crossattn", new, info)


# ---- the registered editor ------------------------------------------------------------------------

@dataclass(frozen=True)
class CrossattnOptions:
    """Denoiser cross-attention (TIME / UCE): attn2 sites (empty: all), λ, edit prompts, preserve captions."""

    sites: tuple[str, ...] = ()
    lam: float = 0.1
    templates: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    preserve: tuple[str, ...] = ()
    preserve_mode: str = "soft"                 # soft: UCE's term; nullspace: ΔW k_p = 0 exactly
    nullspace_rtol: float = NULLSPACE_RTOL      # nullspace: singular values below rtol·σ_max are free room

    def __post_init__(self) -> None:
        for name in ("sites", "templates", "targets", "preserve"):
            as_tuple(self, name)
        check_lam(self.lam)
        check_preserve_mode(self.preserve_mode)
        check_rtol(self.nullspace_rtol)
        check_prompts(self.templates, self.targets)
        for s in self.sites:
            if not STATE.matches(parse_site(s)):
                raise EditError(f"crossattn edits UNet cross-attention blocks (...attn2); got {s}")


def _run(model, source, target, options: CrossattnOptions):
    return crossattn(model, source, target, **option_kwargs(options))


def _run_many(model, edits, options: CrossattnOptions):
    return crossattn_many(model, [(s, t, o.templates, o.targets) for s, t, o in edits], sites=options.sites, lam=options.lam,
                          preserve=options.preserve, preserve_mode=options.preserve_mode, nullspace_rtol=options.nullspace_rtol)


def _site_of(model, opts: dict) -> str:
    sites = opts.get("sites") or [str(s) for s in model.sites.denoiser if s.kind == "attn2"]
    return str(sites[0])


STATE = TraceState(text=False, kind="attn2")
EDITOR = Editor("crossattn", STATE, CrossattnOptions, _run, _run_many, preserve_by_default=True, site_option="sites",
                site_of=_site_of, site_help="cross-attention blocks (...attn2)",
                archs=("sd1", "sd2", "sdxl", "toy"))  # UNet cross-attention; PixArt: dit-crossattn

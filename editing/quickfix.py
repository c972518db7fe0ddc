"""Diff-QuickFix: a closed-form, data-free edit of one text-encoder attention projection.

Usage::

    records = quickfix(model, source="Van Gogh", target="a painting")      # edits in place
    records = quickfix(model, "red", "blue", site="text_encoder:encoder.layers.0.self_attn.out_proj")
    records = quickfix(model, "red", "blue", preserve=["a green square", ...])      # + UCE-style preservation
    records = quickfix(model, "red", "blue", preserve=[...], preserve_mode="nullspace")  # AlphaEdit: preserved exactly
    records = quickfix(model, "one", "two", templates=["{} red circle"], targets=["[two] red circles"])
    records = quickfix_many(model, [("red", "blue", None, None), ("green", "yellow", None, None)])  # one solve

Keys ``k`` are the inputs of ``self_attn.out_proj`` for the source concept's prompts, taken
from the last subject token to the end of the 77-token sequence (EOS and padding included);
values ``v`` are the same layer's outputs for the target concept's prompts at the same
positions: the two last subject tokens are paired, and the tokens after them are paired where
the two prompts agree (:func:`aligned_positions`). With word substitution into templates the
context after the subject is the same, so this is position by position. ``targets`` gives the
target prompts explicitly instead (marked, one per template), for targets that change more than
one word: '[one] blue triangle' → '[two] blue triangles', where a substituted 'two blue
triangle' is a caption the encoder never saw. The new weight is
``W = (λW0 + Σ v kᵀ)(λI + Σ k kᵀ)⁻¹`` with λ = 0.01; the bias is untouched, so values have the
bias subtracted. Keys and values are gathered through
:class:`tracing.hooks.Recorder`, the same hooks tracing uses.

``preserve`` (not in the paper; UCE's device applied to this layer) adds, for each preserve
caption, the keys at every token after BOS with values ``W0 k``: the projection keeps its
output on them, which stops the edit leaking into prompts that share the source's context
(the 'three ... triangles' of a 'circle' edit) without changing the closed form.
``preserve_mode="nullspace"`` keeps those outputs exactly instead: the update is confined to the
orthogonal complement of the preserve keys (:func:`editing.closed_form.nullspace_update`).
"""
from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from diffloc.tracing.hooks import Recorder
from diffloc.tracing.prompts import MarkedPrompt, PromptError
from diffloc.tracing.sites import Site

from .closed_form import NULLSPACE_RTOL, PRESERVE_MODES, least_squares_update, nullspace_room
from .protocol import Editor, TraceState, as_tuple, check_lam, check_prompts, option_kwargs, parse_site
from .records import EditError, EditRecord, apply_edit

#: The Diff-QuickFix release's prompt templates.
PAPER_TEMPLATES = ("{}", "A photo of {}", "An image of {}", "A picture of {}")


def default_site(component: str = "text_encoder") -> str:
    return str(Site(component, "encoder.layers.0.self_attn.out_proj" if component == "text_encoder" else "text_model.encoder.layers.0.self_attn.out_proj"))


def concept_prompts(concept: str, templates: Sequence[str]) -> list[MarkedPrompt]:
    """Marked prompts placing ``concept`` in each template (``{}`` marks where it goes)."""
    if not concept or not concept.strip():
        raise EditError("empty concept; give the words to edit, e.g. --source 'Van Gogh'")
    out = []
    for t in templates:
        if "{}" not in t:
            raise EditError(f"template {t!r} has no '{{}}' slot for the concept")
        out.append(MarkedPrompt.parse(t.replace("{}", f"[{concept}]")))
    return out


def _component(site: Site) -> str:
    if not site.component.startswith("text_encoder"):
        raise EditError(f"quickfix edits a text-encoder projection; site {site} is in {site.component}")
    return site.component


@torch.no_grad()
def _record(model, site: Site, texts: Sequence[str], want: str) -> torch.Tensor:
    """The site's inputs (``want='in'``) or outputs for each text: [B, 77, D]."""
    comp = _component(site)
    ids = model.tokenize(list(texts), comp).to(model.device)
    with Recorder(model.modules, [site], inputs=True) as rec:
        model.modules[comp](ids)
    return rec.inputs[site] if want == "in" else rec.outputs[site]


def gather(model, site: Site, prompts: Sequence[MarkedPrompt], want: str) -> list[torch.Tensor]:
    """Per prompt, the site's inputs (``want='in'``) or outputs from the last subject token on: [n_i, D]."""
    acts = _record(model, site, [p.text for p in prompts], want)  # [B, 77, D]
    return [acts[i, p.positions(_tokenizer(model, site))[-1]:] for i, p in enumerate(prompts)]


def _tokenizer(model, site: Site):
    return model.tokenizer_for(_component(site))


def preserve_keys(model, site: Site, captions: Sequence[str]) -> torch.Tensor:
    """Inputs of ``site`` at every position after BOS of each caption: [len(captions) * 76, in]."""
    acts = _record(model, site, captions, "in")  # [P, 77, in]
    return acts[:, 1:].reshape(-1, acts.shape[-1]).float()


def prompt_pairs(source: str, target: str, templates: Sequence[str],
                 targets: Sequence[str] | None = None) -> tuple[list[MarkedPrompt], list[MarkedPrompt]]:
    """(source prompts, target prompts): ``templates`` filled with each concept, or, with
    ``targets`` (marked prompts, one per template), those as the target prompts."""
    src = concept_prompts(source, templates)
    if targets is None:
        return src, concept_prompts(target, templates)
    if len(targets) != len(templates):
        raise EditError(f"{len(targets)} target prompts for {len(templates)} templates; give one target prompt per template")
    try:
        return src, [MarkedPrompt.parse(t) for t in targets]
    except PromptError as e:
        raise EditError(f"target prompt: {e}") from None


def aligned_positions(src_ids: Sequence[int], tgt_ids: Sequence[int], a: int, b: int) -> tuple[list[int], list[int]]:
    """Paired token positions from the last subject tokens ``a`` (source) and ``b`` (target) on.

    ``a`` pairs with ``b``; after them, runs of equal tokens pair one to one and a replaced run
    pairs its last tokens (right-aligned, where a word's meaning gathers under causal
    attention); inserted or deleted tokens have no partner. With equal contexts this is
    position by position: ``(a, b), (a+1, b+1), ...`` to the shorter end.
    """
    src, tgt = list(src_ids[a + 1 :]), list(tgt_ids[b + 1 :])
    ps, pt = [a], [b]
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, src, tgt, autojunk=False).get_opcodes():
        n = min(i2 - i1, j2 - j1)
        if op in ("equal", "replace") and n:
            ps += range(a + 1 + i2 - n, a + 1 + i2)
            pt += range(b + 1 + j2 - n, b + 1 + j2)
    return ps, pt


def keys_values(model, site: Site, source: str, target: str, templates: Sequence[str],
                targets: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked keys K [n, in] (source prompts) and values V [n, out] (target prompts, bias removed)."""
    src, tgt = prompt_pairs(source, target, templates, targets)
    tok, comp = _tokenizer(model, site), _component(site)
    ids_s = model.tokenize([p.text for p in src], comp).tolist()  # [B, 77]
    ids_t = model.tokenize([p.text for p in tgt], comp).tolist()
    keys = _record(model, site, [p.text for p in src], "in")  # [B, 77, in]
    vals = _record(model, site, [p.text for p in tgt], "out")  # [B, 77, out]
    bias = getattr(model.module(site), "bias", None)
    K, V = [], []
    for i, (ps, pt) in enumerate(zip(src, tgt)):
        i_s, i_t = aligned_positions(ids_s[i], ids_t[i], ps.positions(tok)[-1], pt.positions(tok)[-1])
        K.append(keys[i, i_s])
        V.append(vals[i, i_t] - (bias if bias is not None else 0))
    return torch.cat(K).float(), torch.cat(V).float()


def _site(site: str | Site | None, lam: float) -> Site:
    site = Site.parse(site) if site is not None else Site.parse(default_site())
    if not site.path.endswith("self_attn.out_proj"):
        raise EditError(f"quickfix edits an attention output projection (...self_attn.out_proj); got {site}")
    if lam <= 0:
        raise EditError(f"lambda must be > 0, got {lam}")
    return site


def check_rtol(rtol: float) -> None:
    """One-line :class:`EditError` for a null-space rank threshold outside [0, 1)."""
    if not (isinstance(rtol, (int, float)) and 0.0 <= float(rtol) < 1.0):
        raise EditError(f"nullspace_rtol must be a number in [0, 1) (singular values below rtol·σ_max are free room), got {rtol!r}")


def check_preserve_mode(mode: str) -> None:
    """One-line :class:`EditError` for a preserve mode other than ``soft`` / ``nullspace``."""
    if mode not in PRESERVE_MODES:
        raise EditError(f"preserve_mode must be {' or '.join(PRESERVE_MODES)}, got {mode!r}")


def _solve(model, site: Site, K: torch.Tensor, V: torch.Tensor, lam: float, preserve: Sequence[str],
           preserve_mode: str = "soft", rtol: float = NULLSPACE_RTOL) -> tuple[torch.Tensor, dict]:
    """The new weight from stacked keys K [n, in] and values V [n, out], and the solve's info."""
    check_preserve_mode(preserve_mode)
    W0 = model.module(site).weight
    Kp = preserve_keys(model, site, preserve) if preserve else None  # [P*76, in]
    W = least_squares_update(W0.detach().float(), K, V, lam=lam, K_preserve=Kp, preserve_mode=preserve_mode, rtol=rtol)
    info = {"lambda": lam, "n_pairs": int(K.shape[0])}
    if preserve:
        info.update(preserve=list(preserve), n_preserve_keys=int(Kp.shape[0]), preserve_mode=preserve_mode)
        if preserve_mode == "nullspace":
            info.update(nullspace_rtol=rtol, nullspace_dim=nullspace_room(Kp, rtol))
    return W, info


def quickfix(model, source: str, target: str, site: str | Site | None = None, lam: float = 0.01,
             templates: Sequence[str] = PAPER_TEMPLATES, preserve: Sequence[str] = (),
             targets: Sequence[str] | None = None, preserve_mode: str = "soft", nullspace_rtol: float = NULLSPACE_RTOL) -> list[EditRecord]:
    """Edit ``site`` (default: layer-0 ``self_attn.out_proj``) so ``source`` reads like ``target``;
    ``preserve`` captions keep the projection's output (UCE's preservation term)."""
    site = _site(site, lam)
    t0 = time.perf_counter()
    K, V = keys_values(model, site, source, target, templates, targets)
    W, solved = _solve(model, site, K, V, lam, preserve, preserve_mode, nullspace_rtol)
    info = {"source": source, "target": target, "templates": list(templates), **solved, "seconds": round(time.perf_counter() - t0, 4)}
    if targets is not None:
        info["targets"] = list(targets)
    return apply_edit(model, "quickfix", {str(site): W}, info)


def quickfix_many(model, edits: Sequence[tuple[str, str, Sequence[str] | None, Sequence[str] | None]],
                  site: str | Site | None = None, lam: float = 0.01, preserve: Sequence[str] = (),
                  preserve_mode: str = "soft", nullspace_rtol: float = NULLSPACE_RTOL) -> list[EditRecord]:
    """Many edits in one solve (UCE / EMCID style): every edit's keys and values stacked.

    Usage::

        quickfix_many(model, [("red", "blue", None, None), ("green", "yellow", templates, targets)], preserve=[...])

    Each edit is ``(source, target, templates or None (the paper's), targets or None)``;
    ``preserve`` is the captions of the whole batch. One record per site, undone as one edit.
    """
    site = _site(site, lam)
    if not edits:
        raise EditError("no edits to apply; give at least one (source, target)")
    t0 = time.perf_counter()
    Ks, Vs, listed = [], [], []
    for source, target, templates, targets in edits:
        K, V = keys_values(model, site, source, target, templates or PAPER_TEMPLATES, targets)
        Ks.append(K), Vs.append(V)
        listed.append({"source": source, "target": target, "n_pairs": int(K.shape[0])})
    W, solved = _solve(model, site, torch.cat(Ks), torch.cat(Vs), lam, preserve, preserve_mode, nullspace_rtol)
    info = {"source": [e["source"] for e in listed], "target": [e["target"] for e in listed], "edits": listed,
            "n_edits": len(listed), **solved, "seconds": round(time.perf_counter() - t0, 4)}
    return apply_edit(model, "quickfix", {str(site): W}, info)


# ---- the registered editor ------------------------------------------------------------------------

@dataclass(frozen=True)
class QuickfixOptions:
    """Diff-QuickFix: the edited ``self_attn.out_proj`` site (None: layer 0), λ, edit prompts, preserve captions."""

    site: str | None = None
    lam: float = 0.01
    templates: tuple[str, ...] | None = None    # None: the paper's templates
    targets: tuple[str, ...] | None = None      # one marked target prompt per template
    preserve: tuple[str, ...] = ()
    preserve_mode: str = "soft"                 # soft: UCE's term; nullspace: ΔW k_p = 0 exactly
    nullspace_rtol: float = NULLSPACE_RTOL      # nullspace: singular values below rtol·σ_max are free room

    def __post_init__(self) -> None:
        for name in ("templates", "targets", "preserve"):
            as_tuple(self, name)
        check_lam(self.lam)
        check_preserve_mode(self.preserve_mode)
        check_rtol(self.nullspace_rtol)
        check_prompts(self.templates, self.targets)
        if self.site is not None:
            site = parse_site(self.site)
            if not site.component.startswith("text_encoder") or not site.path.endswith("self_attn.out_proj"):
                raise EditError(f"quickfix edits an attention output projection (...self_attn.out_proj); got {self.site}")
            object.__setattr__(self, "site", str(site))


def _run(model, source, target, options: QuickfixOptions):
    return quickfix(model, source, target, **option_kwargs(options))


def _run_many(model, edits, options: QuickfixOptions):
    return quickfix_many(model, [(s, t, o.templates, o.targets) for s, t, o in edits], site=options.site, lam=options.lam,
                         preserve=options.preserve, preserve_mode=options.preserve_mode, nullspace_rtol=options.nullspace_rtol)


EDITOR = Editor("quickfix", TraceState(text=True, kind="attn"), QuickfixOptions, _run, _run_many, site_option="site",
                site_of=lambda model, opts: opts.get("site") or default_site(),
                site_help="an attention output projection (...self_attn.out_proj)")

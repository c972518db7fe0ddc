"""Closed-form editors at diffusion-transformer sites (PixArt, SD3, FLUX, toy-dit) and their T5 encoders.

Usage::

    records = EDITORS.get("dit-crossattn").apply(model, "red", "blue", sites=["transformer:transformer_blocks.3.attn2"])
    records = EDITORS.get("joint-attn").apply(model, "red", "blue", sites=["transformer:transformer_blocks.0.attn"])
    records = EDITORS.get("context-embedder").apply(model, "red", "blue", preserve=[...], preserve_mode="nullspace")
    records = EDITORS.get("t5-quickfix").apply(model, "red", "blue", site="text_encoder_2:encoder.block.1.layer.0.SelfAttention.o")
    K, T = dit_pairs(model, [Site.parse("transformer:context_embedder")], "red", "blue")[site]  # what a solve reads

Every editor here has one form, the UCE / LocoEdit / Diff-QuickFix closed form on a linear layer:
keys ``k`` are the layer's *inputs* for the source prompts, values are the unedited layer applied
to its inputs for the target prompts at the paired positions, ``v = W0 k_target`` (so a bias,
untouched, needs no correction), and ``W = least_squares_update(W0, K, V, λ, K_preserve, preserve_mode)``.
Inputs are recorded with :class:`tracing.hooks.Recorder`, the hooks tracing uses, on the
layer itself:

- ``dit-crossattn`` (PixArt, LocoEdit form): ``attn2.to_k`` / ``to_v`` of the chosen blocks. Their
  input is the caption-projected T5 sequence, the same in every block and at every timestep.
- ``joint-attn`` (SD3 / FLUX / toy-dit): the text-stream projections ``attn.add_k_proj`` /
  ``add_v_proj`` of joint-attention blocks. Their input is the block's (adaLN-modulated) text
  stream, which every block rewrites and which, past block 0, depends on the image stream and on
  the timestep. Keys are therefore recorded on one fixed latent (seeded noise, :data:`LATENT_SEED`)
  at the flow times :data:`TIMESTEPS`, source and target prompts on the same latent and time, and the
  pairs of all timesteps are *stacked* (not averaged): the solve fits the edit at each of them.
- ``context-embedder`` (FLUX / SD3 / toy-dit, UCE-FLUX): the shared text entry ``context_embedder``
  (T5 width -> inner dim); its input is the prompt sequence itself (timestep-free).
- ``t5-quickfix``: Diff-QuickFix on a T5 layer's ``SelfAttention.o`` (SD3 ``text_encoder_3``, FLUX
  ``text_encoder_2``, PixArt ``text_encoder``), recorded while the text encoders run.

Positions: the denoiser's prompt sequence is the concatenation of segments, one per text encoder
that feeds it (SD3: CLIP [0, 77) then T5 [77, 77 + 256); toy-dit: CLIP; FLUX and PixArt: T5). In
each segment the source's last subject token pairs with the target's and the tokens after it pair
as in :func:`editing.quickfix.aligned_positions`; under a text mask (PixArt) only unmasked
positions pair. Preserve captions add keys at every unmasked position of every segment (every
timestep for ``joint-attn``), kept at ``W0 k_p``: softly (UCE) or exactly (``preserve_mode
'nullspace'``). Many preserve tokens can span the whole input space of a narrow layer, and then the
null space, and the edit, is empty: ``info['nullspace_dim']`` says how much room was left.

Sites from a trace (:meth:`DiTEditor.from_trace`): ``joint-attn`` takes the blocks of the trace's
causal sites of kinds ``attn_text`` (``attn.to_add_out``), ``out_text`` (``@text``) and the
text->image slice ``attn.txt2img``, strongest first; ``dit-crossattn`` the causal ``attn2`` blocks;
``t5-quickfix`` the strongest T5 ``attn`` site; ``context-embedder`` has one site.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from diffloc.tracing.sites import Site

from .closed_form import NULLSPACE_RTOL, least_squares_update, nullspace_room
from .dit_keys import denoiser_inputs, dit_pairs, dit_preserve_keys, small_latent_inputs, t5_component, text_inputs
from .protocol import Editor, TraceState, as_tuple, check_lam, check_prompts, parse_site
from .quickfix import PAPER_TEMPLATES, check_preserve_mode, check_rtol
from .records import EditError, EditRecord, apply_edit

#: Flow times (0..1000) at which ``joint-attn`` records the text streams; pairs of all are stacked.
TIMESTEPS = (250.0, 500.0, 750.0)
JOINT_ARCHS = ("sd3", "flux", "toy-dit")


# ---- the shared solve -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What one DiT editor edits: for each key site (whose inputs are recorded), the weights that read them."""

    method: str
    targets: dict                  # key site -> [weight site, ...] sharing that input
    gather: Callable
    timesteps: tuple
    segments: list | None = None


def _solve(model, plan: Plan, edits, lam: float, preserve: Sequence[str], preserve_mode: str, rtol: float) -> tuple[dict, dict]:
    check_preserve_mode(preserve_mode)
    keys = list(plan.targets)
    gathered = [dit_pairs(model, keys, s, t, tpl or PAPER_TEMPLATES, tgt, plan.gather, plan.timesteps, plan.segments)
                for s, t, tpl, tgt in edits]
    Kp = dit_preserve_keys(model, keys, preserve, plan.gather, plan.timesteps) if preserve else {}
    new, info = {}, {"lambda": lam, "preserve_mode": preserve_mode, "timesteps": list(plan.timesteps),
                     "sites": [str(w) for k in keys for w in plan.targets[k]]}
    if preserve and preserve_mode == "nullspace":
        info["nullspace_rtol"] = rtol
    for key in keys:
        K = torch.cat([g[key][0] for g in gathered])
        T = torch.cat([g[key][1] for g in gathered])
        info["n_pairs"] = int(K.shape[0])
        if preserve:
            info["n_preserve_keys"] = int(Kp[key].shape[0])
            if preserve_mode == "nullspace":
                info.setdefault("nullspace_dim", {})[str(key)] = nullspace_room(Kp[key], rtol)
        for w_site in plan.targets[key]:
            W0 = model.module(w_site).weight.detach().float()          # [out, D]
            new[str(w_site)] = least_squares_update(W0, K, T @ W0.T, lam=lam, K_preserve=Kp.get(key), preserve_mode=preserve_mode,
                                                rtol=rtol)
    info["n_edits"] = len(edits)
    return new, info


def _edit(model, plan: Plan, edits, o, templates=None, targets=None) -> list[EditRecord]:
    """Solve and apply ``edits`` with the options ``o`` (λ, preserve captions, preserve mode, rank threshold)."""
    if not edits:
        raise EditError("no edits to apply; give at least one (source, target)")
    t0 = time.perf_counter()
    new, info = _solve(model, plan, edits, o.lam, o.preserve, o.preserve_mode, o.nullspace_rtol)
    many = len(edits) > 1
    info = {"source": [e[0] for e in edits] if many else edits[0][0], "target": [e[1] for e in edits] if many else edits[0][1],
            **info, "n_preserve": len(o.preserve), "seconds": round(time.perf_counter() - t0, 4)}
    if not many:
        info["templates"] = list(templates or PAPER_TEMPLATES)
        if targets is not None:
            info["targets"] = list(targets)
    return apply_edit(model, plan.method, new, info)


# ---- options and sites ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Common:
    lam: float = 0.1
    templates: tuple[str, ...] | None = None    # None: the Diff-QuickFix templates
    targets: tuple[str, ...] | None = None      # one marked target prompt per template
    preserve: tuple[str, ...] = ()
    preserve_mode: str = "soft"                 # soft: UCE's term; nullspace: ΔW k_p = 0 exactly
    nullspace_rtol: float = NULLSPACE_RTOL      # nullspace: singular values below rtol·σ_max are free room

    def _check(self, *lists: str) -> None:
        for name in ("templates", "targets", "preserve", *lists):
            as_tuple(self, name)
        check_lam(self.lam)
        check_prompts(self.templates, self.targets)
        check_preserve_mode(self.preserve_mode)
        check_rtol(self.nullspace_rtol)


_BLOCK = re.compile(r"(transformer_blocks\.\d+)(\.|@|$)")


def _block_site(text: str | Site, suffix: str, what: str) -> str:
    site = parse_site(text) if isinstance(text, str) else text
    m = _BLOCK.match(site.path)
    if site.component != "transformer" or not m:
        raise EditError(f"{what}; got {site}")
    return f"transformer:{m.group(1)}.{suffix}"


def _need_arch(model, archs, name: str) -> None:
    if model.arch not in archs:
        raise EditError(f"{name} edits {'/'.join(archs)} models; {model.name} is {model.arch}")


def _check_sites(model, sites: Sequence[str]) -> list[Site]:
    out = [Site.parse(s) for s in sites]
    for s in out:
        model.module(s)  # a one-line SiteError for a block the model does not have
    return out


# dit-crossattn (PixArt) -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DitCrossattnOptions(_Common):
    """PixArt cross-attention (LocoEdit form): attn2 blocks (empty: all), λ, prompts, preserve captions."""

    sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._check("sites")
        object.__setattr__(self, "sites", tuple(_block_site(s, "attn2", "dit-crossattn edits PixArt cross-attention blocks "
                                                            "(transformer:transformer_blocks.N.attn2)") for s in self.sites))


def _pixart_plan(model, sites) -> Plan:
    _need_arch(model, ("pixart",), "dit-crossattn")
    blocks = _check_sites(model, sites or [str(s) for s in model.sites.denoiser if s.kind == "attn2"])
    return Plan("dit-crossattn", {Site.parse(f"{b}.to_k"): [f"{b}.to_k", f"{b}.to_v"] for b in blocks}, small_latent_inputs, (500.0,))


# joint-attn (SD3 / FLUX / toy-dit) ------------------------------------------------------------------

@dataclass(frozen=True)
class JointAttnOptions(_Common):
    """Joint attention's text-stream key/value projections: blocks (empty: every joint block), λ, prompts, preserve captions."""

    sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._check("sites")
        sites = [_block_site(s, "attn", "joint-attn edits joint-attention blocks (transformer:transformer_blocks.N.attn)")
                 for s in self.sites]
        object.__setattr__(self, "sites", tuple(dict.fromkeys(sites)))


def _joint_plan(model, sites) -> Plan:
    _need_arch(model, JOINT_ARCHS, "joint-attn")
    blocks = _check_sites(model, sites or joint_blocks(model))
    return Plan("joint-attn", {Site.parse(f"{b}.add_k_proj"): [f"{b}.add_k_proj", f"{b}.add_v_proj"] for b in blocks},
                denoiser_inputs, TIMESTEPS)


def _joint_indices(model) -> list[int]:
    blocks = getattr(model.denoiser, "transformer_blocks", [])
    return [i for i, b in enumerate(blocks) if getattr(b.attn, "add_k_proj", None) is not None]


def joint_blocks(model) -> list[str]:
    """Every block of ``model``'s denoiser whose attention has text-stream key/value projections, in order."""
    return [f"transformer:transformer_blocks.{i}.attn" for i in _joint_indices(model)]


_JOINT_HIT = re.compile(r"transformer_blocks\.(\d+)(\.attn\.to_add_out|\.attn\.txt2img|@text)")


def _joint_from_trace(hits: list[dict], model=None) -> dict:
    """The blocks a trace names. A causal text->image slice or text-stream attention output names its own
    block. A causal text-stream *state* (``@text`` after block k) is read by every later block, and
    editing only block k's projections leaves what it carries in the stream's residual for the blocks
    after it to read: it names block k and every later joint block (all of them when ``model`` is known)."""
    blocks = []
    for h in hits:
        m = _JOINT_HIT.fullmatch(Site.parse(h["site"]).path)
        if m is None:
            continue
        k = int(m.group(1))
        blocks.append(f"transformer:transformer_blocks.{k}.attn")
        if m.group(2) == "@text" and model is not None:
            blocks += [f"transformer:transformer_blocks.{i}.attn" for i in _joint_indices(model) if i > k]
    return {"sites": list(dict.fromkeys(blocks))} if blocks else {}


# context-embedder (FLUX / SD3 / toy-dit) ------------------------------------------------------------

CONTEXT_SITE = "transformer:context_embedder"


@dataclass(frozen=True)
class ContextEmbedderOptions(_Common):
    """The shared text entry ``context_embedder`` (UCE-FLUX): λ, prompts, preserve captions."""

    site: str | None = None

    def __post_init__(self) -> None:
        self._check()
        if self.site is not None and str(parse_site(self.site)) != CONTEXT_SITE:
            raise EditError(f"context-embedder edits {CONTEXT_SITE}; got {self.site}")


def _context_plan(model, site=None) -> Plan:
    _need_arch(model, JOINT_ARCHS, "context-embedder")
    return Plan("context-embedder", {Site.parse(CONTEXT_SITE): [CONTEXT_SITE]}, small_latent_inputs, (500.0,))


# t5-quickfix --------------------------------------------------------------------------------------------

_T5_O = re.compile(r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.o")


@dataclass(frozen=True)
class T5QuickfixOptions(_Common):
    """Diff-QuickFix on a T5 layer's ``SelfAttention.o`` (None: layer 0 of the model's T5), λ, prompts, preserve."""

    lam: float = 0.01
    site: str | None = None

    def __post_init__(self) -> None:
        self._check()
        if self.site is not None:
            site = parse_site(self.site)
            if not site.component.startswith("text_encoder") or not _T5_O.fullmatch(site.path):
                raise EditError(f"t5-quickfix edits a T5 attention output (text_encoder_N:encoder.block.L.layer.0.SelfAttention.o); got {self.site}")
            object.__setattr__(self, "site", str(site))


def t5_default_site(model) -> str:
    return f"{t5_component(model)}:encoder.block.0.layer.0.SelfAttention.o"


def _t5_plan(model, site=None) -> Plan:
    comp = t5_component(model)
    site = Site.parse(site or t5_default_site(model))
    if site.component != comp:
        raise EditError(f"t5-quickfix: {model.name}'s T5 encoder is {comp}; got {site}")
    model.module(site)
    return Plan("t5-quickfix", {site: [str(site)]}, text_inputs, (0.0,), [(comp, 0)])


class T5State(TraceState):
    """The T5 encoder's ``attn`` sites, in whichever text component holds the model's T5."""

    def components(self, model=None) -> tuple[str, ...]:
        if model is not None:
            return (t5_component(model),)
        return ("text_encoder", "text_encoder_2", "text_encoder_3")

    def matches(self, site: Site) -> bool:
        return site.is_text and site.kind == self.kind and bool(_T5_O.fullmatch(site.path))


# ---- the registered editors ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DiTEditor(Editor):
    """An :class:`Editor` that may read several trace kinds (``hit_kinds``) and pick its site from them (``pick``)."""

    hit_kinds: tuple[str, ...] = ()
    pick: Callable | None = None

    def from_trace(self, hits: list[dict], model=None) -> dict:
        if self.pick is not None:
            return self.pick(hits, model) if hits else {}
        return super().from_trace(hits, model)


def _runner(plan_of: Callable, site_field: str):
    def run(model, source, target, o):
        plan = plan_of(model, getattr(o, site_field))
        return _edit(model, plan, [(source, target, o.templates, o.targets)], o, o.templates, o.targets)

    def run_many(model, edits, o):
        plan = plan_of(model, getattr(o, site_field))
        return _edit(model, plan, [(s, t, e.templates, e.targets) for s, t, e in edits], o)

    return run, run_many


def _first(model, opts: dict, field: str, default: Callable) -> str:
    value = opts.get(field)
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else default(model)
    return str(value) if value else default(model)


_run, _run_many = _runner(_pixart_plan, "sites")
DIT_CROSSATTN = DiTEditor("dit-crossattn", TraceState(text=False, kind="attn2"), DitCrossattnOptions, _run, _run_many,
                          preserve_by_default=True, site_option="sites",
                          site_of=lambda m, o: _first(m, o, "sites", lambda m: str(next(s for s in m.sites.denoiser if s.kind == "attn2"))),
                          site_help="PixArt cross-attention blocks (transformer:transformer_blocks.N.attn2)", archs=("pixart",))

_run, _run_many = _runner(_joint_plan, "sites")
JOINT_ATTN = DiTEditor("joint-attn", TraceState(text=False, kind="attn_text"), JointAttnOptions, _run, _run_many,
                       preserve_by_default=True, site_option="sites",
                       site_of=lambda m, o: _first(m, o, "sites", lambda m: joint_blocks(m)[0]),
                       site_help="joint-attention blocks (transformer:transformer_blocks.N.attn)",
                       hit_kinds=("attn_text", "out_text", "other"), pick=_joint_from_trace, archs=JOINT_ARCHS)

_run, _run_many = _runner(_context_plan, "site")
CONTEXT_EMBEDDER = DiTEditor("context-embedder", TraceState(text=False, kind="context_embedder"), ContextEmbedderOptions, _run,
                             _run_many, preserve_by_default=True, site_option="site", site_of=lambda m, o: CONTEXT_SITE,
                             site_help=f"the shared text entry ({CONTEXT_SITE})", pick=lambda hits, model: {}, archs=JOINT_ARCHS)

_run, _run_many = _runner(_t5_plan, "site")
T5_QUICKFIX = DiTEditor("t5-quickfix", T5State(text=True, kind="attn"), T5QuickfixOptions, _run, _run_many, site_option="site",
                        site_of=lambda m, o: _first(m, o, "site", t5_default_site),
                        site_help="a T5 attention output (text_encoder_N:encoder.block.L.layer.0.SelfAttention.o)",
                        pick=lambda hits, model: next(({"site": h["site"]} for h in hits if _T5_O.fullmatch(Site.parse(h["site"]).path)), {}),
                        archs=("sd3", "flux", "pixart"))

EDITORS = (DIT_CROSSATTN, JOINT_ATTN, CONTEXT_EMBEDDER, T5_QUICKFIX)

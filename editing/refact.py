"""ReFACT: a rank-one edit of one text-encoder MLP ``fc2``, with v* found contrastively.

Usage::

    records = refact(model, source="red", target="blue", layer=0, corpus=captions)       # edits in place
    records = refact(model, "one", "two", layer=0, corpus=captions, templates=["a photo of {} red circle"],
                     targets=["a photo of [two] red circles"])                           # grammatical targets
    C, L = covariance_factor(model, site, corpus)          # cached uncentred moment and its Cholesky factor

Steps, as in ReFACT's reference code (technion-cs-nlp/ReFACT, ``src/refact``) in its best
published configuration (README: ``--algorithm contrastive_text --v_similarity_metric l2
--v_lr 0.05 --v_max_grad_steps 100 --v_prob_threshold 0.99 --v_weight_decay 0.01``), on
``text_encoder:encoder.layers.L.mlp.fc2``:

1. Prompts. The edit prompt is the source itself (ReFACT's request has prompt = subject), then
   the source in each context template (ReFACT's nine by default, or the case's templates).
   ``k*`` is the fc2 input at the edit prompt's last subject token, ``k̄`` its mean over the
   context prompts (``compute_u``).
2. ``v* = v₀ + δ``, ``v₀`` the edit prompt's fc2 output there. δ is added to the fc2 output at the
   last subject token of every prompt and optimised with Adam (lr 0.05, ≤ 100 forward passes,
   stop once p > 0.99, ‖δ‖ clamped to 4‖v₀‖ after each step) to minimise
   ``−mean log p + 0.01·‖δ‖/‖v₀‖²`` with ``p = softmax(−‖f − c‖₂)[target]`` over the candidates
   ``c`` = [target text, source text, contrastive captions...] (``compute_v``'s
   ``contrastive_text`` with the ``l2`` metric; ReFACT's candidates are the edit's new and old
   texts, plus KL prompts when asked: here ``contrastive``, none by default). ``f`` is the text
   feature: ReFACT uses CLIP's projected ``get_text_features``; a ``CLIPTextModelWithProjection``
   gives its ``text_embeds``, while a plain ``CLIPTextModel`` (SD 1.x's, and the toy's, exported
   without ``text_projection``) gives its pooled [eos] output, which is used instead. With
   ``targets`` (one marked target prompt per template), each context prompt's target and source
   candidates are its own template's, so the loss compares like with like. ``p`` is logged for
   the δ the edit uses (after the last step); ``edited_p`` is p of the edited model itself.
3. ``ΔW = (v* − b − W k*) cᵀ / (cᵀ k*)`` with ``c = C⁻¹ k̄`` (``u = c/‖c‖`` in ReFACT):
   ``(W + ΔW) k* = v*``.

One deliberate departure: C, the uncentred second moment of fc2 inputs over a caption corpus,
is taken over **all 77 positions** the UNet reads (padding included), where ReFACT masks
padding. With C over BOS..EOS only (``cov_positions="tokens"``) the update's direction is
unconstrained on padding keys, and the edit writes into every padding position of every
prompt, the blank CFG prompt included. C and its Cholesky factor are cached on disk under a
hash of every weight upstream of the layer, the corpus and these options.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from diffloc.tracing.hooks import Recorder, hooks
from diffloc.tracing.prompts import MarkedPrompt, PromptError
from diffloc.tracing.sites import TEXT_PREFIX, Site

from .closed_form import MomentAccumulator, cholesky_factor, clamp_delta, rank_one_update
from .protocol import Editor, TraceState, as_tuple, check_prompts, option_kwargs
from .quickfix import concept_prompts
from .records import EditError, EditRecord, apply_edit, weight_hash

#: ReFACT's nine context templates, from technion-cs-nlp/ReFACT ``src/refact/refact_main.py``
#: (``get_context_templates``); ``compute_u`` averages k̄ over them.
REFACT_TEMPLATES = ("{} in a realistic style portrait image", "{}, a portrait", "realistic painting of {}",
                    "a current image of {}", "{}, news image", "a beautiful photograph of {}", "realistic drawing of {}",
                    "{}, realistic portrait", "{} in a photo")
#: The edit prompt: ReFACT's requests (``clip_edit.py``) set prompt = subject.
EDIT_PROMPT = "{}"
COV_POSITIONS = ("all", "tokens")


def fc2_site(model, layer: int, component: str = "text_encoder") -> Site:
    """The fc2 ReFACT edits at ``layer``; the last layer is refused (its gradient is exactly zero)."""
    n = model.sites.text_layers[component]
    if not 0 <= layer < n - 1:
        if layer == n - 1:
            raise EditError(f"ReFACT cannot edit the last layer ({layer}): no later layer carries the subject token to [eos], "
                            f"so the gradient of v* is exactly zero; allowed layers 0..{n - 2}")
        raise EditError(f"ReFACT layer {layer} out of range; allowed 0..{n - 2}")
    return Site(component, f"{TEXT_PREFIX[component]}encoder.layers.{layer}.mlp.fc2")


def default_layer(model, component: str = "text_encoder") -> int:
    """ReFACT's layer 7 of 12 on SD's CLIP-L, scaled to the encoder's depth (never the last)."""
    n = model.sites.text_layers[component]
    return max(0, min(n - 2, round(7 * n / 12)))


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFLOC_CACHE", Path.home() / ".cache" / "diffloc"))


def _layer_of(site: Site) -> int:
    return int(re.search(r"encoder\.layers\.(\d+)\.", site.path).group(1))


def upstream_hash(model, site: Site) -> str:
    """SHA-256 over every weight the fc2 input depends on: embeddings, layers < L, and layer L's
    layer norms, self-attention and fc1 (everything of layer L but fc2 itself)."""
    prefix, layer = TEXT_PREFIX[site.component], _layer_of(site)
    h = hashlib.sha256()
    for name, p in model.modules[site.component].named_parameters():
        m = re.match(rf"{re.escape(prefix)}encoder\.layers\.(\d+)\.", name)
        upstream = name.startswith(f"{prefix}embeddings.") or (
            m is not None and (int(m.group(1)) < layer or (int(m.group(1)) == layer and ".mlp.fc2." not in name)))
        if upstream:
            h.update(f"{name}:{weight_hash(p)}|".encode())
    return h.hexdigest()


def covariance_key(model, site: Site, corpus: Sequence[str], positions: str = "all", ridge: float = 1e-4) -> str:
    """The cache key of C: upstream weights, site, positions, ridge and corpus."""
    if positions not in COV_POSITIONS:
        raise EditError(f"covariance positions {positions!r} unknown; allowed: {', '.join(COV_POSITIONS)}")
    text = "\n".join(corpus)
    return hashlib.sha256(f"{upstream_hash(model, site)}|{site}|{positions}|{ridge}|{text}".encode()).hexdigest()[:24]


@torch.no_grad()
def _second_moment(model, site: Site, corpus: Sequence[str], positions: str, batch: int) -> torch.Tensor:
    acc = MomentAccumulator()
    tok = model.tokenizer_for(site.component)
    for i in range(0, len(corpus), batch):
        texts = list(corpus[i : i + batch])
        enc = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        with Recorder(model.modules, [site], inputs=True) as rec:
            model.modules[site.component](enc.input_ids.to(model.device))
        keys = rec.inputs[site]  # [B, 77, 4D]
        if positions == "all":  # every position the UNet reads, padding included
            acc.update(keys.reshape(-1, keys.shape[-1]))
        else:  # BOS..EOS only (ReFACT's masked statistics)
            acc.update(keys[enc.attention_mask.to(keys.device).bool()])
    return acc.value()


def covariance_factor(model, site: Site, corpus: Sequence[str], positions: str = "all", ridge: float = 1e-4,
                      batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, L): the uncentred second moment of ``site``'s inputs over ``corpus`` and its Cholesky
    factor, both float64, cached on disk under :func:`covariance_key`.

    ``positions``: ``"all"`` 77 positions per caption (what the UNet reads), ``"tokens"`` BOS..EOS.
    A ridge of ``ridge · mean eigenvalue`` keeps C invertible for small corpora.
    """
    if not corpus:
        raise EditError("ReFACT needs a caption corpus for its covariance; pass --corpus FILE (the toy model uses its world's captions)")
    path = cache_dir() / "cov" / f"{covariance_key(model, site, corpus, positions, ridge)}.pt"
    dev = model.module(site).weight.device
    if path.exists():
        saved = torch.load(path)
        return saved["C"].to(dev), saved["chol"].to(dev)
    C = _second_moment(model, site, corpus, positions, batch)
    C = C + ridge * C.diagonal().mean() * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    L = cholesky_factor(C)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"C": C.cpu(), "chol": L.cpu()}, tmp)
    os.replace(tmp, path)
    return C.to(dev), L.to(dev)


def covariance(model, site: Site, corpus: Sequence[str], positions: str = "all", ridge: float = 1e-4) -> torch.Tensor:
    """C alone (see :func:`covariance_factor`)."""
    return covariance_factor(model, site, corpus, positions, ridge)[0]


@dataclass
class VProblem:
    """The prompts of one edit and the candidates each is scored against."""

    texts: list[str]         # the edit prompt first, then the context prompts
    ids: torch.Tensor        # [T, 77]
    pos: torch.Tensor        # [T] last subject token of each prompt
    cands: torch.Tensor      # [T, 2 + N, D] features of (target, source, contrastive...) under the unedited encoder


def features(model, component: str, ids: torch.Tensor) -> torch.Tensor:
    """Text features [B, D]: projected ``text_embeds`` where the tower has a projection, else pooled [eos]."""
    out = model.modules[component](ids)
    emb = getattr(out, "text_embeds", None)
    return (emb if emb is not None else out.pooler_output).float()


def _pairs(source: str, target: str, templates: Sequence[str], targets: Sequence[str] | None):
    """(prompts, target texts, source texts): the edit prompt first, then one per context template."""
    if targets is not None and len(targets) != len(templates):
        raise EditError(f"{len(targets)} target prompts for {len(templates)} templates; give one target prompt per template")
    try:
        tgt = [MarkedPrompt.parse(t).text for t in targets] if targets is not None else [target] * len(templates)
    except PromptError as e:
        raise EditError(f"target prompt: {e}") from None
    seen, keep = {EDIT_PROMPT}, []
    for tpl, t in zip(templates, tgt):
        if tpl not in seen:  # ReFACT de-duplicates its rewriting prompts
            seen.add(tpl)
            keep.append((tpl, t))
    prompts = concept_prompts(source, [EDIT_PROMPT] + [tpl for tpl, _ in keep])
    targets_text = [target] + [t for _, t in keep]
    sources_text = [source] + ([p.text for p in prompts[1:]] if targets is not None else [source] * len(keep))
    return prompts, targets_text, sources_text


@torch.no_grad()
def v_problem(model, component: str, source: str, target: str, templates: Sequence[str] = REFACT_TEMPLATES,
              targets: Sequence[str] | None = None, contrastive: Sequence[str] = ()) -> VProblem:
    prompts, tgt, src = _pairs(source, target, templates, targets)
    tok = model.tokenizer_for(component)
    enc = lambda texts: features(model, component, model.tokenize(list(texts), component).to(model.device))  # noqa: E731
    t_feat, s_feat = enc(tgt), enc(src)  # [T, D]
    cands = torch.stack([t_feat, s_feat], 1)  # [T, 2, D]
    if contrastive:
        neg = enc(contrastive)  # [N, D]
        cands = torch.cat([cands, neg.unsqueeze(0).expand(len(prompts), -1, -1)], 1)
    return VProblem([p.text for p in prompts], model.tokenize([p.text for p in prompts], component).to(model.device),
                    torch.tensor([p.positions(tok)[-1] for p in prompts]), cands)


def target_logp(feat: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """log p(target) per prompt [T]: log-softmax of −L2 distances from ``feat [T, D]`` to ``cands [T, C, D]``."""
    return (-(cands - feat.unsqueeze(1)).norm(dim=-1)).log_softmax(-1)[:, 0]


@contextmanager
def injected(model, site: Site, problem: VProblem, delta: torch.Tensor):
    """Add ``delta`` to the site's output at each prompt's last subject token."""
    rows = torch.arange(len(problem.texts))

    def add(module, inputs, output):
        new = output.clone()
        new[rows, problem.pos.to(output.device)] += delta.to(output.dtype)
        return new

    with hooks(model.modules, {site: add}):
        yield


@torch.no_grad()
def problem_p(model, site: Site, problem: VProblem, delta: torch.Tensor | None = None) -> float:
    """Mean p(target) over the prompts, with ``delta`` injected (None: the model as it is)."""
    if delta is None:
        return float(target_logp(features(model, site.component, problem.ids), problem.cands).exp().mean())
    with injected(model, site, problem, delta):
        return problem_p(model, site, problem)


def optimise_v(model, site: Site, problem: VProblem, lr: float = 0.05, max_steps: int = 100, stop_p: float = 0.99,
               clamp: float = 4.0, weight_decay: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """ReFACT's ``compute_v``: δ for the edit prompt's v₀; returns (v₀, δ, log). ``log["p"]`` is p
    at the returned δ: the loop breaks before stepping once p > ``stop_p`` or on its last pass.

    ``weight_decay`` 0.01 is the README's best configuration. Run as written there, the reference
    applies its hparams file's 0.1 instead: argparse expands ``--v_weight_decay`` to
    ``--v_weight_decay_factor``, an attribute ``compute_v`` never reads.
    """
    with torch.no_grad(), Recorder(model.modules, [site]) as rec:
        model.modules[site.component](problem.ids)
    v0 = rec.outputs[site][0, problem.pos[0]].float()  # [D] the edit prompt's fc2 output
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    log = {"steps": 0, "p": 0.0, "loss": None}
    for it in range(max_steps):
        with torch.enable_grad(), injected(model, site, problem, delta):
            logp = target_logp(features(model, site.component, problem.ids), problem.cands)  # [T]
            loss = -logp.mean() + weight_decay * delta.norm() / v0.norm() ** 2
        log.update(steps=it, p=float(logp.detach().exp().mean()), loss=round(float(loss.detach()), 5))
        if log["p"] > stop_p or it == max_steps - 1:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.copy_(clamp_delta(delta, v0, clamp))
    return v0.detach(), delta.detach(), log


@torch.no_grad()
def edit_keys(model, site: Site, problem: VProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """(k*, k̄): the fc2 input at the edit prompt's subject token, and its mean over the context prompts."""
    with Recorder(model.modules, [site], inputs=True) as rec:
        model.modules[site.component](problem.ids)
    keys = rec.inputs[site][torch.arange(len(problem.texts)), problem.pos.to(model.device)].float()  # [T, 4D]
    return keys[0], (keys[1:] if len(keys) > 1 else keys).mean(0)


def refact(model, source: str, target: str, layer: int | None = None, component: str = "text_encoder",
           corpus: Sequence[str] = (), contrastive: Sequence[str] = (), templates: Sequence[str] = REFACT_TEMPLATES,
           targets: Sequence[str] | None = None, lr: float = 0.05, max_steps: int = 100, weight_decay: float = 0.01,
           cov_positions: str = "all") -> list[EditRecord]:
    """Rank-one edit of ``encoder.layers.<layer>.mlp.fc2`` mapping ``source`` to ``target``."""
    layer = default_layer(model, component) if layer is None else layer
    site = fc2_site(model, layer, component)
    t0 = time.perf_counter()
    _, chol = covariance_factor(model, site, list(corpus), cov_positions)
    t_cov = time.perf_counter() - t0
    problem = v_problem(model, component, source, target, templates, targets, contrastive)
    k_star, k_bar = edit_keys(model, site, problem)
    v0, delta, log = optimise_v(model, site, problem, lr=lr, max_steps=max_steps, weight_decay=weight_decay)
    fc2 = model.module(site)
    bias = fc2.bias.float() if fc2.bias is not None else 0
    dW = rank_one_update(fc2.weight.detach().float(), k_star, v0 + delta - bias, chol=chol, k_dir=k_bar)
    info = {"source": source, "target": target, "layer": layer, "templates": list(templates), "n_contrastive": len(contrastive),
            "corpus_size": len(corpus), "cov_positions": cov_positions, "weight_decay": weight_decay,
            "opt_steps": log["steps"], "final_p": round(log["p"], 4), "final_loss": log["loss"],
            "delta_norm_ratio": round(float(delta.norm() / v0.norm()), 4), "seconds_covariance": round(t_cov, 3)}
    if targets is not None:
        info["targets"] = list(targets)
    records = apply_edit(model, "refact", {str(site): fc2.weight.detach().float() + dW}, info)
    edited_p = problem_p(model, site, problem)  # p of the edited weights, no δ injected
    for rec in records:
        rec.info.update(edited_p=round(edited_p, 4), seconds=round(time.perf_counter() - t0, 3))
    return records


# ---- the registered editor ------------------------------------------------------------------------

@dataclass(frozen=True)
class RefactOptions:
    """ReFACT: the fc2 layer (None: scaled layer 7 of 12, never the last), corpus, prompts, optimiser.

    ``templates`` are the context templates (None: ReFACT's nine) and ``targets`` one marked target
    prompt per template (the cases' grammatical ones, as quickfix gets them); ``contrastive`` adds
    captions to the candidates (ReFACT's KL prompts; none in its best configuration);
    ``cov_positions`` ``all`` (the 77 positions the denoiser reads) or ``tokens`` (BOS..EOS: leaks).
    """

    layer: int | None = None
    component: str = "text_encoder"
    corpus: tuple[str, ...] = ()
    contrastive: tuple[str, ...] = ()
    templates: tuple[str, ...] | None = None    # None: ReFACT's templates
    targets: tuple[str, ...] | None = None      # one marked target prompt per template
    lr: float = 0.05
    max_steps: int = 100
    weight_decay: float = 0.01
    cov_positions: str = "all"

    def __post_init__(self) -> None:
        for name in ("corpus", "contrastive", "templates", "targets"):
            as_tuple(self, name)
        check_prompts(self.templates, self.targets)
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            raise EditError(f"ReFACT layer must be an integer >= 0, got {self.layer!r}")
        if not self.component.startswith("text_encoder"):
            raise EditError(f"ReFACT edits a text encoder; got component {self.component!r}")
        if not self.lr > 0 or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise EditError(f"ReFACT needs lr > 0 and max_steps >= 1, got lr={self.lr}, max_steps={self.max_steps}")
        if not self.weight_decay >= 0:
            raise EditError(f"ReFACT's weight decay must be >= 0, got {self.weight_decay}")
        if self.cov_positions not in COV_POSITIONS:
            raise EditError(f"cov_positions {self.cov_positions!r} unknown; allowed: {', '.join(COV_POSITIONS)}")


def _run(model, source, target, options: RefactOptions):
    return refact(model, source, target, **option_kwargs(options))


def _site_of(model, opts: dict) -> str:
    return str(fc2_site(model, opts["layer"] if opts.get("layer") is not None else default_layer(model)))


EDITOR = Editor("refact", TraceState(text=True, kind="mlp"), RefactOptions, _run, site_option="layer", site_of=_site_of,
                site_help="an MLP fc2 (text_encoder:encoder.layers.N.mlp.fc2)")

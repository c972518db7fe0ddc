"""ReFACT: a rank-one edit of one text-encoder MLP ``fc2``, with v* found contrastively.

Usage::

    records = refact(model, source="red", target="blue", layer=2)      # edits in place
    C = covariance(model, site, corpus)                                   # cached uncentred moment

Steps, as in ReFACT (Arad et al.), on ``text_encoder:encoder.layers.L.mlp.fc2``:

1. ``k̄``: the fc2 input at the source's last subject token, averaged over the templates.
2. ``v* = v₀ + δ``: δ is added to the fc2 output at that token in every template prompt and
   optimised with Adam (lr 0.05, ≤ 100 steps, stop once p > 0.99, ‖δ‖ clamped to 4‖v₀‖) so
   that the pooled [eos] feature of each edited source prompt is closest, by cosine, to the
   target prompt's and far from the source prompt's and from contrastive captions:
   ``p = softmax(100·cos)`` over [target, source, contrastive...], loss ``−log p[target]``.
3. ``ΔW = (v* − b − W k̄) cᵀ / (cᵀ k̄)`` with ``c = C⁻¹ k̄``; C is the uncentred second moment
   of fc2 inputs over a caption corpus (cached on disk).
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from tracing.hooks import Recorder, hooks
from tracing.prompts import MarkedPrompt
from tracing.sites import TEXT_PREFIX, Site

from .closed_form import MomentAccumulator, clamp_delta, rank_one_update
from .quickfix import concept_prompts
from .records import EditError, EditRecord, apply_edit, weight_hash

#: Nine templates, as ReFACT averages k̄ over nine.
REFACT_TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}", "a drawing of {}",
                    "a painting of {}", "a close-up photo of {}", "a rendering of {}", "a photo showing {}")


def fc2_site(model, layer: int, component: str = "text_encoder") -> Site:
    n = model.sites.text_layers[component]
    if not 0 <= layer < n:
        raise EditError(f"ReFACT layer {layer} out of range; allowed 0..{n - 1}")
    return Site(component, f"{TEXT_PREFIX[component]}encoder.layers.{layer}.mlp.fc2")


def default_layer(model, component: str = "text_encoder") -> int:
    """ReFACT's layer 7 of 12 on SD's CLIP-L, scaled to the encoder's depth."""
    n = model.sites.text_layers[component]
    return min(n - 1, round(7 * n / 12))


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFLOC_CACHE", Path.home() / ".cache" / "diffloc"))


@torch.no_grad()
def covariance(model, site: Site, corpus: Sequence[str], batch: int = 128, ridge: float = 1e-4) -> torch.Tensor:
    """Uncentred second moment of fc2 inputs over ``corpus`` tokens (BOS..EOS), cached on disk.

    A ridge of ``ridge · mean eigenvalue`` keeps C invertible for small corpora.
    """
    w = model.module(site).weight
    fc1 = model.module(Site(site.component, site.path.removesuffix("fc2") + "fc1"))
    key = hashlib.sha256(f"{weight_hash(fc1.weight)}|{site}|{ridge}|{chr(10).join(corpus)}".encode()).hexdigest()[:20]
    path = cache_dir() / "cov" / f"{key}.pt"
    if path.exists():
        return torch.load(path).to(w.device)
    acc = MomentAccumulator()
    tok = model.tokenizer_2 if site.component == "text_encoder_2" else model.tokenizer
    for i in range(0, len(corpus), batch):
        texts = list(corpus[i : i + batch])
        enc = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        with Recorder(model.modules, [site], inputs=True) as rec:
            model.modules[site.component](enc.input_ids.to(model.device))
        keys = rec.inputs[site]  # [B, 77, 4D]
        lengths = enc.attention_mask.sum(1)  # tokens up to and including EOS
        acc.update(torch.cat([keys[b, : int(lengths[b])] for b in range(len(texts))]))
    C = acc.value()
    C = C + ridge * C.diagonal().mean() * torch.eye(C.shape[0], dtype=C.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(C.cpu(), tmp)
    os.replace(tmp, path)
    return C.to(w.device)


def _pooled(model, component: str, ids: torch.Tensor) -> torch.Tensor:
    out = model.modules[component](ids)
    return out[0] if component == "text_encoder_2" else out.pooler_output  # [B, D] [eos] features


def optimise_v(model, site: Site, prompts: list[MarkedPrompt], targets: list[str], contrastive: list[str],
               lr: float = 0.05, max_steps: int = 100, stop_p: float = 0.99, clamp: float = 4.0,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Find δ so the edited source prompts' pooled features match the targets'; returns (v₀, δ, log)."""
    comp = site.component
    tok = model.tokenizer_2 if comp == "text_encoder_2" else model.tokenizer
    pos = torch.tensor([p.positions(tok)[-1] for p in prompts])
    ids = model.tokenize([p.text for p in prompts], comp).to(model.device)
    with torch.no_grad():
        with Recorder(model.modules, [site]) as rec:
            src_feat = F.normalize(_pooled(model, comp, ids).float(), dim=-1)  # [T, D]
        tgt_feat = F.normalize(_pooled(model, comp, model.tokenize(targets, comp).to(model.device)).float(), dim=-1)
        neg_feat = F.normalize(_pooled(model, comp, model.tokenize(contrastive, comp).to(model.device)).float(), dim=-1) if contrastive else src_feat[:0]
    v0 = rec.outputs[site][torch.arange(len(prompts)), pos].float().mean(0)  # [D]
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)

    def add_delta(module, inputs, output):
        new = output.clone()
        new[torch.arange(len(prompts)), pos.to(output.device)] += delta.to(output.dtype)
        return new

    log = {"steps": 0, "p": 0.0}
    for step in range(max_steps):
        with torch.enable_grad(), hooks(model.modules, {site: add_delta}):
            feat = F.normalize(_pooled(model, comp, ids).float(), dim=-1)  # [T, D]
            cands = torch.cat([tgt_feat.unsqueeze(1), src_feat.unsqueeze(1), neg_feat.unsqueeze(0).expand(len(prompts), -1, -1)], 1)
            logits = 100 * (cands * feat.unsqueeze(1)).sum(-1)  # [T, 2 + N]
            p = logits.softmax(-1)[:, 0]
            log.update(steps=step, p=float(p.detach().mean()))
            if log["p"] > stop_p:
                break
            loss = -torch.log(p + 1e-12).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            delta.copy_(clamp_delta(delta, v0, clamp))
    return v0.detach(), delta.detach(), log


def refact(model, source: str, target: str, layer: int | None = None, component: str = "text_encoder",
           corpus: Sequence[str] = (), contrastive: Sequence[str] = (), templates: Sequence[str] = REFACT_TEMPLATES,
           lr: float = 0.05, max_steps: int = 100) -> list[EditRecord]:
    """Rank-one edit of ``encoder.layers.<layer>.mlp.fc2`` mapping ``source`` to ``target``."""
    if not corpus:
        raise EditError("ReFACT needs a caption corpus for its covariance; pass --corpus FILE (the toy model uses its world's captions)")
    layer = default_layer(model, component) if layer is None else layer
    site = fc2_site(model, layer, component)
    t0 = time.perf_counter()
    C = covariance(model, site, list(corpus))
    t_cov = time.perf_counter() - t0
    prompts = concept_prompts(source, templates)
    targets = [t.replace("{}", target) for t in templates]
    tok = model.tokenizer_2 if component == "text_encoder_2" else model.tokenizer
    ids = model.tokenize([p.text for p in prompts], component).to(model.device)
    with torch.no_grad(), Recorder(model.modules, [site], inputs=True) as rec:
        model.modules[component](ids)
    pos = [p.positions(tok)[-1] for p in prompts]
    k_bar = torch.stack([rec.inputs[site][i, j] for i, j in enumerate(pos)]).float().mean(0)  # [4D]
    v0, delta, log = optimise_v(model, site, prompts, targets, list(contrastive), lr=lr, max_steps=max_steps)
    fc2 = model.module(site)
    bias = fc2.bias.float() if fc2.bias is not None else 0
    v_star = v0 + delta
    dW = rank_one_update(fc2.weight.detach().float(), k_bar, v_star - bias, C)  # C stays float64
    seconds = time.perf_counter() - t0
    info = {"source": source, "target": target, "layer": layer, "templates": list(templates), "n_contrastive": len(contrastive),
            "corpus_size": len(corpus), "opt_steps": log["steps"], "final_p": round(log["p"], 4),
            "delta_norm_ratio": round(float(delta.norm() / v0.norm()), 4), "seconds": round(seconds, 3),
            "seconds_covariance": round(t_cov, 3)}
    return apply_edit(model, "refact", {str(site): fc2.weight.detach().float() + dW}, info)

"""Joint attention (SD3-style MM-DiT) opened up: the text->image slice as a site, and attention contribution.

Usage::

    install_split(model.denoiser)          # every joint attention gets a ``txt2img`` module (toy-dit: at load)
    Site("transformer", "transformer_blocks.3.attn.txt2img")   # now a site like any other
    with ConceptContribution(model.denoiser, concept=[5, 6]) as cc:   # Zarei et al.'s ranking
        model.family.denoise(model, x, t, cond, 0)
    cc.scores                              # {attention path: [B] mean over image queries of ||W_o A[img, concept] V||}

In joint attention every image query attends over image *and* text keys. Its output (before the
output projection ``to_out.0``) splits exactly into two terms::

    out[i] = sum_{j in image} A[i, j] V[j]  +  sum_{j in text} A[i, j] V[j]     # per head, [B, H, N_img, d]
                                               └── the text->image slice ──┘

:class:`SplitJointProcessor` computes the attention explicitly and routes the second term
through ``attn.txt2img`` (an ``nn.Identity`` registered on the attention module), so that
recording, restoring and gradient probes act on it through the ordinary hooks: restoring
``...attn.txt2img`` copies the clean run's reading of the prompt into a corrupted row, at that
block only. The text stream (queries of text tokens) is untouched by the split.
Numerically the split equals diffusers' ``JointAttnProcessor2_0`` to float rounding (tested).

The layout is SD3's: the joint sequence is ``[image tokens, text tokens]`` and the text stream
has its own projections (``add_q_proj``/``add_k_proj``/``add_v_proj``, ``to_add_out``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*d] -> [B, H, N, d]"""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def joint_qkv(attn, hidden: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Queries, keys, values of the joint sequence [image, text], each [B, H, N_img + N_txt, d], and N_img."""
    q, k, v = (_heads(f(hidden), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    cq, ck, cv = (_heads(f(context), attn.heads) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        cq = attn.norm_added_q(cq)
    if attn.norm_added_k is not None:
        ck = attn.norm_added_k(ck)
    return torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2), hidden.shape[1]


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) [B, H, Nq, Nk], computed in float32 for the split's exactness."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.softmax(-1)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] -> [B, N, H*d]"""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SplitJointProcessor:
    """A joint-attention processor whose image-query output passes its text term through ``attn.txt2img``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None:
            raise RuntimeError("SplitJointProcessor serves joint attention; this call has no text stream")
        q, k, v, n_img = joint_qkv(attn, hidden_states, encoder_hidden_states)
        probs = attention_probs(q, k)                                   # [B, H, N, N]
        vf = v.float()
        text = _merge(probs[:, :, n_img:] @ vf).to(q.dtype)             # [B, N_txt, H*d]
        if not attn.context_pre_only:                                   # diffusers' order: text projection first
            text = attn.to_add_out(text)
        img_term = probs[:, :, :n_img, :n_img] @ vf[:, :, :n_img]       # [B, H, N_img, d]
        txt_term = probs[:, :, :n_img, n_img:] @ vf[:, :, n_img:]       # [B, H, N_img, d]: the slice
        txt_term = attn.txt2img(_merge(txt_term).to(q.dtype))           # [B, N_img, H*d], hookable
        image = attn.to_out[1](attn.to_out[0](_merge(img_term).to(q.dtype) + txt_term))
        return image, text


def joint_attentions(denoiser: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every joint attention (an attention with a text stream) in execution order."""
    return [(n, m) for n, m in denoiser.named_modules() if hasattr(m, "add_k_proj") and getattr(m, "add_k_proj") is not None
            and hasattr(m, "set_processor")]


def install_split(denoiser: nn.Module) -> list[str]:
    """Give every joint attention a ``txt2img`` module and the split processor; returns the slice paths."""
    paths = []
    for name, attn in joint_attentions(denoiser):
        if not hasattr(attn, "txt2img"):
            attn.add_module("txt2img", nn.Identity())
        attn.set_processor(SplitJointProcessor())
        paths.append(f"{name}.txt2img")
    return paths


def contribution_attentions(denoiser: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(path, module, 'joint' | 'cross') of every attention where image queries read the prompt:
    joint attentions (SD3-style MM-DiT) and cross-attentions (``attn2`` of a UNet or PixArt)."""
    out = [(n, m, "joint") for n, m in joint_attentions(denoiser)]
    out += [(n, m, "cross") for n, m in denoiser.named_modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "to_q")]
    order = {n: i for i, (n, _) in enumerate(denoiser.named_modules())}
    return sorted(out, key=lambda x: order[x[0]])


def _cross_qkv(attn, hidden: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries of the image tokens, keys and values of the prompt tokens, [B, H, N, d] each."""
    q, k, v = _heads(attn.to_q(hidden), attn.heads), _heads(attn.to_k(context), attn.heads), _heads(attn.to_v(context), attn.heads)
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    return q, k, v


class ConceptContribution:
    """Zarei et al.'s attention contribution of concept tokens to image queries, per attention.

    ``concept``: text-token positions (within the text stream, i.e. the prompt embedding's
    sequence). Per call of each attention and per row: mean over image queries i of
    ``|| W_o sum_{j in concept} A[i, j] V[j] ||`` (heads concatenated, the output projection's
    bias excluded: it is not attributable to any token). Joint attentions (A over image + text
    keys) and cross-attentions (A over the prompt's keys; an attention mask, PixArt's, is not
    applied) are both read. Scores add up over calls (steps) in ``sums`` with ``calls`` counting
    them; ``scores`` is the mean.
    """

    def __init__(self, denoiser: nn.Module, concept: Sequence[int]):
        self.denoiser, self.concept = denoiser, torch.as_tensor(list(concept), dtype=torch.long)
        self.sums: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.kinds: dict[str, str] = {}
        self._handles: list = []

    def _hook(self, path: str, kind: str):
        def fn(attn, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            if context is None:
                return
            with torch.no_grad():
                if kind == "joint":
                    q, k, v, n_img = joint_qkv(attn, hidden, context)
                    cols = n_img + self.concept.to(q.device)
                    probs = attention_probs(q, k)[:, :, :n_img, cols]                 # [B, H, N_img, C]
                else:
                    q, k, v = _cross_qkv(attn, hidden, context)
                    cols = self.concept.to(q.device)
                    probs = attention_probs(q, k)[:, :, :, cols]                      # [B, H, N_img, C]
                part = _merge(probs @ v.float()[:, :, cols])                           # [B, N_img, H*d]
                out = part @ attn.to_out[0].weight.float().T                           # W_o, no bias
                score = out.norm(dim=-1).mean(dim=1).cpu()                             # [B]
            self.sums[path] = self.sums.get(path, 0) + score
            self.calls[path] = self.calls.get(path, 0) + 1
        return fn

    def __enter__(self) -> "ConceptContribution":
        for path, attn, kind in contribution_attentions(self.denoiser):
            self.kinds[path] = kind
            self._handles.append(attn.register_forward_pre_hook(self._hook(path, kind), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def scores(self) -> dict[str, torch.Tensor]:
        return {p: s / self.calls[p] for p, s in self.sums.items()}

"""Diagnose before editing: can a perfect value at the edit's layer make the target appear?

Usage::

    d = diagnose(model, "red", "blue", site="text_encoder:encoder.layers.0.mlp.fc2",
                 templates=case["templates"][:4], targets=case["targets"][:4], seeds=range(3))
    d["conditions"]["subject"]["rate"], d["conditions"]["after_subject"]["rate"], d["recommended"]
    write_diagnosis(d, out / "diagnosis.json")

The oracle test, run on the unedited model. For each edit prompt (a template filled with the
source) and its target prompt, the target prompt's text-encoder residual after the edited
layer L (``text_encoder:encoder.layers.L``, [77, D]) is patched into the source prompt's
forward pass at

- ``subject``: the subject token(s) only (right-aligned with the target's subject tokens),
  all a rank-one subject-token edit such as ReFACT can change;
- ``after_subject``: every position after the subject, EOS and padding included (the UNet
  reads all 77), paired as :func:`editing.quickfix.aligned_positions` pairs them;
- ``all``: every position (the target prompt's own state: the ceiling);

and ``none`` is the source prompt unpatched. On a diffusion transformer the edit site may also be
the shared text entry ``transformer:context_embedder`` (the ``context-embedder`` editor): its output,
the text stream entering block 0 ([77, D], timestep-free), is patched the same way at every
denoiser call, on the conditional rows only (CFG's unconditional half is never touched). Images come from :func:`tracing.sampler.generate`
with the seeds' explicit latents. The target *appears* when the world's exact readers read the
attributes in which the two prompts differ as the target prompt says (ground truth, toy world),
otherwise when CLIP prefers the target prompt: P(target) > P(source).

The recommendation: ``refact`` if the subject patch reaches the target in at least
``threshold`` of the images (a rank-one subject-token edit can carry it), else ``quickfix`` if
the after-subject or all-positions patch does (an all-positions edit is needed), else none.
"""
from __future__ import annotations

from typing import Sequence

import torch

from diffloc.tracing.hooks import Recorder, hooks
from diffloc.tracing.io import write_json_format
from diffloc.tracing.sampler import SamplerConfig, generate, initial_latents
from diffloc.tracing.sites import TEXT_PREFIX, Site, SiteError

from .quickfix import PAPER_TEMPLATES, aligned_positions, prompt_pairs
from .records import EditError

CONDITIONS = ("none", "subject", "after_subject", "all")


CONTEXT_ENTRY = "context_embedder"


def patch_site(model, site: str | Site) -> Site:
    """Where a diagnosis patches for an edit at ``site``: the text-encoder residual after its layer, or the
    denoiser's text entry (``context_embedder``) itself; anything else is a one-line error."""
    s = Site.parse(site) if isinstance(site, str) else site
    if s.component == model.family.denoiser and s.path == CONTEXT_ENTRY:
        return s
    return residual_site(s)


def _target_states(model, res: Site, texts: list[str]) -> torch.Tensor:
    """The target prompts' states at ``res``: [P, 77, D] (text-encoder residual, or the text entry's output)."""
    if res.is_text:
        with Recorder(model.modules, [res]) as rec:
            model.modules[res.component](model.tokenize(texts, res.component).to(model.device))
        return rec.outputs[res]
    from diffloc.tracing.sampler import encode

    cond = encode(model, texts)
    return model.module(res)(cond.embeds.to(model.device))


def residual_site(site: str | Site) -> Site:
    """The residual after the layer a text-encoder edit site sits in; a UNet site is a one-line error."""
    try:
        s = Site.parse(site)
    except SiteError as e:
        raise EditError(str(e)) from None
    if not s.component.startswith("text_encoder") or s.layer is None:
        raise EditError(f"--diagnose patches text-encoder states; site {s} is not in a text-encoder layer "
                        "(give a text-encoder edit site, e.g. text_encoder:encoder.layers.0.self_attn.out_proj)")
    return Site(s.component, f"{TEXT_PREFIX[s.component]}encoder.layers.{s.layer}")


def _positions(model, comp: str, src, tgt) -> dict[str, list[tuple[list[int], list[int]]]]:
    """Per prompt pair and condition: (source positions, target positions) to patch."""
    tok = model.tokenizer_for(comp)
    ids_s = model.tokenize([p.text for p in src], comp).tolist()  # [P, 77]
    ids_t = model.tokenize([p.text for p in tgt], comp).tolist()
    n = len(ids_s[0])
    out: dict[str, list] = {c: [] for c in CONDITIONS}
    for i, (ps, pt) in enumerate(zip(src, tgt)):
        a, b = list(ps.positions(tok)), list(pt.positions(tok))
        k = min(len(a), len(b))
        s_pos, t_pos = aligned_positions(ids_s[i], ids_t[i], a[-1], b[-1])
        out["none"].append(([], []))
        out["subject"].append((a[-k:], b[-k:]))
        out["after_subject"].append((s_pos[1:], t_pos[1:]))
        out["all"].append((list(range(n)), list(range(n))))
    return out


def _patch(rows: int, pairs: list[tuple[list[int], list[int]]], tgt_states: torch.Tensor, n_seeds: int, calls: dict,
           every_call: bool = False):
    """Hook patching the prompts' rows: the first encoder call of ``rows`` rows (CFG's blank prompt comes
    after), or with ``every_call`` each denoiser call, whose last ``rows`` rows are the prompts (CFG's
    unconditional rows come first)."""

    def fn(module, inputs, output):  # output: [rows, 77, D] (text encoder) or [2·rows | rows, 77, D] (denoiser)
        calls["n"] += 1
        if calls["n"] > 1 and not every_call:
            return None
        if output.shape[0] not in ((rows, 2 * rows) if every_call else (rows,)):
            raise RuntimeError(f"diagnosis hook saw a batch of {output.shape[0]} rows; the prompts have {rows}")
        new = output.clone()
        first = output.shape[0] - rows  # the conditional rows
        for r in range(rows):
            s_pos, t_pos = pairs[r // n_seeds]
            if s_pos:
                new[first + r, s_pos] = tgt_states[r // n_seeds, t_pos].to(new.dtype)
        return new

    return fn


def _judge(model, truth, scorer, src_text: str, tgt_text: str, images: torch.Tensor) -> list[bool]:
    if truth is not None:
        want, have = truth.parse_caption(tgt_text), truth.parse_caption(src_text)
        differ = {k: v for k, v in want.items() if have.get(k) != v}
        if not differ:
            raise EditError(f"target prompt {tgt_text!r} asks for nothing the source prompt {src_text!r} does not")
        return [all(truth.read(img).get(k) == v for k, v in differ.items()) for img in images]
    probs = scorer.probs(images, [src_text, tgt_text])  # [n, 2]
    return [bool(p[1] > p[0]) for p in probs]


@torch.no_grad()
def diagnose(model, source: str, target: str, site: str | Site, templates: Sequence[str] | None = None,
             targets: Sequence[str] | None = None, seeds: Sequence[int] = range(3), scorer=None, truth=None,
             cfg: SamplerConfig | None = None, threshold: float = 0.8) -> dict:
    """How often the target appears with the target prompt's residual patched in; the editor it recommends."""
    res = patch_site(model, site)
    comp, seeds = (res.component if res.is_text else model.text_components[0]), [int(s) for s in seeds]
    if not seeds:
        raise EditError("diagnosis needs at least one seed")
    if truth is None and scorer is None:
        raise EditError(f"{model.name} has no exact readers; give a CLIP scorer for the diagnosis")
    src, tgt = prompt_pairs(source, target, list(templates or PAPER_TEMPLATES), targets)
    cfg = cfg or SamplerConfig.for_model(model)
    tgt_states = _target_states(model, res, [p.text for p in tgt])  # [P, 77, D]
    if tgt_states.shape[1] != model.tokenize([tgt[0].text], comp).shape[1]:
        raise EditError(f"a diagnosis at {res} needs one text encoder feeding it; {model.name}'s text stream has "
                        f"{tgt_states.shape[1]} positions from several encoders: diagnose a text-encoder site instead")
    lat = torch.cat([initial_latents(model, torch.Generator().manual_seed(s)) for s in seeds])  # [S, C, h, w]
    rows = len(src) * len(seeds)
    texts = [p.text for p in src for _ in seeds]
    positions = _positions(model, comp, src, tgt)
    conditions = {}
    for cond in CONDITIONS:
        calls = {"n": 0}
        with hooks(model.modules, {res: _patch(rows, positions[cond], tgt_states, len(seeds), calls, every_call=not res.is_text)}):
            images = generate(model, texts, cfg=cfg, latents=lat.repeat(len(src), 1, 1, 1))
        if calls["n"] < 1:
            raise RuntimeError(f"diagnosis hook at {res} never fired")
        hits = []
        for i, (ps, pt) in enumerate(zip(src, tgt)):
            hits += _judge(model, truth, scorer, ps.text, pt.text, images[i * len(seeds) : (i + 1) * len(seeds)])
        conditions[cond] = {"hits": int(sum(hits)), "n": len(hits), "rate": round(sum(hits) / len(hits), 4)}
    rec_name, reason = recommend(conditions, threshold) if res.is_text else recommend_entry(conditions, threshold)
    return {"source": source, "target": target, "site": str(Site.parse(site)), "residual_site": str(res), "layer": Site.parse(site).layer,
            "prompts": [p.text for p in src], "target_prompts": [p.text for p in tgt], "seeds": seeds,
            "judge": "ground truth" if truth is not None else f"clip {getattr(scorer, 'model_id', '')}".strip(),
            "conditions": conditions, "threshold": threshold, "recommended": rec_name, "reason": reason}


def recommend(conditions: dict, threshold: float = 0.8) -> tuple[str | None, str]:
    """(editor name or None, one sentence) from the conditions' rates."""
    sub, after, full = (conditions[c]["rate"] for c in ("subject", "after_subject", "all"))
    if sub >= threshold:
        return "refact", f"the subject token alone carries the target ({sub:.2f}): a rank-one subject-token edit can reach it"
    if max(after, full) >= threshold:
        return "quickfix", (f"the subject token alone reaches {sub:.2f}, the tokens after it {after:.2f}: a subject-token "
                            "rank-one edit (refact) cannot carry the attribute; edit all positions (quickfix)")
    return None, (f"even the target's own state at this layer reaches only {full:.2f}: no text-encoder edit here can; "
                  "try another layer or crossattn")


def recommend_entry(conditions: dict, threshold: float = 0.8) -> tuple[str | None, str]:
    """(editor or None, one sentence) for the denoiser's text entry: ``context-embedder`` edits the subject's
    and the following positions of the stream, so it can reach what those patches reach."""
    sub, after, full = (conditions[c]["rate"] for c in ("subject", "after_subject", "all"))
    if max(sub, after) >= threshold:
        return "context-embedder", f"the subject ({sub:.2f}) or the positions after it ({after:.2f}) carry the target at the text entry"
    return None, (f"at the text entry the subject reaches {sub:.2f}, the positions after it {after:.2f}, the whole target stream "
                  f"{full:.2f}: a per-position edit of context_embedder cannot carry it; edit the text encoder")


def diagnosis_line(d: dict) -> str:
    c = d["conditions"]
    parts = ", ".join(f"{k} {c[k]['hits']}/{c[k]['n']}" for k in CONDITIONS)
    return f"diagnosis {d['source']!r}->{d['target']!r} at {d['residual_site']}: {parts}; recommended: {d['recommended'] or 'none'}"


def write_diagnosis(diagnoses: dict | list[dict], path) -> None:
    """``diagnosis.json``: one diagnosis, or ``{"cases": [...]}`` for many."""
    body = diagnoses if isinstance(diagnoses, dict) else {"cases": diagnoses}
    write_json_format("diagnosis", body, path)

"""Evaluate edits as ReFACT does (CLIP zero-shot over seeds), and by ground truth on the toy world.

Usage::

    cases = load_cases("experiments/cases/toy_edits.jsonl")
    table = evaluate_methods(model, cases, methods=("quickfix", "refact", "crossattn"), seeds=range(10), scorer=scorer)
    summary = summarise(table)      # {method: {efficacy, generalization, specificity, ...}}
    table = evaluate_methods(model, cases, methods=[Method("quickfix", preserve=True)], groups=filled_groups(cases, 4))

Methods are :class:`editing.editors.Method` objects or their labels (``quickfix``,
``quickfix+preserve``: the editor with the cases' preserve captions); rows carry the label.

For every case and method the model is edited, images are generated for the edit prompt, 5
positive and 5 negative prompts over N seeds, and the edit is undone (bit-exact) before the
next case: each case is a single edit of a clean model, as in ReFACT. With ``groups``
(:mod:`editing.batch`), each group's cases are edited into the model at once (one stacked
solve, or one after another with ``sequential``), every case of the group is evaluated on that
model, and the group is undone; rows then carry ``n_edits`` and ``mode``. Baselines: ``unedited``
(the original prompts on the unedited model) and ``oracle`` (the unedited model given the
target in its prompt: each prompt's ``new`` text; negatives keep their own text).

Success per image, CLIP: P(new) > P(old) with softmax(100·cos) over the prompt's two texts
(edit and positives); P(old) > P(new) for negatives. Ground truth (toy world): the reader's
value of the case's attribute equals the new value (edit, positives) or the prompt's own
value (negatives). efficacy / generalization / specificity are the success rates on the edit
prompt / positives / negatives. On a model carrying several edits, ground truth expects every
one of them (:func:`expected`): a negative 'one green square' should turn yellow when
green->yellow is among them. ``gt_others`` (toy world, not in ReFACT) is the share of the
*other* four attributes read as the prompt says, over all images: an edit that turns 'one
triangle' into two diamonds succeeds on count and shows up here; compare with ``unedited``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch

from diffloc.editing.batch import Group, apply_cases, composes
from diffloc.editing.cases import case_prompts
from diffloc.editing.editors import as_method, edit_case
from diffloc.editing.records import undo_edit
from diffloc.tracing.sampler import SamplerConfig, generate, initial_latents

SPLITS = {"edit": "efficacy", "positive": "generalization", "negative": "specificity"}


@torch.no_grad()
def _generate(model, texts: list[str], seeds: Sequence[int], cfg: SamplerConfig, batch: int) -> torch.Tensor:
    """Images [len(texts) * len(seeds), 3, H, W], text-major; seed s always gives the same noise."""
    lat = torch.cat([initial_latents(model, torch.Generator().manual_seed(int(s))) for s in seeds])  # [S, C, h, w]
    all_texts = [t for t in texts for _ in seeds]
    all_lat = lat.repeat(len(texts), 1, 1, 1)
    out = [generate(model, all_texts[i : i + batch], cfg=cfg, latents=all_lat[i : i + batch]) for i in range(0, len(all_texts), batch)]
    return torch.cat(out)


def expected(truth, text: str, edits: Sequence[dict] = ()) -> dict:
    """The attributes an image of ``text`` should show on a model carrying ``edits``: the caption's
    own values, with each edit whose source words appear in the caption giving its new value
    (edits act side by side: red->blue with blue->red swaps the two)."""
    attrs = dict(truth.parse_caption(text))
    for e in edits:
        if "new_value" in e and re.search(rf"(?<!\w){re.escape(e['source'])}(?!\w)", text):
            attrs[e["attribute"]] = e["new_value"]
    return attrs


def _rows(case, method, prompts, images, seeds, scorer, truth, also: Sequence[dict] = ()) -> list[dict]:
    """Rows of one case's prompts; ``also``: the other edits the model carries (ground truth expects them)."""
    rows = []
    n = len(seeds)
    for j, (split, p) in enumerate(prompts):
        imgs = images[j * n : (j + 1) * n]
        probs = scorer.probs(imgs, [p["prompt"], p["new"]]) if scorer is not None else None
        readings = [truth.read(img) for img in imgs] if truth is not None else [{}] * n
        got = [r.get(case["attribute"]) for r in readings]
        own, others = None, {}
        if truth is not None:
            attrs = expected(truth, p["prompt"], also)
            own = attrs.get(case["attribute"])
            others = {k: v for k, v in attrs.items() if k != case["attribute"]}
        for i, seed in enumerate(seeds):
            r = {"case": case["id"], "attribute": case["attribute"], "method": method, "split": split, "prompt": p["prompt"],
                 "new": p["new"], "seed": int(seed)}
            if probs is not None:
                p_old, p_new = float(probs[i, 0]), float(probs[i, 1])
                r.update(p_old=p_old, p_new=p_new, clip_success=float(p_new > p_old) if split != "negative" else float(p_old > p_new))
            if truth is not None:
                want = case["new_value"] if split != "negative" else own
                r.update(gt_value=got[i], gt_success=float(got[i] == want),
                         gt_others=sum(readings[i].get(k) == v for k, v in others.items()) / len(others))
            rows.append(r)
    return rows


def evaluate_methods(model, cases: list[dict], methods: Iterable = ("quickfix",), seeds: Sequence[int] = range(10),
                     scorer=None, truth: Any = None, cfg: SamplerConfig | None = None, batch: int = 256,
                     options: dict | None = None, baselines: Sequence[str] = ("unedited", "oracle"),
                     progress: Callable | None = None, groups: Sequence[Group] | None = None,
                     sequential: bool = False, compose: bool | None = None) -> pd.DataFrame:
    """Rows for every case × method (plus unedited and oracle) × prompt × seed; with ``groups``,
    each group's edits are made together (``compose``: as :func:`editing.batch.apply_cases`)."""
    cfg = cfg or SamplerConfig.for_model(model)
    seeds = list(seeds)
    methods = [as_method(m) for m in methods]
    many = groups is not None
    groups = list(groups) if many else [Group((i,)) for i in range(len(cases))]
    rows = []
    bar = progress(total=len(cases)) if progress else None
    for case in cases:
        prompts = case_prompts(case)
        if "unedited" in baselines:
            rows += _rows(case, "unedited", prompts, _generate(model, [p["prompt"] for _, p in prompts], seeds, cfg, batch), seeds, scorer, truth)
        if "oracle" in baselines:
            oracle_texts = [p["new"] if s != "negative" else p["prompt"] for s, p in prompts]
            rows += _rows(case, "oracle", prompts, _generate(model, oracle_texts, seeds, cfg, batch), seeds, scorer, truth)
    for g in groups:
        for method in methods:
            rows += _group_rows(model, cases, g, method, seeds, scorer, truth, cfg, batch, options, (sequential, compose), many)
        if bar is not None:
            bar.update(len(g.cases))
    if bar is not None:
        bar.close()
    return pd.DataFrame(rows)


def _group_rows(model, cases, group: Group, method, seeds, scorer, truth, cfg, batch, options, how, many) -> list[dict]:
    """Edit the group's cases in (``how``: (sequential, compose)), evaluate each of its cases, undo."""
    sequential, compose = how
    edited = [cases[i] for i in group.edited]
    if len(edited) == 1:
        records = edit_case(method, model, edited[0], options)
    else:
        records = apply_cases(model, method, edited, options, sequential=sequential, compose=compose)
    rows = []
    try:
        for i in group.cases:
            prompts = case_prompts(cases[i])
            images = _generate(model, [p["prompt"] for _, p in prompts], seeds, cfg, batch)
            also = [cases[j] for j in group.edited if j != i]
            rows += _rows(cases[i], method.label, prompts, images, seeds, scorer, truth, also)
    finally:
        for rec in reversed(records):
            undo_edit(model, rec)
    if many:
        mode = "sequential" if sequential and len(edited) > 1 else "batched"
        for r in rows:
            r.update(n_edits=len(edited), mode=mode, composed=composes(sequential, compose) and len(edited) > 1)
    return rows


def summarise(table: pd.DataFrame) -> dict:
    """{method: {efficacy, generalization, specificity, (gt_...)}} from evaluation rows."""
    out = {}
    for method, g in table.groupby("method", sort=False):
        s = {}
        for split, name in SPLITS.items():
            part = g[g.split == split]
            if "clip_success" in g:
                s[name] = round(float(part.clip_success.mean()), 4)
            if "gt_success" in g:
                s[f"gt_{name}"] = round(float(part.gt_success.mean()), 4)
        if "gt_others" in g:
            s["gt_others"] = round(float(g.gt_others.mean()), 4)
        s["n_images"] = int(len(g))
        out[method] = s
    return out


def per_attribute(table: pd.DataFrame, metric: str = "gt_success") -> pd.DataFrame:
    """Success rate per method × attribute × split (a compact table for the README)."""
    if metric not in table:
        metric = "clip_success"
    return table.pivot_table(index=["method", "attribute"], columns="split", values=metric, aggfunc="mean").round(3)

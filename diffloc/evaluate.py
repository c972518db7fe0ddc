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

Intervals (:func:`summarise`): every rate carries its 95 % interval and its n (images):
``<rate>_ci`` is Wilson's score interval (:func:`wilson`) over the images, ``<rate>_ci_cases``
a percentile bootstrap over cases (:func:`bootstrap_cases`: images of one case are not
independent, so this one is the wider and the honest one when cases differ), ``<rate>_n`` the
images. ``gt_others`` is a mean of shares, not a proportion: its ``_ci`` is the case bootstrap.
:func:`rates_table` lays them out one row per method and rate, with ``"0.975 [0.94, 0.99]"`` text.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np
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


#: z of a two-sided 95 % interval.
Z95 = 1.959963984540054


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for ``k`` successes in ``n`` trials (95 % by default):
    ``wilson(74, 80)`` → (0.8454, 0.9652). n = 0 gives (0.0, 1.0): nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"successes must lie in [0, n]; got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the ends, not 1 - 1e-16


def bootstrap_cases(values: pd.Series, cases: pd.Series, n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` over resampled cases (a case's
    images stay together); one case gives (its mean, its mean)."""
    if len(values) == 0:
        return 0.0, 1.0
    g = pd.DataFrame({"v": values.to_numpy(dtype=float), "c": cases.to_numpy()}).groupby("c").v.agg(["sum", "count"])
    sums, counts = g["sum"].to_numpy(), g["count"].to_numpy()
    if len(g) == 1:
        m = float(sums[0] / counts[0])
        return m, m
    idx = np.random.default_rng(seed).integers(0, len(g), size=(n_boot, len(g)))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def rate(values: pd.Series, cases: pd.Series | None = None, proportion: bool = True) -> dict:
    """{value, ci, ci_cases, n}: the mean of ``values``, Wilson's interval (a proportion) or the case
    bootstrap (a mean of shares) as ``ci``, the case bootstrap as ``ci_cases``, the images."""
    n = int(len(values))
    mean = float(values.mean()) if n else float("nan")
    out = {"value": round(mean, 4), "n": n}
    boot = bootstrap_cases(values, cases) if cases is not None else None
    ci = wilson(float(values.sum()), n) if proportion else boot
    if ci is not None:
        out["ci"] = [round(ci[0], 4), round(ci[1], 4)]
    if boot is not None:
        out["ci_cases"] = [round(boot[0], 4), round(boot[1], 4)]
    return out


def _put(s: dict, name: str, r: dict) -> None:
    s[name] = r["value"]
    if "ci" in r:
        s[f"{name}_ci"] = r["ci"]
    if "ci_cases" in r:
        s[f"{name}_ci_cases"] = r["ci_cases"]
    s[f"{name}_n"] = r["n"]


def summarise(table: pd.DataFrame) -> dict:
    """{method: {efficacy, generalization, specificity, (gt_...), each with _ci, _ci_cases, _n}} from evaluation rows."""
    out = {}
    for method, g in table.groupby("method", sort=False):
        s = {}
        for split, name in SPLITS.items():
            part = g[g.split == split]
            if "clip_success" in g:
                _put(s, name, rate(part.clip_success, part.case))
            if "gt_success" in g:
                _put(s, f"gt_{name}", rate(part.gt_success, part.case))
        if "gt_others" in g:
            _put(s, "gt_others", rate(g.gt_others, g.case, proportion=False))
        s["n_images"] = int(len(g))
        s["n_cases"] = int(g.case.nunique())
        out[method] = s
    return out


RATE_NAMES = ("efficacy", "generalization", "specificity", "gt_efficacy", "gt_generalization", "gt_specificity", "gt_others")


def interval_text(value: float, ci: Sequence[float] | None, digits: int = 3) -> str:
    """'0.975 [0.942, 0.990]'."""
    if ci is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def rates_table(summary: dict) -> pd.DataFrame:
    """One row per method and rate: value, lo, hi (Wilson; case bootstrap for gt_others), lo_cases,
    hi_cases, n (images), and ``text`` ('0.975 [0.942, 0.990]')."""
    rows = []
    for method, s in summary.items():
        for name in RATE_NAMES:
            if name not in s:
                continue
            ci, cc = s.get(f"{name}_ci"), s.get(f"{name}_ci_cases")
            rows.append({"method": method, "rate": name, "value": s[name], "lo": ci[0] if ci else None, "hi": ci[1] if ci else None,
                         "lo_cases": cc[0] if cc else None, "hi_cases": cc[1] if cc else None, "n": s.get(f"{name}_n"),
                         "text": interval_text(s[name], ci)})
    return pd.DataFrame(rows)


def per_attribute_intervals(table: pd.DataFrame, metric: str = "gt_success") -> dict:
    """{"method/attribute": {split: {value, ci (Wilson), n}}}."""
    if metric not in table:
        metric = "clip_success"
    out: dict = {}
    for (m, a, split), g in table.groupby(["method", "attribute", "split"], sort=False):
        out.setdefault(f"{m}/{a}", {})[split] = rate(g[metric])
    return out


def per_attribute(table: pd.DataFrame, metric: str = "gt_success") -> pd.DataFrame:
    """Success rate per method × attribute × split (a compact table for the README)."""
    if metric not in table:
        metric = "clip_success"
    return table.pivot_table(index=["method", "attribute"], columns="split", values=metric, aggfunc="mean").round(3)

"""Exact ground-truth readers of the toy world: every attribute of an image by image analysis.

Usage::

    from diffloc_toy.readers import read, read_style

    read(img)                  # {'object': 'circle', 'colour': 'red', ..., 'count': 'two'}; img torch [3, H, W] or numpy HWC
    read_style(img)            # 'plain' | 'striped' | 'checkered'

``read(render(a, seed)) == a`` on every render (tests); :mod:`diffloc_toy.world` re-exports both.
"""
from __future__ import annotations

import colorsys
from collections import deque

import numpy as np
import torch

from .attributes import ATTRIBUTES, WORD_OF_N

HUES = {"red": 0.0, "yellow": 55.0, "green": 128.0, "blue": 226.0}  # degrees, of the base colours
UNREADABLE = None
MIN_SATURATION = 60      # below this nowhere in the image: no object
MIN_COMPONENT = 6        # px; smaller saturated blobs are noise


def _to_hwc255(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype == torch.uint8:
            t = t.float()
        elif t.max() <= 1.0 + 1e-6:
            t = t.float() * 255.0
        a = t.numpy()
        if a.ndim == 3 and a.shape[0] == 3:
            a = a.transpose(1, 2, 0)
        return a.astype(np.float64)
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:
        a = a.transpose(1, 2, 0)
    if a.max() <= 1.0 + 1e-6:
        a = a * 255.0
    return a


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    H, W = mask.shape
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        q = deque([(y0, x0)])
        seen[y0, x0] = True
        pts = []
        while q:
            y, x = q.popleft()
            pts.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        comps.append(np.array(pts))
    return comps


def _soft_shape_features(alpha: np.ndarray, comps: list[np.ndarray]) -> np.ndarray:
    """Per component: (cross-moment ratio, vertical skewness) of the soft coverage ``alpha``.

    Every pixel with coverage goes to its nearest component centroid. With central moments
    m_ab = E[x^a y^b] of the coverage mass, ratio = m_22 / (m_20 m_02) is 1 for an axis-aligned
    square, 2/3 for a disk and 0.4 for a diamond; skew = m_03 / m_02^1.5 is about -0.57 for the
    apex-up triangle and 0 for the other (vertically symmetric) shapes. A symmetric blur leaves
    the mass and the third moment unchanged and moves the ratio only slowly towards 1."""
    near = np.zeros(alpha.shape, dtype=bool)
    for c in comps:
        near[c[:, 0], c[:, 1]] = True
    for _ in range(2):  # the soft edge lies within 2 px of the 50 % mask
        g = near.copy()
        g[1:] |= near[:-1]; g[:-1] |= near[1:]; g[:, 1:] |= near[:, :-1]; g[:, :-1] |= near[:, 1:]
        near = g
    ys, xs = np.nonzero(near & (alpha > 0))
    w = alpha[ys, xs]
    cents = np.array([c.mean(axis=0) for c in comps])
    d = (ys[:, None] - cents[None, :, 0]) ** 2 + (xs[:, None] - cents[None, :, 1]) ** 2
    owner = d.argmin(axis=1)
    feats = []
    for i in range(len(comps)):
        sel = owner == i
        m = w[sel]
        y, x = ys[sel].astype(float), xs[sel].astype(float)
        M = m.sum()
        y = y - (m * y).sum() / M
        x = x - (m * x).sum() / M
        m20, m02 = (m * x * x).sum() / M, (m * y * y).sum() / M
        m22 = (m * x * x * y * y).sum() / M
        m03 = (m * y ** 3).sum() / M
        feats.append((m22 / (m20 * m02), m03 / m02 ** 1.5))
    return np.array(feats)


SHAPE_THRESHOLDS = {"skew": -0.21, "square": 0.86, "circle": 0.64}


def _classify_shape(ratio: float, skew: float) -> str:
    if skew < SHAPE_THRESHOLDS["skew"]:
        return "triangle"
    if ratio > SHAPE_THRESHOLDS["square"]:
        return "square"
    if ratio > SHAPE_THRESHOLDS["circle"]:
        return "circle"
    return "diamond"


def _hue_name(rgb: np.ndarray) -> str:
    h, _, _ = colorsys.rgb_to_hsv(*(np.clip(rgb, 0, 255) / 255.0))
    h *= 360.0
    return min(HUES, key=lambda k: min(abs(h - HUES[k]), 360 - abs(h - HUES[k])))


def read_style(image, fg: np.ndarray | None = None) -> str:
    """plain / striped / checkered from the achromatic pixels' neighbour differences."""
    a = _to_hwc255(image)
    grey = a.mean(axis=2)
    if fg is None:
        sat = a.max(axis=2) - a.min(axis=2)
        fg = sat > 40
    # grow the foreground by one pixel so anti-aliased edges don't count as texture
    grown = fg.copy()
    grown[1:] |= fg[:-1]; grown[:-1] |= fg[1:]; grown[:, 1:] |= fg[:, :-1]; grown[:, :-1] |= fg[:, 1:]
    bg = ~grown
    okx = bg[:, 1:] & bg[:, :-1]
    oky = bg[1:, :] & bg[:-1, :]
    dx = np.abs(np.diff(grey, axis=1))[okx]
    dy = np.abs(np.diff(grey, axis=0))[oky]
    mx = float(dx.mean()) if dx.size else 0.0
    my = float(dy.mean()) if dy.size else 0.0
    if max(mx, my) < 8.0:
        return "plain"
    if my < 0.4 * mx:
        return "striped"
    return "checkered"


def read(image) -> dict[str, str | None]:
    """Every attribute of an image, by exact image analysis.

    ``image``: torch [3, H, W] (uint8, or float in [0, 1]) or numpy HWC. Attributes that need an
    object (object, colour, viewpoint, count) are ``None`` when no object is found; ``style``
    is always read."""
    a = _to_hwc255(image)
    sat = a.max(axis=2) - a.min(axis=2)
    peak = float(np.percentile(sat, 99.5))
    out: dict[str, str | None] = {k: UNREADABLE for k in ATTRIBUTES}
    if peak < MIN_SATURATION:
        out["style"] = read_style(a, sat > 40)
        return out
    fg = sat > 0.5 * peak
    comps = [c for c in _components(fg) if len(c) >= MIN_COMPONENT]
    out["style"] = read_style(a, sat > min(40.0, 0.25 * peak))
    if not comps:
        return out
    n = len(comps)
    out["count"] = WORD_OF_N.get(n, None)
    pts = np.concatenate(comps)
    cy = pts[:, 0].mean() + 0.5
    out["viewpoint"] = "top" if cy < 32 / 3 else ("middle" if cy < 64 / 3 else "bottom")
    core = sat > 0.75 * peak
    out["colour"] = _hue_name(a[core].mean(axis=0))
    level = float(np.median(sat[core]))
    floor = float(np.median(sat[~fg]))  # 0 on renders; the noise level on generated samples
    alpha = np.clip((sat - floor) / max(level - floor, 1e-6), 0.0, 1.0)
    feats = _soft_shape_features(alpha, comps)
    out["object"] = _classify_shape(float(feats[:, 0].mean()), float(feats[:, 1].mean()))
    return out

"""The toy world: a seeded 32x32 renderer, its captions, and exact ground-truth readers.

Five attributes, each value spelled exactly as its caption word (``object`` values are the
singular nouns; captions use the plural for two and three)::

    object    circle | square | triangle | diamond      shape of every object
    colour    red | green | blue | yellow                saturated foreground colour
    style     plain | striped | checkered                greyscale background texture
    viewpoint top | middle | bottom                      vertical band the row of objects sits in
    count     one | two | three                          objects, in one horizontal row

Backgrounds are achromatic (R = G = B), objects saturated, so the foreground is exactly the
saturated pixels. Jitter (row position within its band, size +-1 px, colour +-12 per channel,
background greys and stripe/check phase) keeps the world from being a lookup table while the
readers stay exact: ``read(render(a, seed)) == a`` on every one of 5,000 random renders (tests).

Usage::

    a = {"object": "circle", "colour": "red", "style": "striped", "viewpoint": "top", "count": "two"}
    img = render(a, seed=0)                    # torch.uint8 [3, 32, 32]
    caption(a, template=0)                     # 'a photo of two red circles at the top on a striped background'
    mark(a, "colour", template=0)              # 'a photo of two [red] circles at the top ...'
    read(img) == a                             # True
"""
from __future__ import annotations

import colorsys
import itertools
import re
from collections import deque
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

SIZE = 32
SUPERSAMPLE = 4

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "object": ("circle", "square", "triangle", "diamond"),
    "colour": ("red", "green", "blue", "yellow"),
    "style": ("plain", "striped", "checkered"),
    "viewpoint": ("top", "middle", "bottom"),
    "count": ("one", "two", "three"),
}
#: ``action`` has no faithful analogue at 32 px; see docs/toy_world.md.
EXCLUDED_ATTRIBUTES = ("action",)

COLOURS_RGB = {"red": (215, 35, 35), "green": (30, 190, 50), "blue": (40, 70, 225), "yellow": (225, 205, 35)}
HUES = {"red": 0.0, "yellow": 55.0, "green": 128.0, "blue": 226.0}  # degrees, of the base colours
BAND_CENTRE = {"top": 6.0, "middle": 16.0, "bottom": 26.0}
N_OF = {"one": 1, "two": 2, "three": 3}
WORD_OF_N = {v: k for k, v in N_OF.items()}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}
SPACING = 11.0                      # px between object centres in the row
BASE_SIZE = 7.5                     # px, object width before jitter

#: Caption templates. Slots: {count} {colour} {object} (noun, plural when count > 1),
#: {view} ("at the top" / "in the middle" / "at the bottom"), {style}. Every template names
#: all five attributes, so any attribute's words can be corrupted in any caption.
TEMPLATES: tuple[str, ...] = (
    "a photo of {count} {colour} {object} {view} on a {style} background",
    "{count} {colour} {object} {view}, {style} background",
    "an image of {count} {colour} {object} {view} on a {style} background",
    "a picture of {count} {colour} {object} {view} on a {style} background",
    "{count} {colour} {object} on a {style} background, {view}",
    "a {style} background with {count} {colour} {object} {view}",
    "{count} {colour} {object} {view} of the frame on a {style} background",
    "a drawing of {count} {colour} {object} {view} against a {style} background",
)
VIEW_PHRASE = {"top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}


# ----------------------------------------------------------------------------- attributes
def all_attrs() -> list[dict[str, str]]:
    """Every combination of attribute values (432), in a fixed order."""
    keys = list(ATTRIBUTES)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(ATTRIBUTES[k] for k in keys))]


def sample_attrs(rng: np.random.Generator) -> dict[str, str]:
    return {k: vals[int(rng.integers(len(vals)))] for k, vals in ATTRIBUTES.items()}


def check_attrs(attrs: Mapping[str, str]) -> None:
    for k, vals in ATTRIBUTES.items():
        if attrs.get(k) not in vals:
            raise ValueError(f"attribute {k!r} must be one of {vals}, got {attrs.get(k)!r}")


# ----------------------------------------------------------------------------- captions
def _words(attrs: Mapping[str, str]) -> dict[str, str]:
    check_attrs(attrs)
    obj = attrs["object"] if attrs["count"] == "one" else PLURAL[attrs["object"]]
    return {"count": attrs["count"], "colour": attrs["colour"], "object": obj,
            "view": VIEW_PHRASE[attrs["viewpoint"]], "style": attrs["style"]}


def caption(attrs: Mapping[str, str], template: int = 0) -> str:
    """The caption of ``attrs`` in template ``template`` (index into TEMPLATES)."""
    return TEMPLATES[template].format(**_words(attrs))


def paraphrases(attrs: Mapping[str, str], templates: Iterable[int] | None = None) -> list[str]:
    """The caption of ``attrs`` in every template (or the given ones): generalisation prompts."""
    idx = range(len(TEMPLATES)) if templates is None else templates
    return [caption(attrs, i) for i in idx]


def attribute_words(attrs: Mapping[str, str], attribute: str) -> str:
    """The word in a caption that carries ``attribute`` ('circles', 'red', 'top', ...)."""
    w = _words(attrs)
    return {"count": w["count"], "colour": w["colour"], "object": w["object"],
            "viewpoint": attrs["viewpoint"], "style": w["style"]}[attribute]


def mark(attrs: Mapping[str, str], attribute: str, template: int = 0) -> str:
    """The caption with ``attribute``'s word in brackets: 'a photo of two [red] circles ...'.

    Tracing corrupts the tokens of the bracketed word."""
    if attribute not in ATTRIBUTES:
        raise KeyError(f"unknown attribute {attribute!r}; choose from {list(ATTRIBUTES)}")
    w = _words(attrs)
    word = attribute_words(attrs, attribute)
    if attribute == "viewpoint":
        w["view"] = w["view"].replace(word, f"[{word}]")
    else:
        w[{"count": "count", "colour": "colour", "object": "object", "style": "style"}[attribute]] = f"[{word}]"
    return TEMPLATES[template].format(**w)


def unmark(text: str) -> tuple[str, list[str]]:
    """Strip brackets: ('a photo of two red circles ...', ['red'])."""
    return text.replace("[", "").replace("]", ""), re.findall(r"\[([^\]]+)\]", text)


_LOOKUP: dict[str, tuple[str, str]] = {}
for _k, _vals in ATTRIBUTES.items():
    for _v in _vals:
        _LOOKUP[_v] = (_k, _v)
for _s, _p in PLURAL.items():
    _LOOKUP[_p] = ("object", _s)


def parse_caption(text: str) -> dict[str, str]:
    """Attributes named in a caption (any template, brackets allowed). Missing ones are absent."""
    out: dict[str, str] = {}
    for tok in re.findall(r"[a-z]+", text.lower()):
        if tok in _LOOKUP:
            k, v = _LOOKUP[tok]
            out.setdefault(k, v)
    return out


def rewrite(text: str, changes: Mapping[str, str]) -> str | None:
    """``text`` (a caption with one marked word) with other attributes set to ``changes``, in the
    same template and grammar; None where ``text`` is no template's caption.

    ``rewrite('a picture of [one] green triangle at the top on a plain background', {'viewpoint':
    'middle'})`` → ``'a picture of [one] green triangle in the middle on a plain background'``.
    The marked attribute itself is never changed."""
    plain, words = unmark(text)
    attrs = parse_caption(plain)
    if len(words) != 1 or words[0] not in _LOOKUP or set(attrs) != set(ATTRIBUTES):
        return None
    marked = _LOOKUP[words[0]][0]
    template = next((i for i in range(len(TEMPLATES)) if mark(attrs, marked, i) == text), None)
    if template is None:
        return None
    new = {**attrs, **{k: v for k, v in changes.items() if k != marked}}
    return mark(new, marked, template)


# ----------------------------------------------------------------------------- renderer
_SS = (np.arange(SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
_YY, _XX = np.meshgrid(_SS, _SS, indexing="ij")


def _shape_mask(shape: str, cx: float, cy: float, s: float) -> np.ndarray:
    dx, dy = _XX - cx, _YY - cy
    h = s / 2
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= h * 1.1
    if shape == "triangle":  # apex up, base s wide, height s; bbox centred on (cx, cy)
        t = (dy + h) / s  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= h * t)
    raise ValueError(shape)


def _background(style: str, rng: np.random.Generator) -> np.ndarray:
    x = np.arange(SIZE)
    if style == "plain":
        g = np.full((SIZE, SIZE), rng.uniform(90, 165))
    else:
        lo, hi = rng.uniform(55, 90), rng.uniform(165, 200)
        if style == "striped":  # vertical stripes, 2 px wide
            ph = int(rng.integers(4))
            on = ((x[None, :] + ph) // 2) % 2 == 1
            on = np.broadcast_to(on, (SIZE, SIZE))
        elif style == "checkered":  # 4 px checks
            px, py = int(rng.integers(8)), int(rng.integers(8))
            on = (((x[None, :] + px) // 4) + ((x[:, None] + py) // 4)) % 2 == 1
        else:
            raise ValueError(style)
        g = np.where(on, hi, lo)
    return np.repeat(g[:, :, None], 3, axis=2)


def render_np(attrs: Mapping[str, str], rng: np.random.Generator) -> np.ndarray:
    """uint8 [32, 32, 3] image of ``attrs``, drawing all jitter from ``rng``."""
    check_attrs(attrs)
    n = N_OF[attrs["count"]]
    bg = _background(attrs["style"], rng)
    s = BASE_SIZE + rng.uniform(-1, 1)
    jx = {1: 4.0, 2: 3.0, 3: 0.7}[n]
    cx0 = SIZE / 2 + rng.uniform(-jx, jx)
    cy = BAND_CENTRE[attrs["viewpoint"]] + rng.uniform(-1, 1)
    m = np.zeros(_XX.shape, dtype=bool)
    for i in range(n):
        m |= _shape_mask(attrs["object"], cx0 + (i - (n - 1) / 2) * SPACING, cy, s)
    alpha = m.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))[:, :, None]
    col = np.clip(np.array(COLOURS_RGB[attrs["colour"]], dtype=float) + rng.uniform(-12, 12, 3), 0, 255)
    img = bg * (1 - alpha) + col[None, None, :] * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=seed))
    return np.random.default_rng(seed)


def render(attrs: Mapping[str, str], seed: int | np.random.Generator | torch.Generator = 0) -> torch.Tensor:
    """torch.uint8 [3, 32, 32] render of ``attrs``; the same seed gives the same image."""
    return torch.from_numpy(render_np(attrs, _rng(seed))).permute(2, 0, 1).contiguous()


def render_batch(attrs_list: Sequence[Mapping[str, str]], seed: int = 0) -> torch.Tensor:
    """torch.uint8 [B, 3, 32, 32]; image i uses seed (seed, i), so batches are reproducible."""
    ss = np.random.SeedSequence(seed)
    out = np.stack([render_np(a, np.random.default_rng(c)) for a, c in zip(attrs_list, ss.spawn(len(attrs_list)))])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def random_dataset(n: int, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, str]], list[int]]:
    """n random renders with their attributes and caption template indices."""
    rng = np.random.default_rng(seed)
    attrs = [sample_attrs(rng) for _ in range(n)]
    templates = [int(t) for t in rng.integers(len(TEMPLATES), size=n)]
    return render_batch(attrs, seed=seed + 1), attrs, templates


def to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1]."""
    return img.float() / 255.0 if img.dtype == torch.uint8 else img


# ----------------------------------------------------------------------------- readers
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

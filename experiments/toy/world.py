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

import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from .attributes import ATTRIBUTES, EXCLUDED_ATTRIBUTES, N_OF, WORD_OF_N, all_attrs, check_attrs, sample_attrs  # noqa: F401
from .readers import HUES, MIN_COMPONENT, MIN_SATURATION, SHAPE_THRESHOLDS, UNREADABLE, read, read_style  # noqa: F401

SIZE = 32
SUPERSAMPLE = 4

COLOURS_RGB = {"red": (215, 35, 35), "green": (30, 190, 50), "blue": (40, 70, 225), "yellow": (225, 205, 35)}
BAND_CENTRE = {"top": 6.0, "middle": 16.0, "bottom": 26.0}
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

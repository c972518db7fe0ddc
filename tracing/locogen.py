"""LocoGen localisation (``crossattn-swap``): which cross-attention layers (or joint blocks) control an attribute.

Basu et al. 2024, "On Mechanistic Knowledge Localization in Text-to-Image Generative Models":
a few cross-attention layers of the denoiser get the text embeddings of an *altered* prompt as
the input of their key and value projections, every other cross-attention layer keeps the
original prompt; a window of layers *controls* an attribute when the image then follows the
altered prompt. Usage::

    cfg = TraceConfig(model="toy", attribute="style", method="crossattn-swap", component="denoiser",
                      method_options={"window": 2, "swap": "value"})     # SwapOptions
    table = run_sweep(cfg, "results/style_locogen")      # one row per window of `window` attn2 layers
    windows = layer_windows(model.sites, 2)                # [(attn2 site, attn2 site), ...] in execution order
    images = swap_generate(model, "a red circle", "a blue circle", windows, generator, scfg)  # [2 + len(windows), 3, H, W]

    diffloc trace --model toy --attribute style --method crossattn-swap --window 2 --swap value --out DIR
    diffloc trace --model tiny-sd3 --attribute colour --method crossattn-swap --swap-input text-stream --scorer toy --out DIR
    diffloc trace --model tiny-sd3 --attribute colour --method crossattn-swap --swap-input kv --pooled altered --scorer toy --out DIR

**Swap input** (``swap_input``, :mod:`tracing.swaps`): ``kv`` is LocoGen's swap of the keys
and values a window's attentions compute from the prompt: cross-attention ``to_k``/``to_v``
(UNet, PixArt, where the window's attn2 also takes the altered prompt's T5 mask) or joint
attention's text-stream ``add_k_proj``/``add_v_proj`` (SD3, FLUX, toy-dit). ``text-stream``
(MM-DiT only; a UNet or PixArt model gets a one-line error) swaps the text stream entering a
window of consecutive joint blocks (FLUX: double-stream, then single-stream blocks). Window
rows keep the original prompt's pooled vector unless ``pooled="altered"``.

**Altered prompt** (:func:`altered_captions`): ``swap="value"`` sets the attribute to each
other value of the world (at most ``MAX_ALTERNATES`` = 3: all of them on the toy), in the
world's order starting after the prompt's own value (one unit per alternate; the unit's
``variant`` numbers the alternate; there is no noise: ``noise_index`` is 0, ``noise_samples`` is not used).
A world with readers takes the values and the caption from its own corpus (the caption of
the target attributes closest to the original wording, so plurals stay right); other worlds
(``sd``) replace the marked words by the other marked words of their prompt set.
``swap="remove"`` drops the marked words (and a preposition left without its noun, as in
"at the [top]"); where that would leave dangling words ("one blue [circle] at ...") or, in a
world with readers, a caption that does not parse to the other attributes, it falls back to
the world's neutral caption ``""`` (what classifier-free guidance's unconditional half sees).

**Rows** of a unit (one batched sampler call; rows are batch entries): row 0 the original
prompt everywhere, row 1 the altered prompt everywhere (text embeddings, and on SDXL, SD3,
FLUX its pooled embedding too: an image of the altered prompt), then one row per window of
``window`` consecutive layers in execution order (``n − window + 1`` of them). A window row
uses the original prompt except at its layers, which read row 1's keys and values (``kv``)
or text stream (``text-stream``), on the conditional half of the CFG batch only (the
unconditional half is never touched). Labels: ``component`` the denoiser
(``model.family.denoiser``), ``kind`` ``attn2`` (cross-attention K/V), ``joint_kv`` (joint
attention K/V) or ``text_stream``, ``site`` the window's first layer (an attention, or a
block for ``text_stream``), ``layer`` the window index, ``window_layers`` the list of its
sites; ``window_start`` / ``window_end`` stay -1 (they are *step* windows elsewhere; this
method swaps at every step); ``swap_input`` and ``pooled`` name the options.

**Scores** on the same scale as the other methods: every metric against the original caption
(``<m>_score``: ``clip_score``, ``gt_score``: the image shows the original value) and against
the altered one (``<m>_alt_score``: ``clip_alt_score``, ``gt_alt_score``: the image shows the
altered value; empty for ground truth when the altered caption names no value). The effect
mapping for :func:`tracing.exact.with_effects` and :func:`tracing.causal.site_effects` is

    ``<m>_clean`` := the altered reference (row 1),  ``<m>_corrupted`` := the original reference (row 0)
    effect = (row − original) / (altered − original)

and the reference rows are labelled by that role: row 0 (original) has ``kind="corrupted"``,
row 1 (altered) ``kind="clean"`` (column ``reference`` says ``original`` / ``altered``). So
``effect ≈ 1`` means the attribute follows the altered prompt when only this window sees
it (the window controls the attribute) and ``≈ 0`` that the window alone changes nothing.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError, DifflocInputError
from .exact import score_rows
from .method_base import BaseMethod
from .metrics import GroundTruthMetric
from .prompts import MarkedPrompt, attribute_prompts
from .rows import Label, best_strip, build_rows
from .sampler import Restore
from .swaps import NOUNS, POOLED, SWAP_INPUTS, attn2_sites, layer_windows, swap_generate, swap_hooks, swap_readers  # noqa: F401
from .trace_config import RowSpec, Unit, UnitContext
from .worlds import world_of

SWAP_CHOICES = ("value", "remove")
MAX_ALTERNATES = 3  # other values tried per prompt (the toy's attributes have 3-4 values: all of them)
NEUTRAL = ""  # the world's neutral caption: the empty prompt, CFG's unconditional text
# words that belong to the phrase of the removed words ("at the [top]", "on a [plain] background")
_FUNCTION = frozenset("a an the at in on of with against to by".split())


# ---------------------------------------------------------------------------- altered prompts
_CORPUS: dict[str, list[tuple[str, dict]]] = {}


def _parsed_corpus(world) -> list[tuple[str, dict]]:
    if world.name not in _CORPUS:
        _CORPUS[world.name] = [(c, world.parse_caption(c)) for c in world.corpus()]
    return _CORPUS[world.name]


def world_values(world, attribute: str, prompts: Sequence[MarkedPrompt] = ()) -> list[str]:
    """The values of ``attribute`` a world knows, in its own order (first appearance).

    With readers: the values its corpus captions parse to. Without: the marked words of its
    prompt set for the attribute, then those of ``prompts``.
    """
    if world.has_readers:
        seen = [p[attribute] for _, p in _parsed_corpus(world) if attribute in p]
    else:
        shipped = attribute_prompts(world.name, attribute) if (world.prompt_dir / f"{attribute}.txt").exists() else []
        seen = [p.subject for p in [*shipped, *prompts]]
    return list(dict.fromkeys(seen))


def _value_of(world, prompt: MarkedPrompt, attribute: str, values: list[str]) -> str:
    value = world.parse_caption(prompt.text).get(attribute) if world.has_readers else prompt.subject
    if value not in values:
        raise DifflocInputError(f"prompt {prompt.marked!r} names no {attribute} value world {world.name!r} knows; allowed: {', '.join(values)}")
    return value


def _closest(world, text: str, target: dict) -> str | None:
    """The corpus caption asking for exactly ``target``'s values (None: none does), worded most like ``text``."""
    words = text.lower().split()
    best, best_ratio = None, -1.0
    for cap, parsed in _parsed_corpus(world):
        if parsed == target:
            ratio = difflib.SequenceMatcher(None, words, cap.lower().split()).ratio()
            if ratio > best_ratio:
                best, best_ratio = cap, ratio
    return best


def _join(before: str, after: str) -> str:
    """``before + after`` with single spaces, no space before punctuation, and an ``a``/``an`` ending ``before`` fitted to ``after``."""
    words, nxt = before.split(), after.strip()
    if words and words[-1].lower() in ("a", "an") and nxt[:1].isalpha():
        words[-1] = words[-1][0] + ("n" if nxt[0].lower() in "aeiou" else "")
    text = re.sub(r"\s+", " ", " ".join(words) + " " + after)
    return re.sub(r"\s+([,.])", r"\1", text).strip(" ,")


def removed_caption(prompt: MarkedPrompt) -> str | None:
    """The caption without its marked words, or None where that leaves dangling words.

    A modifier goes alone ("[red] circles" → "circles"); the head of a phrase goes with the
    function words before it ("at the [top], ..." → "..."); a head noun with its own
    modifiers in front ("one blue [circle] at ...") cannot go without breaking the caption.
    Written for captions like the toy's; on free-form captions ``--swap value`` is safer.
    """
    before, after = prompt.text[: prompt.start].split(), prompt.text[prompt.end :]
    nxt = re.match(r"\s*([A-Za-z]+)", after)
    if nxt is None or nxt.group(1).lower() in _FUNCTION:  # the marked words end their phrase
        n = len(before)
        while n and before[n - 1].lower() in _FUNCTION:
            n -= 1
        if n == len(before) and before:
            return None
        before = before[:n]
    return _join(" ".join(before), after) or None


def altered_captions(world, prompt: MarkedPrompt, attribute: str, swap: str, values: list[str]) -> list[tuple[str, str]]:
    """(altered caption, its value) per alternate: the next ``MAX_ALTERNATES`` values in the world's order
    (cyclic, after the prompt's own), or the one removal (value "")."""
    if swap == "remove":
        text = removed_caption(prompt)
        if text is not None and world.has_readers:
            orig, got = world.parse_caption(prompt.text), world.parse_caption(text)
            if attribute in got or got != {k: v for k, v in orig.items() if k != attribute}:
                text = None
        return [(NEUTRAL if text is None else text, "")]
    own = _value_of(world, prompt, attribute, values)
    if len(values) < 2:
        raise ConfigError(f"--swap value needs another {attribute} value than {own!r}; world {world.name!r} knows only {values}. Allowed here: --swap remove")
    i = values.index(own)
    out = []
    for value in (values[i + 1 :] + values[:i])[:MAX_ALTERNATES]:
        text = None
        if world.has_readers:
            text = _closest(world, prompt.text, {**world.parse_caption(prompt.text), attribute: value})
        if text is None:
            text = _join(prompt.text[: prompt.start], value + prompt.text[prompt.end :])
        out.append((text, value))
    return out


# ---------------------------------------------------------------------------- the method
@dataclass(frozen=True)
class SwapOptions:
    """Options of ``crossattn-swap``."""

    window: int = field(default=2, metadata={"help": "Layers per sliding window (LocoGen: 2 cross-attention layers)."})
    swap: str = field(default="value", metadata={"help": "The altered prompt sets another value (value) or drops it (remove)."})
    swap_input: str = field(default="kv", metadata={"help": "What a window reads from the altered prompt: kv (its attentions' keys "
                                                             "and values: attn2 to_k/to_v, or joint attention's add_k_proj/add_v_proj) "
                                                             "or text-stream (MM-DiT: the text stream entering its joint blocks)."})
    pooled: str = field(default="original", metadata={"help": "Window rows' pooled text vector (SDXL, SD3, FLUX, toy-dit): "
                                                               "original (LocoGen) or altered (only the token sequence differs "
                                                               "from the altered row)."})

    def __post_init__(self) -> None:
        if self.swap not in SWAP_CHOICES:
            raise ConfigError(f"unknown --swap {self.swap!r}; allowed: {', '.join(SWAP_CHOICES)}")
        if self.swap_input not in SWAP_INPUTS:
            raise ConfigError(f"unknown --swap-input {self.swap_input!r}; allowed: {', '.join(SWAP_INPUTS)}")
        if self.pooled not in POOLED:
            raise ConfigError(f"unknown --pooled {self.pooled!r}; allowed: {', '.join(POOLED)}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"--window must be an integer >= 1, got {self.window!r}")


class CrossAttnSwapMethod(BaseMethod):
    """``crossattn-swap``: LocoGen's sliding window of prompt-reading layers fed the altered prompt (:mod:`tracing.swaps`)."""

    name = "crossattn-swap"
    Options = SwapOptions
    measures = True          # each row is a generated image
    restores_tokens = False  # it swaps prompts; --restore does not apply

    def describe(self, options: SwapOptions) -> str:
        extra = "" if options.swap_input == "kv" else f", {options.swap_input} input"
        return f", window {options.window}, swap {options.swap}{extra}" + (", altered pooled" if options.pooled == "altered" else "")

    def denoiser_title(self, table) -> str | None:
        if "window_size" not in table.columns or not (table.method == self.name).any():
            return None
        size = int(table.window_size.dropna().iloc[0])
        kinds = [k for k in table.kind[table.method == self.name].unique() if k in NOUNS]
        return (f"windows of {size} {NOUNS[kinds[0] if kinds else 'attn2']} reading the altered prompt "
                f"(labelled by their first layer); effect 1 = the attribute follows the altered prompt")

    def _alternates(self, cfg, model, prompts, prompt) -> list[tuple[str, str]]:
        world, swap = world_of(model), self.options(cfg).swap
        values = world_values(world, cfg.attribute, prompts) if swap == "value" else []
        return altered_captions(world, prompt, cfg.attribute, swap, values)

    def plan(self, cfg, model, prompts, n_steps: int) -> list[Unit]:
        denoiser, opts = model.family.denoiser, self.options(cfg)
        if cfg.component == "text_encoder":
            raise ConfigError(f"--method crossattn-swap swaps the denoiser's prompt inputs; --component text_encoder has none. "
                              f"Allowed: {denoiser}, denoiser, all")
        if getattr(cfg, "text_encoder", None) is not None:
            raise ConfigError(f"--text-encoder {cfg.text_encoder} chooses the encoder to corrupt; --method crossattn-swap corrupts none "
                              "(it swaps whole prompts). Allowed: no --text-encoder")
        readers = swap_readers(model, opts.swap_input)  # one-line error: e.g. text-stream on a UNet
        if opts.pooled == "altered" and model.family.uncond(model, 1).pooled is None:
            raise ConfigError(f"--pooled altered: {model.name} has no pooled text vector; allowed: original")
        windows = layer_windows([r.site for r in readers], opts.window, NOUNS[readers[0].kind])
        rows = [RowSpec(Restore(w), denoiser, readers[0].kind, str(w[0]), i) for i, w in enumerate(windows)]
        units = []
        for pi, prompt in enumerate(prompts):
            n_alt = len(self._alternates(cfg, model, prompts, prompt))
            for seed in cfg.seeds:
                for ai in range(n_alt):
                    for ci in range(0, len(rows), cfg.batch_size):
                        chunk = tuple(rows[ci : ci + cfg.batch_size])
                        units.append(Unit(pi, seed, 0, denoiser, ci // cfg.batch_size, chunk, variant=ai))
        return units

    def _scores(self, images, prompt: str, altered: str, ctx: UnitContext) -> dict:
        """Every metric against the original caption, and (``<m>_alt``) against the altered one."""
        scores = score_rows(images, [prompt] * len(images), ctx)
        for name, s in score_rows(images, [altered] * len(images), ctx).items():
            metric = next(m for m in ctx.metrics if m.name == name)
            blind = isinstance(metric, GroundTruthMetric) and metric.world.parse_caption(altered).get(metric.attribute) is None
            scores[f"{name}_alt"] = np.full(len(s), np.nan) if blind else s
        return scores

    def run_unit(self, unit: Unit, ctx: UnitContext, cfg):
        model, prompt, opts = ctx.model, ctx.prompts[unit.prompt_index], self.options(cfg)
        altered, value = self._alternates(cfg, model, ctx.prompts, prompt)[unit.variant]
        windows = [r.restore.sites for r in unit.rows]
        images = swap_generate(model, prompt.text, altered, windows, torch.Generator().manual_seed(unit.seed), ctx.scfg,
                               swap_input=opts.swap_input, pooled=opts.pooled)
        scores = self._scores(images, prompt.text, altered, ctx)
        # reference rows are labelled by their role in the effect (row 0 original = "corrupted", row 1 altered = "clean"),
        # so a row of kind "clean" has <m>_score == <m>_clean as in every other method; ``reference`` names the prompt
        labels = [Label("corrupted", "corrupted"), Label("clean", "clean")]
        labels += [Label(r.component, r.kind, r.site, r.layer) for r in unit.rows]
        per_row = [dict(reference="original", window_layers=[]), dict(reference="altered", window_layers=[])]
        per_row += [dict(reference="", window_layers=[str(s) for s in r.restore.sites]) for r in unit.rows]
        base = dict(swap=opts.swap, swap_input=opts.swap_input, pooled=opts.pooled, alt_prompt=altered, alt_value=value,
                    window_size=opts.window)
        # clean := the altered reference (row 1), corrupted := the original (row 0): effect 1 = follows the altered prompt
        df = build_rows(unit, ctx, cfg, self.name, labels, scores, base=base, per_row=per_row, clean_row=1, corrupted_row=0)
        return df, best_strip(images, df[f"effect_{ctx.scorer.name}"].to_numpy())

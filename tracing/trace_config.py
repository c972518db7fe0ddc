"""The configuration of one tracing sweep, validated when it is built; its units and their rows.

Usage::

    cfg = TraceConfig(model="toy", attribute="colour", component="all", seeds=(0, 1))
    cfg = TraceConfig(method="ig", method_options={"ig_steps": 4})   # a method's own options
    cfg = TraceConfig(noise_scale="auto")   # σ multiple measured on the run's own pairs before the sweep (tracing.auto_noise)
    units = plan_units(cfg, model, prompts, n_steps)   # keyed work units, the shard contract
    resolve_sites(model, units)                        # sites resolve here, before any work starts

``TraceConfig`` checks every value it can without a model; what needs the model (a component
it lacks, a ``--text-encoder`` it lacks, a ``--span-end`` past its tokens, a step window past its steps, unknown sites) is
checked when the units are planned, still before any work starts. A method's own options
(``method_options``) are validated by the method (``tracing.methods``). Field ``metadata``
holds the CLI help, so ``diffloc trace`` builds its options from these fields.

A *unit* is one batched sampler call: one prompt, one seed, one noise sample, and a chunk of
restorations of one component. Its key names exactly that, so a sweep resumes by skipping
units whose shard exists, and any executor (local, Ray) runs the same units.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .corruption import CORRUPTIONS
from .encoders import corrupted_encoders, text_length
from .errors import ConfigError
from .executors import EXECUTORS
from .families import denoiser_slots
from .prompts import MarkedPrompt
from .sampler import Restore
from .sites import TEXT_KINDS, Site

RESTORE_MODES = ("token", "suffix", "span")
AUTO = "auto"  # --noise-scale auto: measured before the sweep (tracing.auto_noise)
DEFAULT_METHOD = "exact"


def component_choices() -> tuple[str, ...]:
    """``--component`` values: text_encoder, denoiser (or a family's own name for it), all."""
    return ("text_encoder", "denoiser", *denoiser_slots(), "all")


def opt(default: Any = None, help: str = "", factory: Any = None, **cli: Any) -> Any:
    """A config field with its CLI help (``cli``: ``flag``, ``short``, ``required``, ``cli=False``)."""
    meta = {"help": help, **cli}
    return field(default_factory=factory, metadata=meta) if factory is not None else field(default=default, metadata=meta)


@dataclass(frozen=True)
class TraceConfig:
    """All knobs of a sweep. Defaults follow the seed paper: noise 3σ, restore at all steps."""

    model: str = opt("toy", "Model spec (toy, tiny-sd1, folder, file, hub id).", short="-m")
    method: str = opt(DEFAULT_METHOD, "Trace method: exact (restore each site), atp or ig (gradient screens), crossattn-swap (LocoGen).")
    method_options: Mapping[str, Any] = opt(help="The method's own options (tracing.methods).", factory=dict, cli=False)
    restore: str = opt("token", "Text encoder: token (one position), suffix (it and every later one) or span (attribute tokens through an end).")
    span_end: int | None = opt(None, "Restore span: the one end token (-1: through all padding); default every end.")
    text_kinds: tuple[str, ...] = opt(("hidden", "attn", "mlp"), "Text-encoder states to restore: hidden, attn, mlp (repeat the flag).", flag="--text-kind")
    heads: bool = opt(False, "Also trace every attention head as its own site.")
    bootstrap: int = opt(1000, "Bootstrap resamples of prompt x seed pairs for the 95% intervals.")
    bootstrap_seed: int = opt(0, "Seed of the bootstrap resamples.")
    attribute: str = opt("colour", "An attribute of the model's world (toy: object, colour, style, viewpoint, count; sd adds action).", short="-a", required=True)
    component: str = opt("all", "text_encoder, denoiser (or the family's name for it: unet, transformer) or all.")
    text_encoder: str | None = opt(None, "Corrupt and restore only this text encoder (e.g. text_encoder_3, SD3's T5); "
                                         "default: every text encoder the denoiser reads, each at its own token positions of the word.")
    prompts: tuple[str, ...] = opt((), "Marked prompts; empty: the shipped set for the attribute.", cli=False)
    max_prompts: int | None = opt(None, "Use only the first N prompts.")
    seeds: tuple[int, ...] = opt((0, 1), "Initial-noise seeds (repeat the flag).", flag="--seed")
    corrupt: str = opt("gaussian", "Corruption: gaussian (noise on the attribute tokens, the paper) or replace (another value of the attribute, red -> blue).")
    counterfactuals: int | None = opt(None, "--corrupt replace: at most N other values per prompt (default: all).")
    noise_samples: int = opt(1, "--corrupt gaussian: noise samples per prompt and seed.")
    noise_scale: float | str = opt(3.0, "Noise std in units of the token-embedding std σ (ROME: 3), or auto: the smallest multiple "
                                         "of σ on the ladder 1..16 that flips >= 80% of the run's own pairs (tracing.auto_noise).")
    num_inference_steps: int | None = opt(None, "Denoising steps (default: the model's).", flag="--steps")
    guidance_scale: float | None = opt(None, "Classifier-free guidance scale (default: the model's).", flag="--guidance")
    layer_window: int = opt(1, "Text encoder: restore this many adjacent layers per row (ROME uses 10).")
    step_windows: tuple[tuple[int, int], ...] | None = opt(None, "Denoiser: restore only in steps START:END (repeat for several).",
                                                          flag="--step-window")
    batch_size: int = opt(64, "Restored rows per batched sampler call.")
    scorer: str = opt("auto", "CLIP scorer: auto (the world's own, else ViT-L-14-336/openai), toy, or open_clip name/pretrained.")
    executor: str = opt("local", "local (in-process) or ray (pip install 'diffloc[ray]').")
    threshold: float = opt(0.5, "Lower interval bound of the indirect effect a site needs to be named causal.")
    min_drop: float = opt(5.0, "A pair is informative when the corruption flips ground truth or lowers the scorer by this many points.")
    min_informative: int = opt(8, "Informative pairs needed before any site is named causal.")
    dtype: str = opt("float32", "float32, float16 or bfloat16.")
    device: str = opt("cpu", "cpu or cuda.")

    def __post_init__(self) -> None:
        if not isinstance(self.attribute, str) or not self.attribute.isidentifier():
            raise ConfigError(f"bad attribute {self.attribute!r}; expected a word such as colour (the model's world lists its own)")
        if self.text_encoder is not None and not (isinstance(self.text_encoder, str) and self.text_encoder.startswith("text_encoder")):
            raise ConfigError(f"bad --text-encoder {self.text_encoder!r}; expected a text component such as text_encoder, text_encoder_2")
        if self.component not in component_choices():
            raise ConfigError(f"unknown component {self.component!r}; allowed: {', '.join(component_choices())}")
        self._check_noise_scale()
        self._check_numbers()
        EXECUTORS.get(self.executor)  # one-line error naming the registered executors
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if not isinstance(self.method_options, Mapping):
            raise ConfigError(f"method_options must be a mapping of option name to value, got {type(self.method_options).__name__}")
        CORRUPTIONS.get(self.corrupt)  # one line naming the corruption modes
        if self.counterfactuals is not None and (self.counterfactuals < 1 or self.corrupt != "replace"):
            raise ConfigError(f"--counterfactuals needs --corrupt replace and a value >= 1, got {self.counterfactuals} with --corrupt {self.corrupt}")
        if self.min_informative < 1 or self.min_drop < 0:
            raise ConfigError(f"--min-informative must be >= 1 and --min-drop >= 0, got {self.min_informative} and {self.min_drop}")
        if self.noise_samples < 1:
            raise ConfigError(f"noise_samples must be >= 1, got {self.noise_samples}")
        if self.layer_window < 1:
            raise ConfigError(f"layer_window must be >= 1, got {self.layer_window}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"max_prompts must be >= 1, got {self.max_prompts}")
        for w in self.step_windows or ():
            if len(w) != 2 or not 0 <= w[0] < w[1]:
                raise ConfigError(f"step window {w} malformed; expected (start, end) with 0 <= start < end")
        for p in self.prompts:
            MarkedPrompt.parse(p)
        if not self.text_kinds or set(self.text_kinds) - set(TEXT_KINDS):
            raise ConfigError(f"text kinds {list(self.text_kinds)} invalid; allowed: a non-empty subset of {', '.join(TEXT_KINDS)}")
        if self.restore not in RESTORE_MODES:
            raise ConfigError(f"unknown --restore {self.restore!r}; allowed: {', '.join(RESTORE_MODES)}")
        if self.restore != "token" and self.component not in ("text_encoder", "all"):
            raise ConfigError(f"--restore {self.restore} restores text-encoder tokens; a denoiser-only sweep (--component {self.component}) has none. Allowed there: token")
        if self.span_end is not None and self.restore != "span":
            raise ConfigError(f"--span-end needs --restore span, got --restore {self.restore}")
        if self.bootstrap < 1:
            raise ConfigError(f"--bootstrap must be >= 1 resample, got {self.bootstrap}")

    def _check_noise_scale(self) -> None:
        """A positive finite number of σ, or ``auto`` (Gaussian corruption only: it measures the scale; tracing.auto_noise)."""
        v = self.noise_scale
        if v == AUTO:
            if self.corrupt != "gaussian":
                raise ConfigError(f"--noise-scale auto needs --corrupt gaussian (it measures the noise's scale); "
                                  f"--corrupt {self.corrupt} adds no noise, so drop --noise-scale auto")
            return
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not (number and math.isfinite(v) and v > 0):
            raise ConfigError(f"--noise-scale must be a finite number > 0 (a multiple of σ, e.g. 3) or {AUTO}, got {v!r}")

    def _check_numbers(self) -> None:
        """Every float option must be a finite number (``nan`` and ``inf`` parse as floats)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {v}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["method_options"] = dict(self.method_options)
        return out


@dataclass(frozen=True)
class RowSpec:
    """One restored row: what it restores, and the labels its result row carries."""

    restore: Restore
    component: str
    kind: str
    site: str
    layer: int = -1
    token: int = -1
    window: tuple[int, int] | None = None


@dataclass(frozen=True)
class Unit:
    """One batched sampler call; ``key`` is stable across runs and executors."""

    prompt_index: int
    seed: int
    noise_index: int
    component: str
    chunk: int
    rows: tuple[RowSpec, ...] = field(repr=False)
    variant: int = 0  # a method's variant of the unit (crossattn-swap: the altered prompt's index); 0 for the others

    @property
    def key(self) -> str:
        v = f"-v{self.variant}" if self.variant else ""
        return f"p{self.prompt_index:03d}-s{self.seed}-n{self.noise_index}{v}-{self.component}-c{self.chunk:03d}"


def restored_tokens(cfg: TraceConfig, prompt: MarkedPrompt, tokenizer, n_max: int | None = None) -> list[tuple[int, tuple[int, ...]]]:
    """(label token, restored positions) per row of one text site, by restore mode, in the encoder of ``tokenizer``.

    - ``token``: each position first..EOS alone (the seed paper's protocol; CLIP's first is BOS);
    - ``suffix``: each position first..EOS together with every later one up to the last (the denoiser reads them all);
    - ``span``: the attribute tokens through each end (or through ``span_end`` only); the label is the end.

    ``n_max``: the tokens the encoder reads (default: the tokenizer's ``model_max_length``; SD3 pads T5 to 256).
    """
    n_max = n_max or tokenizer.model_max_length
    n_tokens = len(prompt.tokens(tokenizer, max_length=n_max))  # first .. EOS
    if cfg.restore == "token":
        return [(t, (t,)) for t in range(n_tokens)]
    if cfg.restore == "suffix":
        return [(t, tuple(range(t, n_max))) for t in range(n_tokens)]
    first = prompt.positions(tokenizer, max_length=n_max)[0]
    if cfg.span_end is None:
        return [(e, tuple(range(first, e + 1))) for e in range(first, n_tokens)]
    if not -n_max <= cfg.span_end < n_max:
        raise ConfigError(f"--span-end {cfg.span_end} outside the {n_max} token positions of this model; "
                          f"allowed: {first}..{n_max - 1}, or -1 for {n_max - 1}")
    end = cfg.span_end % n_max  # -1: through every padding position
    if end < first:
        raise ConfigError(f"--span-end {cfg.span_end} lies before the first attribute token ({first}); allowed: {first}..{n_max - 1}, or -1 for {n_max - 1}")
    return [(min(end, n_tokens - 1), tuple(range(first, end + 1)))]  # an end in the padding is labelled at EOS


def text_rows(model, prompt: MarkedPrompt, cfg: TraceConfig, component: str = "text_encoder") -> list[RowSpec]:
    """Layer × token × {hidden, attn, mlp}, each restoring a window of ``layer_window`` layers at the mode's positions
    (positions of ``component``'s own tokenizer).

    With ``cfg.heads``, then layer × head × token (kind ``attn_head``): each row restores one
    head of one layer only (``layer_window`` does not apply to heads).
    """
    n_layers = model.sites.text_layers[component]
    positions = restored_tokens(cfg, prompt, model.tokenizer_for(component), text_length(model, component))
    rows = []
    for kind in cfg.text_kinds:
        for layer in range(n_layers):
            lo = max(0, layer - cfg.layer_window // 2)
            hi = min(n_layers, lo + cfg.layer_window)
            sites = tuple(model.sites.text_layer(li, component)[kind] for li in range(lo, hi))
            for tok, toks in positions:
                rows.append(RowSpec(Restore(sites, tokens=toks), component, kind, str(model.sites.text_layer(layer, component)[kind]), layer, tok))
    if cfg.heads:
        for layer in range(n_layers):
            for head in model.sites.heads_of(model.sites.text_layer(layer, component)["attn"]):
                rows += [RowSpec(Restore((head,), tokens=toks), component, head.kind, str(head), layer, tok) for tok, toks in positions]
    return rows


def traced_components(cfg: TraceConfig, model) -> list[str]:
    """The components a sweep covers: ``all`` = every traced text encoder then the denoiser; ``text_encoder``
    = every traced text encoder; ``denoiser`` (or the family's own name for it, unet / transformer) = the denoiser.
    The traced text encoders are all of them, or ``cfg.text_encoder`` alone."""
    denoiser = model.family.denoiser
    texts = list(corrupted_encoders(model, getattr(cfg, "text_encoder", None)))
    if cfg.component == "all":
        return [*texts, denoiser]
    if cfg.component == "text_encoder":
        return texts
    if cfg.component in ("denoiser", denoiser):
        return [denoiser]
    raise ConfigError(f"--component {cfg.component}: {model.name} has no such component; allowed: text_encoder, {denoiser}, denoiser, all")


def component_rows(model, prompt: MarkedPrompt, cfg: TraceConfig, component: str, n_steps: int) -> list[RowSpec]:
    """The restored rows of one component: denoiser rows or text-encoder rows."""
    if component == model.family.denoiser:
        return denoiser_rows(model, cfg, n_steps)
    return text_rows(model, prompt, cfg, component)


def denoiser_rows(model, cfg: TraceConfig, n_steps: int) -> list[RowSpec]:
    """Every denoiser site of the table, restored at all steps or in each step window (with ``cfg.heads``: then every head)."""
    windows = list(cfg.step_windows) if cfg.step_windows else [None]
    for w in windows:
        if w is not None and w[1] > n_steps:
            raise ConfigError(f"step window {tuple(w)} outside the step range; allowed [a, b) with 0 <= a < b <= {n_steps}")
    sites = list(model.sites.denoiser)
    if cfg.heads:  # then every head of every attn1 / attn2 site, one head per row
        heads = [h for s in model.sites.denoiser for h in model.sites.heads_of(s)]
        if not heads and cfg.component != "all":
            raise ConfigError(f"--heads: the denoiser of {model.name} has no attention heads; drop --heads or trace the text encoder")
        sites += heads
    comp = model.family.denoiser
    return [RowSpec(Restore((s,), window=w), comp, s.kind, str(s), -1, -1, w) for s in sites for w in windows]


def corruption_samples(cfg: TraceConfig, model, prompt: MarkedPrompt) -> int:
    """Corruption samples of one prompt: noise samples (gaussian) or usable counterfactual values (replace)."""
    return CORRUPTIONS.get(cfg.corrupt).samples(cfg, model, prompt)


def plan_units(cfg: TraceConfig, model, prompts: list[MarkedPrompt], n_steps: int) -> list[Unit]:
    """All units of a sweep, in a fixed order."""
    comps = traced_components(cfg, model)
    units = []
    for pi, prompt in enumerate(prompts):
        per_comp = {c: component_rows(model, prompt, cfg, c, n_steps) for c in comps}
        for seed in cfg.seeds:
            for ni in range(corruption_samples(cfg, model, prompt)):
                for comp, rows in per_comp.items():
                    for ci in range(0, len(rows), cfg.batch_size):
                        units.append(Unit(pi, seed, ni, comp, ci // cfg.batch_size, tuple(rows[ci : ci + cfg.batch_size])))
    return units


def resolve_sites(model, units: list[Unit]) -> None:
    """Resolve every site a sweep will touch before any work starts (one error, no partial run)."""
    seen: set[Site] = set()
    for u in units:
        for r in u.rows:
            for s in r.restore.sites:
                if s not in seen:
                    model.module(s)
                    seen.add(s)


@dataclass
class UnitContext:
    """What every unit of one sweep shares, in one process."""

    model: Any
    prompts: list
    scfg: Any          # SamplerConfig
    metrics: list      # tracing.metrics.Metric; exactly one has role "scorer"

    @property
    def scorer(self):
        """The metric recorded as the rows' scorer (role ``scorer``)."""
        from .metrics import scorer_of

        return scorer_of(self.metrics)

"""The configuration of one tracing sweep, validated (and its sites resolved) when it loads.

Usage::

    cfg = TraceConfig(model="toy", attribute="colour", component="all", seeds=(0, 1))
    units = plan_units(cfg, model, prompts)          # keyed work units, the shard contract

A *unit* is one batched sampler call: one prompt, one seed, one noise sample, and a chunk of
restorations of one component. Its key names exactly that, so a sweep resumes by skipping
units whose shard exists, and any executor (local, Ray) runs the same units.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError
from .executors import EXECUTORS
from .prompts import ATTRIBUTES, MarkedPrompt
from .sampler import Restore
from .sites import Site

COMPONENT_CHOICES = ("text_encoder", "unet", "all")


@dataclass(frozen=True)
class TraceConfig:
    """All knobs of a sweep. Defaults follow the seed paper: noise 3σ, restore at all steps."""

    model: str = "toy"
    method: str = "exact"                   # a name in tracing.methods.TRACE_METHODS (checked by the sweep)
    attribute: str = "colour"
    component: str = "all"
    prompts: tuple[str, ...] = ()          # marked prompts; empty: the shipped set for the attribute
    max_prompts: int | None = None
    seeds: tuple[int, ...] = (0, 1)
    noise_samples: int = 1
    noise_scale: float = 3.0
    num_inference_steps: int | None = None  # None: the model's default
    guidance_scale: float | None = None
    layer_window: int = 1                   # text encoder: restore this many adjacent layers (ROME uses 10)
    step_windows: tuple[tuple[int, int], ...] | None = None  # UNet: None = all steps only
    batch_size: int = 64                    # restored rows per sampler call
    scorer: str = "auto"                    # auto: the toy scorer for the toy world, else ViT-L-14-336/openai
    executor: str = "local"
    threshold: float = 0.5                  # mean indirect effect a causal site must reach
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.attribute not in ATTRIBUTES:
            raise ConfigError(f"unknown attribute {self.attribute!r}; allowed: {', '.join(ATTRIBUTES)}")
        if self.component not in COMPONENT_CHOICES:
            raise ConfigError(f"unknown component {self.component!r}; allowed: {', '.join(COMPONENT_CHOICES)}")
        EXECUTORS.get(self.executor)  # one-line error naming the registered executors
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if self.noise_samples < 1:
            raise ConfigError(f"noise_samples must be >= 1, got {self.noise_samples}")
        if not self.noise_scale > 0:
            raise ConfigError(f"noise_scale must be > 0, got {self.noise_scale}")
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

    def to_dict(self) -> dict:
        return asdict(self)


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

    @property
    def key(self) -> str:
        return f"p{self.prompt_index:03d}-s{self.seed}-n{self.noise_index}-{self.component}-c{self.chunk:03d}"


def text_rows(model, prompt: MarkedPrompt, cfg: TraceConfig, component: str = "text_encoder") -> list[RowSpec]:
    """Layer × token × {hidden, attn, mlp}, each restoring a window of ``layer_window`` layers."""
    n_layers = model.sites.text_layers[component]
    n_tokens = len(prompt.tokens(model.tokenizer))  # BOS .. EOS
    rows = []
    for kind in ("hidden", "attn", "mlp"):
        for layer in range(n_layers):
            lo = max(0, layer - cfg.layer_window // 2)
            hi = min(n_layers, lo + cfg.layer_window)
            sites = tuple(model.sites.text_layer(li, component)[kind] for li in range(lo, hi))
            for tok in range(n_tokens):
                rows.append(RowSpec(Restore(sites, tokens=(tok,)), component, kind, str(model.sites.text_layer(layer, component)[kind]), layer, tok))
    return rows


def unet_rows(model, cfg: TraceConfig, n_steps: int) -> list[RowSpec]:
    """Every UNet site of the table, restored at all steps or in each step window."""
    windows = list(cfg.step_windows) if cfg.step_windows else [None]
    for w in windows:
        if w is not None and w[1] > n_steps:
            raise ConfigError(f"step window {tuple(w)} outside the step range; allowed [a, b) with 0 <= a < b <= {n_steps}")
    return [RowSpec(Restore((s,), window=w), "unet", s.kind, str(s), -1, -1, w) for s in model.sites.unet for w in windows]


def plan_units(cfg: TraceConfig, model, prompts: list[MarkedPrompt], n_steps: int) -> list[Unit]:
    """All units of a sweep, in a fixed order."""
    comps = ["text_encoder", "unet"] if cfg.component == "all" else [cfg.component]
    if "text_encoder" in comps and model.text_encoder_2 is not None:
        comps.insert(1, "text_encoder_2")
    units = []
    for pi, prompt in enumerate(prompts):
        per_comp = {c: (unet_rows(model, cfg, n_steps) if c == "unet" else text_rows(model, prompt, cfg, c)) for c in comps}
        for seed in cfg.seeds:
            for ni in range(cfg.noise_samples):
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
    metrics: list      # tracing.metrics.Metric

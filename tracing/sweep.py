"""Run a tracing sweep: keyed units, scored rows, atomic shards, resume, merge.

Usage::

    cfg = TraceConfig(model="toy", attribute="colour")
    table = run_sweep(cfg, out="results/colour")      # DataFrame, also OUT/trace.parquet
    table = run_sweep(cfg, out, metrics=[my_metric])   # an extra column; the CLIP scorer stays the scorer
    table = run_sweep(replace(cfg, noise_scale="auto"), out)   # the noise scale measured first (tracing.auto_noise)

Layout of ``OUT``: ``meta.json`` (model, config, versions, σ, the noise scale used and, for
``--noise-scale auto``, its measurement, which a resume reuses; seeds), ``shards/<unit>.parquet``
(one per finished unit, written atomically), ``shards/<unit>.npz`` (clean, corrupted and the
best restored images of the unit), ``trace.parquet`` (all rows, merged in unit order) and
``causal_sites.json``. A sweep killed at any moment resumes from ``OUT``: finished units are
skipped, and the merged table equals an uninterrupted run's. Units run through an executor
from :data:`tracing.executors.EXECUTORS` (``cfg.executor``), which only sees ``fn(unit)``.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from . import auto_noise
from .corruption import CORRUPTIONS, NOISE_SEED_BASE
from .encoders import corrupted_encoders, word_positions
from .errors import ConfigError, OutputExistsError
from .executors import EXECUTORS
from .io import read_meta, read_trace, write_meta, write_strip, write_trace
from .methods import TRACE_METHODS, causal_rows, option_names, options_from_config, skipping_rows
from .metrics import Metric, default_metrics, with_scorer
from .prompts import MarkedPrompt, attribute_prompts
from .sampler import SamplerConfig
from .scoring import ClipScorer, default_scorer, load_scorer
from .trace_config import TraceConfig, Unit, UnitContext, resolve_sites
from .worlds import world_of


def sweep_prompts(cfg: TraceConfig, world: str) -> list[MarkedPrompt]:
    prompts = [MarkedPrompt.parse(p) for p in cfg.prompts] if cfg.prompts else attribute_prompts(world, cfg.attribute)
    return prompts[: cfg.max_prompts] if cfg.max_prompts else prompts


def unit_context(cfg: TraceConfig, model, scorer: ClipScorer, metrics: Sequence[Metric] | None = None) -> UnitContext:
    prompts = sweep_prompts(cfg, model.world)
    try:
        scfg = SamplerConfig.for_model(model, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    except ValueError as err:  # --steps 0, --guidance -1: one line before any work
        raise ConfigError(str(err)) from None
    model.family.guidance(model, scfg.guidance_scale)  # a scale the family refuses (FLUX: CFG, dev at 0) fails before any unit
    metrics = with_scorer(metrics, scorer) if metrics is not None else default_metrics(model, scorer, cfg.attribute)
    return UnitContext(model, prompts, scfg, metrics)


def store_unit(unit: Unit, ctx: UnitContext, cfg: TraceConfig, shards: Path) -> None:
    df, strip = TRACE_METHODS.get(cfg.method).run_unit(unit, ctx, cfg)
    write_strip(strip["images"], strip["rows"], shards / f"{unit.key}.npz")
    write_trace(df, shards / f"{unit.key}.parquet")  # written last: its existence marks the unit done


@dataclass
class UnitRunner:
    """``fn(unit)`` for executors: runs one unit and writes its shard. Picklable.

    In another process it loads the model and scorer once (``model_factory`` /
    ``scorer_factory``, or ``load_model(cfg.model)`` / ``load_scorer(scorer_spec)`` with the
    spec already resolved from ``auto``); in the driver it reuses the driver's context.
    """

    cfg: TraceConfig
    shards: Path
    scorer_spec: str
    model_factory: Callable | None = None
    scorer_factory: Callable | None = None
    metrics: Sequence[Metric] | None = None
    loads: int = 0
    _ctx: UnitContext | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ctx"], state["loads"] = None, 0  # each process loads its own model
        return state

    def context(self) -> UnitContext:
        if self._ctx is None:
            from .models import load_model

            model = self.model_factory() if self.model_factory else load_model(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device)
            scorer = self.scorer_factory() if self.scorer_factory else load_scorer(self.scorer_spec, device=self.cfg.device)
            self._ctx = unit_context(self.cfg, model, scorer, self.metrics)
            self.loads += 1
        return self._ctx

    def __call__(self, unit: Unit) -> str:
        store_unit(unit, self.context(), self.cfg, self.shards)
        return unit.key


def _versions() -> dict:
    import diffusers
    import open_clip
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version(), "machine": platform.machine()}


SUMMARY_ONLY = ("executor", "seeds", "max_prompts", "threshold", "bootstrap", "bootstrap_seed", "min_drop", "min_informative")


def _same_sweep(config: dict) -> dict:
    """The config keys that decide each row. The executor may change on resume, and so may the
    seeds and the number of prompts: units are keyed by prompt and seed, so a resume with more
    (or fewer) of them adds (or leaves out) units and keeps the rest.
    Threshold and bootstrap only change the summary. A key an older meta.json lacks is read as
    its default (it did not exist, so the sweep ran as the default does)."""
    from dataclasses import MISSING, asdict, fields

    full = {f.name: json.loads(json.dumps(f.default, default=str)) for f in fields(TraceConfig) if f.default is not MISSING}
    full.update(config)
    method = TRACE_METHODS.get(full.get("method", TraceConfig.method))
    full["method_options"] = asdict(options_from_config(method, full))  # older runs wrote the options flat
    legacy = {"ig_steps", "confirm_top", "window", "swap"} | set(option_names(method))
    return {k: v for k, v in full.items() if k not in SUMMARY_ONLY and (k == "method_options" or k not in legacy)}


def _config(cfg: TraceConfig) -> dict:
    """The config meta.json records (every method option resolved; ``noise_scale`` as given, ``auto`` included)."""
    from dataclasses import asdict

    return dict(cfg.to_dict(), method_options=asdict(TRACE_METHODS.get(cfg.method).options(cfg)))


def _resumed(out: Path, config: dict) -> dict | None:
    """The meta.json of the sweep ``out`` already holds (None: a new sweep); a one-line error when its config differs."""
    meta_path = out / "meta.json"
    if not meta_path.exists():
        return None
    old = read_meta(meta_path)
    if _same_sweep(old.get("config", {})) != _same_sweep(json.loads(json.dumps(config, default=str))):
        raise OutputExistsError(f"{out} holds a sweep with another config; resume with the same options or pick a new --out")
    return old


def _meta(cfg: TraceConfig, model, ctx: UnitContext, units: list[Unit], scale: float, auto: dict | None = None) -> dict:
    clip = ctx.scorer
    noise = {"sigma": {c: model.embed_std(c) for c in model.text_components},
             "scale": scale, "seed_rule": f"{NOISE_SEED_BASE} + 1000*seed + noise_index", **({"auto": auto} if auto else {})}
    return {"model": model.name, "arch": model.arch, "world": model.world, "source": model.source, "config": _config(cfg),
            "sampler": {"num_inference_steps": ctx.scfg.num_inference_steps, "guidance_scale": ctx.scfg.guidance_scale,
                        "scheduler": type(model.scheduler).__name__},
            "noise": noise,
            "corruption": _corruption_meta(cfg, model, ctx.prompts),
            "scorer": {"id": clip.model_id, "formula": clip.formula},
            "metrics": {m.name: {"id": m.model_id, "formula": m.formula} for m in ctx.metrics},
            "ground_truth": any(m.name == "gt" for m in ctx.metrics),
            "prompts": [p.marked for p in ctx.prompts], "n_units": len(units), "versions": _versions()}


def _corruption_meta(cfg: TraceConfig, model, prompts) -> dict:
    """The corruption mode and, per prompt, what each corruption sample is (noise index or counterfactual value)."""
    mode = CORRUPTIONS.get(cfg.corrupt)
    encoders = corrupted_encoders(model, cfg.text_encoder)
    samples = [[mode.label(cfg, model, p, i) for i in range(mode.samples(cfg, model, p))] for p in prompts]
    out: dict = {"mode": mode.name, "samples": samples,
                 "encoders": list(encoders),  # each corrupted at its own token positions of the marked word, per prompt:
                 "positions": [{c: list(v) for c, v in word_positions(model, p, encoders).items()} for p in prompts]}
    skipped = getattr(mode, "skipped", None)
    if skipped is not None:
        out["skipped"] = [skipped(cfg, model, p) for p in prompts]
        out["skipped_rule"] = "a counterfactual caption whose token count differs from the clean caption's cannot align token positions"
    return out


def prepare(cfg: TraceConfig, out: Path, model=None, scorer: ClipScorer | None = None, metrics: Sequence[Metric] | None = None):
    """Load model and scorer, plan and resolve units, resolve the noise scale, write meta.json. Returns (runner, units);
    ``runner.cfg`` is ``cfg`` with the scale the units run at (``--noise-scale auto``: :mod:`tracing.auto_noise`)."""
    from .models import load_model

    method = TRACE_METHODS.get(cfg.method)
    method.options(cfg)  # one-line error for a bad method option before the model loads
    model = model or load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    spec = default_scorer(cfg.scorer, model)
    scorer = scorer or load_scorer(spec, device=cfg.device)
    world = world_of(model)
    if cfg.attribute not in world.attributes:  # the world owns its vocabulary
        raise ConfigError(f"unknown attribute {cfg.attribute!r} for world {world.name!r}; allowed: {', '.join(world.attributes)}")
    ctx = unit_context(cfg, model, scorer, metrics)
    encoders = corrupted_encoders(model, cfg.text_encoder)  # one-line error naming the model's text encoders
    for p in ctx.prompts:
        word_positions(model, p, encoders)  # every marked word must tokenise, in every corrupted encoder
    units = method.plan(cfg, model, ctx.prompts, ctx.scfg.num_inference_steps)
    resolve_sites(model, units)
    scale, auto = auto_noise.resolve(cfg, ctx, _resumed(out, _config(cfg)))  # --noise-scale auto: measured once, reused on resume
    meta = _meta(cfg, model, ctx, units, scale, auto)
    out.mkdir(parents=True, exist_ok=True)
    write_meta(meta, out / "meta.json")
    runner = UnitRunner(replace(cfg, noise_scale=scale), out / "shards", spec, metrics=metrics, _ctx=ctx)  # units run at the scale
    return runner, units


def run_sweep(cfg: TraceConfig, out: str | Path, model=None, scorer: ClipScorer | None = None, progress: Callable | None = None,
              executor_kw: dict | None = None, metrics: Sequence[Metric] | None = None) -> pd.DataFrame:
    """Run (or resume) a sweep into ``out`` and return the merged table.

    ``progress(total=, initial=)`` makes a bar the executor updates once per finished unit.
    ``executor_kw`` goes to the executor (Ray: ``address``, ``num_workers``, ``threads``,
    ``on_done``) except ``model`` / ``scorer``: picklable factories other processes call to build
    the model and scorer. ``metrics``: the metrics to score with (default: CLIP, and ground
    truth where the world has readers); one of role ``scorer`` is added when none has it.
    """
    out = Path(out)
    runner, units = prepare(cfg, out, model, scorer, metrics)
    cfg = runner.cfg  # the noise scale resolved (--noise-scale auto)
    kw = dict(executor_kw or {})
    runner.model_factory, runner.scorer_factory = kw.pop("model", None), kw.pop("scorer", None)
    executor = EXECUTORS.get(cfg.executor)(gpu=str(cfg.device).startswith("cuda"), **kw)
    _run_units(units, runner, executor, progress)
    method, ctx = TRACE_METHODS.get(cfg.method), runner.context()
    first = pd.concat([read_trace(runner.shards / f"{u.key}.parquet") for u in units], ignore_index=True)
    more = method.followup(cfg, ctx, first)  # a second phase planned from the first one's rows (screen -> confirm)
    if not more:
        return finish(out, units, cfg, first)
    resolve_sites(ctx.model, more)
    _run_units(more, runner, executor, progress)
    return finish(out, units + more, cfg)


def _run_units(units: list[Unit], runner: "UnitRunner", executor, progress: Callable | None) -> None:
    """Run the units without a shard."""
    todo = [u for u in units if not (runner.shards / f"{u.key}.parquet").exists()]
    bar = progress(total=len(units), initial=len(units) - len(todo)) if progress else None
    try:
        executor.run(todo, runner, progress=bar)
    finally:
        if bar is not None:
            bar.close()


def finish(out: Path, units: list[Unit], cfg: TraceConfig, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Merge shards in unit order into trace.parquet (``table``: already merged); name causal sites."""
    from .causal import write_causal_sites

    if table is None:
        table = pd.concat([read_trace(out / "shards" / f"{u.key}.parquet") for u in units], ignore_index=True)
    write_trace(table, out / "trace.parquet")
    meta = read_meta(out / "meta.json")
    exact = skipping_rows(table)
    meta["skipped_noop"] = int(exact.skipped_noop.sum())  # rows that reused the corrupted image
    meta["skipped_duplicate"] = int(exact.skipped_duplicate.sum())  # rows that reused an equal restored row's
    meta["generated_rows"] = int(len(exact) - meta["skipped_noop"] - meta["skipped_duplicate"])
    write_meta(meta, out / "meta.json")
    write_causal_sites(causal_rows(table), out / "causal_sites.json", cfg.threshold, bootstrap=cfg.bootstrap,
                       bootstrap_seed=cfg.bootstrap_seed, min_drop=cfg.min_drop, min_informative=cfg.min_informative)
    return table

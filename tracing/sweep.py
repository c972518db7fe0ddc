"""Run a tracing sweep: keyed units, scored rows, atomic shards, resume, merge.

Usage::

    cfg = TraceConfig(model="toy", attribute="colour")
    table = run_sweep(cfg, out="results/colour")      # DataFrame, also OUT/trace.parquet

Layout of ``OUT``: ``meta.json`` (model, config, versions, σ, seeds), ``shards/<unit>.parquet``
(one per finished unit, written atomically), ``shards/<unit>.npz`` (clean, corrupted and the
best restored images of the unit), ``trace.parquet`` (all rows, merged in unit order) and
``causal_sites.json``. A sweep killed at any moment resumes from ``OUT``: finished units are
skipped, and the merged table equals an uninterrupted run's.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .prompts import MarkedPrompt, attribute_prompts
from .sampler import SamplerConfig, make_corruption, patched_generate, Restore
from .scoring import ClipScorer, load_scorer
from .trace_config import TraceConfig, Unit, plan_units, resolve_sites

NOISE_SEED_BASE = 1_000_000  # noise generator seed = BASE + 1000 * seed + noise_index


def noise_seed(seed: int, noise_index: int) -> int:
    return NOISE_SEED_BASE + 1000 * seed + noise_index


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def atomic_json(obj, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def sweep_prompts(cfg: TraceConfig, family: str) -> list[MarkedPrompt]:
    prompts = [MarkedPrompt.parse(p) for p in cfg.prompts] if cfg.prompts else attribute_prompts(family, cfg.attribute)
    return prompts[: cfg.max_prompts] if cfg.max_prompts else prompts


class GroundTruth:
    """Exact attribute readers of the toy world, applied to generated images."""

    def __init__(self, attribute: str):
        from experiments.toy import world

        self.world = world
        self.attribute = attribute

    def match(self, images: torch.Tensor, prompt: str) -> np.ndarray:
        want = self.world.parse_caption(prompt)
        got = [self.world.read(img) for img in images]
        return np.array([g.get(self.attribute) == want.get(self.attribute) for g in got], dtype=float)


def run_unit(unit: Unit, model, prompt: MarkedPrompt, cfg: TraceConfig, scfg: SamplerConfig, scorer: ClipScorer, truth: GroundTruth | None) -> tuple[pd.DataFrame, dict]:
    """One batched call: clean row, corrupted row, then the unit's restored rows; scored."""
    positions = prompt.positions(model.tokenizer)
    corruption = make_corruption(model, positions, torch.Generator().manual_seed(noise_seed(unit.seed, unit.noise_index)), cfg.noise_scale)
    restores = [Restore()] + [r.restore for r in unit.rows]
    images = patched_generate(model, prompt.text, restores, corruption, torch.Generator().manual_seed(unit.seed), scfg)
    clip = scorer.score(images, [prompt.text] * len(images)).cpu().numpy()
    gt = truth.match(images, prompt.text) if truth is not None else np.full(len(images), np.nan)
    tokens = prompt.tokens(model.tokenizer)
    last_subject = positions[-1]
    base = dict(prompt_index=unit.prompt_index, prompt=prompt.marked, attribute=cfg.attribute, seed=unit.seed,
                noise_index=unit.noise_index, unit=unit.key, scorer=scorer.model_id, formula=scorer.formula)
    recs = []
    labels = [("clean", "clean", "", -1, -1, None), ("corrupted", "corrupted", "", -1, -1, None)]
    labels += [(r.component, r.kind, r.site, r.layer, r.token, r.window) for r in unit.rows]
    for i, (comp, kind, site, layer, tok, win) in enumerate(labels):
        recs.append(dict(base, row=i, component=comp, kind=kind, site=site, layer=layer, token=tok,
                         token_str=tokens[tok] if tok >= 0 else "", token_role=_role(tok, positions, len(tokens)),
                         is_last_subject=tok == last_subject, window_start=-1 if win is None else win[0],
                         window_end=-1 if win is None else win[1], clip_score=float(clip[i]), gt_score=float(gt[i])))
    df = pd.DataFrame(recs)
    for col in ("clip", "gt"):
        clean, corrupt = df[f"{col}_score"].iloc[0], df[f"{col}_score"].iloc[1]
        df[f"{col}_clean"], df[f"{col}_corrupted"] = clean, corrupt
        denom = clean - corrupt
        df[f"effect_{col}"] = (df[f"{col}_score"] - corrupt) / denom if denom != 0 else np.nan
    best = np.argsort(-clip[2:])[:3] + 2 if len(clip) > 2 else np.array([], dtype=int)
    keep = np.concatenate([[0, 1], best]).astype(int)
    strip = {"images": (images[keep] * 255).round().byte().numpy(), "rows": keep}
    return df, strip


def default_scorer(spec: str, model) -> str:
    """``auto`` resolves to the toy world's scorer for toy models, the paper's CLIP otherwise."""
    if spec != "auto":
        return spec
    return "toy" if model.arch == "toy" else "ViT-L-14-336/openai"


def _role(tok: int, positions: tuple[int, ...], n_tokens: int) -> str:
    if tok < 0:
        return ""
    if tok == 0:
        return "bos"
    if tok == n_tokens - 1:
        return "eos"
    if tok == positions[-1]:
        return "last_subject"
    if tok in positions:
        return "subject"
    return "before" if tok < positions[0] else "after"


def _versions() -> dict:
    import diffusers
    import open_clip
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version(), "machine": platform.machine()}


def unit_context(cfg: TraceConfig, model) -> tuple[list[MarkedPrompt], SamplerConfig, GroundTruth | None]:
    """What every unit of a sweep shares besides model and scorer (executors rebuild it per worker)."""
    prompts = sweep_prompts(cfg, "toy" if model.arch == "toy" else "sd")
    scfg = SamplerConfig.for_model(model, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    truth = GroundTruth(cfg.attribute) if model.arch == "toy" and cfg.attribute != "action" else None
    return prompts, scfg, truth


def _same_sweep(config: dict) -> dict:
    """The config keys that decide the rows; the executor may change on resume."""
    return {k: v for k, v in config.items() if k != "executor"}


def prepare(cfg: TraceConfig, out: Path, model=None, scorer: ClipScorer | None = None):
    """Load model and scorer, plan and resolve units, write meta.json. Returns everything a run needs."""
    from .models import load_model

    model = model or load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    prompts, scfg, truth = unit_context(cfg, model)
    for p in prompts:
        p.positions(model.tokenizer)  # every marked word must tokenise
    units = plan_units(cfg, model, prompts, scfg.num_inference_steps)
    resolve_sites(model, units)
    scorer = scorer or load_scorer(default_scorer(cfg.scorer, model), device=cfg.device)
    meta = {"model": model.name, "arch": model.arch, "source": model.source, "config": cfg.to_dict(),
            "sampler": {"num_inference_steps": scfg.num_inference_steps, "guidance_scale": scfg.guidance_scale,
                        "scheduler": type(model.scheduler).__name__},
            "noise": {"sigma": {c: model.embed_std(c) for c in model.modules if c.startswith("text_encoder")},
                      "scale": cfg.noise_scale, "seed_rule": f"{NOISE_SEED_BASE} + 1000*seed + noise_index"},
            "scorer": {"id": scorer.model_id, "formula": scorer.formula}, "ground_truth": truth is not None,
            "prompts": [p.marked for p in prompts], "n_units": len(units), "versions": _versions()}
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if _same_sweep(old.get("config", {})) != _same_sweep(json.loads(json.dumps(meta["config"], default=str))):
            raise FileExistsError(f"{out} holds a sweep with another config; resume with the same options or pick a new --out")
    atomic_json(meta, meta_path)
    return model, prompts, scfg, units, scorer, truth


def run_sweep(cfg: TraceConfig, out: str | Path, model=None, scorer: ClipScorer | None = None, progress: Callable | None = None, stop_after: int | None = None, ray_kw: dict | None = None) -> pd.DataFrame:
    """Run (or resume) a sweep into ``out`` and return the merged table.

    ``stop_after`` runs at most that many new units and returns None (used by tests that
    interrupt a sweep; local executor only). ``ray_kw`` goes to ``executors.run_ray``
    (address, num_workers, model/scorer factories).
    """
    out = Path(out)
    model, prompts, scfg, units, scorer, truth = prepare(cfg, out, model, scorer)
    shards = out / "shards"
    todo = [u for u in units if not (shards / f"{u.key}.parquet").exists()]
    if cfg.executor == "ray":
        from .executors import run_ray

        bar = progress(total=len(units), initial=len(units) - len(todo)) if progress else None
        run_ray(cfg, out, todo, progress=bar, **(ray_kw or {}))
        if bar is not None:
            bar.close()
    else:
        bar = progress(total=len(units), initial=len(units) - len(todo)) if progress else None
        for n, unit in enumerate(todo):
            if stop_after is not None and n >= stop_after:
                return None
            run_and_store(unit, model, prompts, cfg, scfg, scorer, truth, shards)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return finish(out, units, cfg)


def run_and_store(unit: Unit, model, prompts, cfg, scfg, scorer, truth, shards: Path) -> None:
    df, strip = run_unit(unit, model, prompts[unit.prompt_index], cfg, scfg, scorer, truth)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **strip)
    atomic_write_bytes(shards / f"{unit.key}.npz", buf.getvalue())
    atomic_parquet(df, shards / f"{unit.key}.parquet")  # written last: its existence marks the unit done


def finish(out: Path, units: list[Unit], cfg: TraceConfig) -> pd.DataFrame:
    """Merge shards in unit order into trace.parquet; name causal sites."""
    from .causal import write_causal_sites

    frames = [pd.read_parquet(out / "shards" / f"{u.key}.parquet") for u in units]
    table = pd.concat(frames, ignore_index=True)
    atomic_parquet(table, out / "trace.parquet")
    write_causal_sites(table, out / "causal_sites.json", cfg.threshold)
    return table

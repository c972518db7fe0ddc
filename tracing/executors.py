"""Run sweep units on a Ray cluster: one actor per worker, one model per actor, same shards.

Usage::

    cfg = TraceConfig(model="toy", attribute="colour", executor="ray")
    run_sweep(cfg, "results/colour")                                   # local Ray, 2 workers
    run_sweep(cfg, "results/colour", ray_kw=dict(address="auto", num_workers=8))

    diffloc trace --model toy --attribute colour --executor ray --workers 2 --out results/colour
    diffloc trace ... --executor ray --ray-address ray://head:10001 --workers 8

Install the extra first: ``pip install 'diffloc[ray]'``.

The shard contract is the local executor's: every unit is a keyed work item, and a worker
writes ``shards/<unit>.parquet`` atomically with ``sweep.run_and_store``, so the driver's
``finish()`` merges exactly the table a local run gives. Each actor loads the model and the
scorer once (``load_model(cfg.model)`` / ``load_scorer(cfg.scorer)``, or a picklable factory
such as ``functools.partial(tracing.testing.tiny_pixel_model, 0)``) and then runs units one
at a time. When a worker dies, its unfinished unit goes back to the queue and the others go
on; when all have died the sweep stops with an error, and re-running the same command resumes
from the shards already written. ``out`` must be a folder every worker can write (one
machine, or a shared file system).

Numerics: a CPU worker runs torch with ``threads`` threads (default 1, its one Ray CPU). Its rows
equal a local run's bit for bit at the same thread count (``OMP_NUM_THREADS=1 diffloc trace``);
at another thread count CPU reductions differ in the last float32 digits (about 1e-6 relative).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .trace_config import TraceConfig, Unit

MODELS_LOADED = {"n": 0}  # per process: how many models this worker process has loaded


def import_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("--executor ray needs Ray: pip install 'diffloc[ray]' (or pip install ray)") from None
    return ray


class Worker:
    """One Ray actor: holds one model and one scorer, runs units into ``out/shards``."""

    def __init__(self, cfg: TraceConfig, out: str, model_factory: Callable | None, scorer_factory: Callable | None, threads: int | None):
        import torch

        from .models import load_model
        from .scoring import load_scorer
        from .sweep import unit_context

        if threads:
            torch.set_num_threads(threads)
        self.cfg = cfg
        self.shards = Path(out) / "shards"
        self.model = model_factory() if model_factory else load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
        self.scorer = scorer_factory() if scorer_factory else load_scorer(cfg.scorer, device=cfg.device)
        self.prompts, self.scfg, self.truth = unit_context(cfg, self.model)
        self.units = 0
        MODELS_LOADED["n"] += 1

    def run(self, unit: Unit) -> str:
        from .sweep import run_and_store

        run_and_store(unit, self.model, self.prompts, self.cfg, self.scfg, self.scorer, self.truth, self.shards)
        self.units += 1
        return unit.key

    def info(self) -> dict:
        import torch

        return {"pid": os.getpid(), "threads": torch.get_num_threads(), "units": self.units, "models_loaded": MODELS_LOADED["n"]}


def start_ray(address: str | None = None, num_workers: int = 2):
    """Connect to ``address``, or start a local Ray with one CPU per worker; reuse a running one."""
    ray = import_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(num_cpus=num_workers, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    return ray


def run_ray(cfg: TraceConfig, out: str | Path, todo_units: list[Unit], model: Callable | None = None, scorer: Callable | None = None,
            address: str | None = None, num_workers: int = 2, threads: int | None = 1, progress=None,
            on_done: Callable | None = None) -> None:
    """Run ``todo_units`` on ``num_workers`` Ray actors; each finished unit leaves its shard in ``out``.

    ``model`` / ``scorer``: picklable factories a worker calls once (default: load ``cfg.model``
    and ``cfg.scorer``). ``threads``: torch threads per worker (CPU). ``progress``: a tqdm-like
    object, ``update(1)`` per finished unit. ``on_done(n_done, workers)``: called by the driver
    after each finished unit with the live actor handles (tests kill workers from it).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not todo_units:
        return
    ray = start_ray(address, num_workers)
    gpu = str(cfg.device).startswith("cuda")
    res = "GPU" if gpu else "CPU"  # each worker asks for one, so more workers than that would wait forever
    have = ray.cluster_resources().get(res, 0.0)
    if have < num_workers:
        raise ValueError(f"{num_workers} Ray workers need {num_workers} {res} but the cluster has {have:g}; pass fewer workers")
    actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(Worker)
    workers = [actor_cls.remote(cfg, str(Path(out).resolve()), model, scorer, threads if not gpu else None)
               for _ in range(min(num_workers, len(todo_units)))]
    queue = list(todo_units)
    running: dict = {}  # ObjectRef -> (actor, unit)
    idle = list(workers)
    n_done = 0
    try:
        while queue or running:
            while queue and idle:
                actor, unit = idle.pop(0), queue.pop(0)
                running[actor.run.remote(unit)] = (actor, unit)
            if not running:
                raise RuntimeError(f"all Ray workers died; {len(queue)} units left undone; re-run the same command to resume")
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, unit = running.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the unit raised: re-raise its own error
                raise (err.cause if isinstance(err.cause, Exception) else err) from err
            except ray.exceptions.RayActorError as err:
                if getattr(err, "_actor_init_failed", False):
                    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                    raise RuntimeError(f"a Ray worker could not load the model or scorer: {lines[-1] if lines else err}") from err
                workers.remove(actor)  # the worker died: its unit goes back to the queue
                queue.insert(0, unit)
                continue
            idle.append(actor)
            n_done += 1
            if progress is not None:
                progress.update(1)
            if on_done is not None:
                on_done(n_done, list(workers))
    finally:
        for actor in workers:
            ray.kill(actor)

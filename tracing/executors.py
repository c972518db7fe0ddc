"""Executors run a sweep's keyed units; they know nothing of sweeps, only ``fn(unit)``.

Usage::

    EXECUTORS.get("local")().run(units, fn)                       # in this process, in order
    EXECUTORS.get("ray")(num_workers=8, address="auto").run(units, fn)

    diffloc trace --model toy --attribute colour --executor ray --workers 2 --out results/colour
    diffloc trace ... --executor ray --ray-address ray://head:10001 --workers 8

An executor is a class satisfying :class:`Executor`: ``run(units, fn, progress=None)`` calls
``fn(unit)`` once for every unit (``fn`` writes the unit's result itself, e.g. a shard file) and
``progress.update(1)`` after each. Its options are its constructor's keyword arguments, every
one declared; the sweep passes ``stop_after`` and ``gpu`` to all of them, so every executor
declares both. An option it does not declare (a mistyped one) is a one-line
:class:`DifflocInputError` naming the options it has (:func:`declares_options`). A new
executor is one class registered in :data:`EXECUTORS` plus the contract battery in
``tests/contracts.py``. ``fn`` must be picklable for executors that ship it to other
processes: the sweep passes a :class:`tracing.sweep.UnitRunner` that loads the model and
metrics once per process.

Ray (``pip install 'diffloc[ray]'``): one actor per worker, each holding one copy of ``fn``
(so one model); a worker that dies gives its unit back to the queue and the others go on;
when all have died the run stops, and re-running the same command resumes from the shards
already written. ``out`` must be a folder every worker can write (one machine, or a shared
file system). Numerics: a CPU worker runs torch with ``threads`` threads (default 1); its rows
equal a local run's bit for bit at the same thread count.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Protocol, Sequence, TypeVar, runtime_checkable

from .errors import DifflocInputError, UsageError
from .registry import Registry


@runtime_checkable
class Executor(Protocol):
    """What the sweep calls. ``options``: the keyword arguments the constructor accepts."""

    options: tuple[str, ...]

    def run(self, units: Sequence[Any], fn: Callable[[Any], Any], progress: Any = None) -> None:
        """Call ``fn(unit)`` for every unit; ``progress.update(1)`` after each."""


E = TypeVar("E", bound=type)


def declares_options(cls: E) -> E:
    """Class decorator: ``cls.options`` are its constructor's keyword arguments, and any other keyword
    is a one-line :class:`DifflocInputError` naming them (instead of a TypeError, or being dropped)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
        raise TypeError(f"{cls.__name__}.__init__ must declare every option, not take *args / **kwargs")  # a bug, not input
    cls.options = tuple(n for n in params if n != "self")
    init = cls.__init__

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(cls.options))
        if unknown:
            raise DifflocInputError(f"executor {cls.__name__} has no option {', '.join(map(repr, unknown))}; "
                                    f"allowed: {', '.join(cls.options)}")
        init(self, *args, **kwargs)

    cls.__init__ = checked
    return cls


@declares_options
class LocalExecutor:
    """In this process, in unit order. ``gpu`` is accepted for the sweep's uniform call and changes nothing: the model in this
    process is already on its device."""

    options: tuple[str, ...]

    def __init__(self, gpu: bool = False):
        self.gpu = gpu

    def run(self, units: Sequence[Any], fn: Callable[[Any], Any], progress: Any = None) -> None:
        for unit in units:
            fn(unit)
            if progress is not None:
                progress.update(1)


def import_ray():
    """Ray, or a one-line input error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'diffloc[ray]' (or pip install ray)") from None
    return ray


class _Actor:
    """One Ray actor: holds one ``fn`` (and so one model) and runs units through it."""

    def __init__(self, fn: Callable, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.fn = fn
        self.units = 0

    def run(self, unit: Any) -> None:
        self.fn(unit)
        self.units += 1

    def info(self) -> dict:
        import torch

        loaded = getattr(self.fn, "loads", None)
        return {"pid": os.getpid(), "threads": torch.get_num_threads(), "units": self.units, "models_loaded": loaded}


@declares_options
class RayExecutor:
    """Ray actors, ``num_workers`` of them (one CPU, or one GPU with ``gpu=True``, each)."""

    options: tuple[str, ...]

    def __init__(self, num_workers: int = 2, address: str | None = None, threads: int | None = 1, gpu: bool = False,
                 on_done: Callable | None = None):
        if num_workers < 1:
            raise DifflocInputError(f"--workers must be >= 1, got {num_workers}")
        self.num_workers, self.address, self.threads, self.gpu, self.on_done = num_workers, address, threads, gpu, on_done

    def _start(self):
        ray = import_ray()
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
            ray.init(address=self.address, **kw) if self.address else ray.init(num_cpus=self.num_workers, **kw)
        res = "GPU" if self.gpu else "CPU"  # each worker asks for one, so more workers than that would wait forever
        have = ray.cluster_resources().get(res, 0.0)
        if have < self.num_workers:
            raise DifflocInputError(f"{self.num_workers} Ray workers need {self.num_workers} {res} but the cluster has {have:g}; pass fewer --workers")
        return ray

    def run(self, units: Sequence[Any], fn: Callable[[Any], Any], progress: Any = None) -> None:
        units = list(units)
        if not units:
            return
        ray = self._start()
        actor_cls = ray.remote(num_cpus=1, num_gpus=1 if self.gpu else 0)(_Actor)
        workers = [actor_cls.remote(fn, None if self.gpu else self.threads) for _ in range(min(self.num_workers, len(units)))]
        try:
            self._drive(ray, workers, list(units), progress)
        finally:
            for actor in workers:
                ray.kill(actor)

    def _drive(self, ray, workers: list, queue: list, progress: Any) -> None:
        running: dict = {}  # ObjectRef -> (actor, unit)
        idle, n_done = list(workers), 0
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
                    raise RuntimeError(f"a Ray worker could not start: {lines[-1] if lines else err}") from err
                workers.remove(actor)  # the worker died: its unit goes back to the queue
                queue.insert(0, unit)
                continue
            idle.append(actor)
            n_done += 1
            if progress is not None:
                progress.update(1)
            if self.on_done is not None:
                self.on_done(n_done, list(workers))


EXECUTORS: Registry[type[Executor]] = Registry("executor")
EXECUTORS.register("local", LocalExecutor)
EXECUTORS.register("ray", RayExecutor)

"""Peak memory of a call, measured the way CUDA's allocator counts it, on any device.

Usage::

    peak = peak_bytes(lambda: generate(model, ["a red circle"], cfg=cfg, latents=lat))
    peak["tensors"], peak["rss"]          # live tensor bytes above the start; CPU resident-set growth
    mem_figures("sweep", median_peak(sweep, 3), median_peak(plain, 3))["ratio"]

- ``tensors``: CUDA: ``max_memory_allocated`` above what was allocated at the start. Other
  devices: the peak of the bytes of tensor storages created inside the call and still alive
  (:class:`LiveTensorPeak`), the same quantity: what the call itself holds at its worst moment,
  weights and caches made before it excluded.
- ``rss``: Linux, any device: growth of the process's resident-set high-water mark (reset just
  before, after returning freed heap to the OS). It also counts what glibc keeps after a free
  and what torch allocates outside tensors, so on a small CPU model it is dominated by the
  heap's high-water mark, not by what the call holds: the toy screen's RSS peak is ≈ 9× its
  live tensor peak. Reported beside ``tensors``, not used for ratios.

Written by hand because torch's own tracker (``torch.distributed._tools.mem_tracker``) is
private and registers gradient hooks on every parameter, which fails on frozen models.
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorPeak(TorchDispatchMode):
    """Inside the ``with``, ``peak`` is the largest sum of live storages created in it (bytes).

    A storage is counted once however many tensors view it, from the op that returns it until
    its last tracked tensor dies (autograd keeps saved tensors' Python objects alive, so a
    tensor saved for backward stays counted). Dispatch modes also see the backward pass's ops.
    """

    def __init__(self):
        super().__init__()
        self.owners: dict[int, int] = {}  # storage address -> live tracked tensors on it
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0:
            return
        if key not in self.owners:
            self.owners[key], self.sizes[key] = 0, size
            self.current += size
            self.peak = max(self.peak, self.current)
        self.owners[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.owners[key] -= 1
        if self.owners[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.owners[key]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _rss_peak(fn) -> int | None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:  # not Linux: no resident-set figure
        fn()
        return None
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def peak_bytes(fn) -> dict:
    """{"tensors": bytes, "rss": bytes or None} of ``fn`` (see the module docstring; CPU calls it twice)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        rss = _rss_peak(fn)
        torch.cuda.synchronize()
        return {"tensors": torch.cuda.max_memory_allocated() - base, "rss": rss}
    gc.collect()
    mode = LiveTensorPeak()
    with mode:
        fn()
    return {"tensors": mode.peak, "rss": _rss_peak(fn)}  # a second call: the tracker's own objects stay out of RSS


def median_peak(fn, repeats: int, measure=None) -> dict:
    """Median over ``repeats`` calls of ``measure(fn)`` (default :func:`peak_bytes`; {"tensors", "rss"} bytes).
    ``rss`` is None when the first call has none (not Linux)."""
    measure = measure or peak_bytes
    runs = [measure(fn) for _ in range(repeats)]
    return {k: None if runs[0][k] is None else int(statistics.median(r[k] for r in runs)) for k in runs[0]}


def mem_figures(name: str, mem: dict, plain: dict) -> dict:
    """The ratio of live tensor bytes ``mem`` ÷ ``plain``, with both measures in MB beside it."""
    mb = lambda v: None if v is None else round(v / 2**20, 1)  # noqa: E731
    return {"ratio": round(mem["tensors"] / max(plain["tensors"], 1), 3),
            "mb": {name: mb(mem["tensors"]), "plain": mb(plain["tensors"])},
            "rss_mb": {name: mb(mem["rss"]), "plain": mb(plain["rss"])}}

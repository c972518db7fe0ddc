"""Benchmark of the batched patched sampler, measured as ratios within one run.

Usage::

    result = bench_trace("toy", rows=32, repeats=3)
    result["sweep_over_plain"], result["naive_over_sweep"], result["peak_mem_ratio"]

- ``sweep_over_plain``: a batched sweep call (clean + corrupted + ``rows`` restored UNet rows)
  over plain batched generation of the same number of images with the same sampler.
- ``naive_over_sweep``: one pipeline call per restored configuration, as the reference codes
  do (each re-running the clean and corrupted passes it needs: here one call per row), over
  the batched sweep.
- ``peak_mem_ratio``: peak memory of the sweep call over plain generation at equal batch:
  live tensor bytes above the start (CUDA: max allocated; CPU: the same count, kept by a
  dispatch mode, :mod:`diffloc.bench_memory`), median of ``repeats``; ``peak_rss_mb`` gives the
  resident-set growth beside it.
- ``ms_per_image``: sweep wall time per image.
- ``ms_per_image_threads``: the sweep's ms per image with 1 torch thread (before threads were
  fitted to the cores) and with :func:`tracing.models.fit_threads` (after), the kept speed-up
  of ``docs/speed.md``.
- ``linearity``: time per row for ``rows`` and ``2*rows`` restorations (cost grows linearly).

Every figure is computed from named timings and peaks: ``timer(label, fn, repeats) -> seconds``
(default :func:`measure_time`, median wall time after a warm-up) and ``peak(label, fn, repeats)
-> {"tensors", "rss"}`` (default :func:`measure_peak`). Tests pass known ones and check the
figures against hand-computed values; speed targets live in the JSON (``targets``), never in tests.
Labels: ``sweep``, ``sweep_1_thread`` (CPU only), ``plain``, ``naive``, ``sweep_2x``.
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch

from diffloc.tracing.sampler import Restore, SamplerConfig, generate, initial_latents, make_corruption, patched_generate

from .bench_memory import median_peak, mem_figures


def _time(fn, repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call, read from ``clock``."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t = clock()
        fn()
        _sync()
        times.append(clock() - t)
    return statistics.median(times)


def measure_time(label: str, fn: Callable, repeats: int) -> float:
    """The default ``timer`` of :func:`bench_trace`: :func:`_time` (``label`` names the figure only)."""
    return _time(fn, repeats)


def measure_peak(label: str, fn: Callable, repeats: int) -> dict:
    """The default ``peak`` of :func:`bench_trace`: :func:`diffloc.bench_memory.median_peak`."""
    return median_peak(fn, repeats)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def bench_trace(spec: str = "toy", rows: int = 32, repeats: int = 3, model=None, device: str = "cpu",
                dtype: str = "float32", steps: int | None = None, timer: Callable[[str, Callable, int], float] = measure_time,
                peak: Callable[[str, Callable, int], dict] = measure_peak) -> dict:
    """The figures of the module docstring, from ``timer`` and ``peak`` (defaults: measured here)."""
    from diffloc.tracing.models import load_model

    model = model or load_model(spec, dtype=dtype, device=device)
    cfg = SamplerConfig.for_model(model, **({"num_inference_steps": steps} if steps else {}))
    prompt = "a photo of two red circles at the top on a striped background"
    sites = list(model.sites.denoiser)
    restores = [Restore()] + [Restore((sites[i % len(sites)],)) for i in range(rows)]
    n_images = 1 + len(restores)
    corruption = make_corruption(model, [5], torch.Generator().manual_seed(1))
    lat = initial_latents(model, torch.Generator().manual_seed(0))

    def sweep(rs=restores):
        return patched_generate(model, prompt, rs, corruption, cfg=cfg, latents=lat)

    def plain(n=n_images):
        return generate(model, [prompt] * n, cfg=cfg, latents=lat.expand(n, -1, -1, -1))

    def naive():
        for r in restores[1:]:
            patched_generate(model, prompt, [r], corruption, cfg=cfg, latents=lat)

    from diffloc.tracing.models import fit_threads

    cuda = model.device.type == "cuda"
    threads = torch.get_num_threads()
    t_one = None
    if not cuda:  # the CPU thread count is item 5's kept speed-up; on a GPU it does not apply
        torch.set_num_threads(1)
        try:
            t_one = timer("sweep_1_thread", sweep, max(1, repeats // 2))
        finally:
            torch.set_num_threads(threads)
    fitted = threads if cuda else fit_threads()
    t_sweep = timer("sweep", sweep, repeats)
    t_plain = timer("plain", plain, repeats)
    t_naive = timer("naive", naive, max(1, repeats // 3))
    restores2 = [Restore()] + [Restore((sites[i % len(sites)],)) for i in range(2 * rows)]
    t_sweep2 = timer("sweep_2x", lambda: sweep(restores2), max(1, repeats // 2))
    mem = mem_figures("sweep", peak("sweep", sweep, repeats), peak("plain", plain, repeats))
    return {
        "sweep_over_plain": round(t_sweep / t_plain, 3),
        "naive_over_sweep": round(t_naive / t_sweep, 2),
        "peak_mem_ratio": mem["ratio"],
        "peak_mem_mb": mem["mb"],
        "peak_rss_mb": mem["rss_mb"],
        "ms_per_image": round(1000 * t_sweep / n_images, 2),
        "ms_per_image_threads": None if t_one is None else {"before_1_thread": round(1000 * t_one / n_images, 2),
                                                   f"after_{fitted}_threads": round(1000 * t_sweep / n_images, 2)},
        "images_per_s_plain": round(n_images / t_plain, 2),
        "linearity_ms_per_row": {"rows": rows, "at_rows": round(1000 * t_sweep / n_images, 2),
                                 "at_2x_rows": round(1000 * t_sweep2 / (2 + 2 * rows), 2)},
        "targets": {"sweep_over_plain": "<= 1.15", "naive_over_sweep": ">= 3", "peak_mem_ratio": "<= 1.3"},
        "setup": {"model": model.name, "images_per_call": n_images, "steps": cfg.num_inference_steps,
                  "guidance": cfg.guidance_scale, "repeats": repeats, "threads": torch.get_num_threads(),
                  "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."), "machine": _machine(model),
                  "seconds": {"sweep": round(t_sweep, 3), "plain": round(t_plain, 3), "naive": round(t_naive, 3)}},
    }


def _machine(model) -> str:
    if model.device.type == "cuda":
        return torch.cuda.get_device_name(model.device)
    return f"{platform.machine()} {torch.get_num_threads()} threads"

"""Denoiser cost per sequence against batch size: why batched sweeps gain little on a small DiT on the CPU.

Usage::

    python -m experiments.profile_batch --model toy-dit --out results/reference/batch_profile_toy_dit.json

One denoiser forward (no hooks, no sampler) at each batch size, on random inputs of the model's
shapes, median of ``--repeats`` after a warm-up, one torch thread. A sweep call of ``R`` restored
rows runs ``2 (R + 2)`` sequences per step under classifier-free guidance, a naive call (one
restored row plus its clean reference) 4, so ``naive_over_sweep`` can exceed
``2 R / (R + 2)`` only by the factor the batch saves per sequence; this file gives that factor.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def _inputs(model, batch: int, g: torch.Generator) -> dict:
    """Random denoiser inputs of ``model``'s shapes for ``batch`` sequences (toy-dit / SD3-style transformers)."""
    cfg = model.denoiser.config
    side = cfg.sample_size
    return {"hidden_states": torch.randn(batch, cfg.in_channels, side, side, generator=g),
            "encoder_hidden_states": torch.randn(batch, 77, cfg.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g),
            "timestep": torch.full((batch,), 500.0)}


@torch.no_grad()
def profile(model, batches: list[int], repeats: int = 5) -> dict[int, float]:
    """ms per sequence of one denoiser forward at each batch size (median of ``repeats`` after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for b in batches:
        kw = _inputs(model, b, g)
        model.denoiser(**kw)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.denoiser(**kw)
            times.append(time.perf_counter() - t)
        out[b] = round(1000 * statistics.median(times) / b, 2)
    return out


def main(argv: list[str] | None = None) -> None:
    from diffloc.tracing.io import write_plain_json
    from diffloc.tracing.models import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy-dit")
    p.add_argument("--batches", default="2,4,8,16,34,68")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(a.model)
    ms = profile(model, [int(b) for b in a.batches.split(",")], a.repeats)
    best = min(ms, key=ms.get)
    res = {"model": a.model, "ms_per_sequence": ms, "best_batch": best,
           "sweep_batch_over_best": round(ms[max(ms)] / ms[best], 2), "threads": 1, "repeats": a.repeats,
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__}
    write_plain_json(res, a.out)
    print(json.dumps(res))


if __name__ == "__main__":
    main()

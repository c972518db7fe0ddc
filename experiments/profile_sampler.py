"""Profile the toy model's sampler at a sweep's batch: what each torch option gains on this CPU.

Usage::

    python -m experiments.profile_sampler --out results/reference/sampler_profile.json
    python -m experiments.profile_sampler --rows 64 --steps 5 --repeats 3 --no-compile

Variants, each timed on the same batched call (one prompt, ``rows`` restored UNet rows + clean
+ corrupted, CFG, the toy UNet), medians of ``repeats`` after a warm-up:
- ``baseline``: 1 torch thread, the sampler as shipped (diffusers' SDPA attention processor);
- ``threads=N``: torch threads = the cores this process may use (``os.sched_getaffinity``);
- ``classic_attention``: diffusers' non-SDPA ``AttnProcessor`` (how much SDPA gives);
- ``channels_last``: the UNet's weights and inputs in channels-last memory format;
- ``compile``: ``unet.compile()`` in place (compile time reported separately; ``torch.compile(unet)``
  would wrap the UNet and rename every site).
Every variant's images are compared with the baseline's (max |Δ|), so a speed-up that
changes numerics is visible. Writes one JSON file.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from diffloc.tracing.io import write_plain_json
from diffloc.tracing.models import load_model
from diffloc.tracing.sampler import Restore, SamplerConfig, initial_latents, make_corruption, patched_generate

PROMPT = "a photo of two red circles at the top on a striped background"


def _call(model, rows, corruption, lat, cfg):
    return patched_generate(model, PROMPT, rows, corruption, cfg=cfg, latents=lat)


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def profile(rows: int = 64, steps: int = 5, repeats: int = 3, compile_: bool = True) -> dict:
    model = load_model("toy")
    cfg = SamplerConfig(num_inference_steps=steps, guidance_scale=2.0)
    sites = list(model.sites.denoiser)
    restores = [Restore()] + [Restore((sites[i % len(sites)],)) for i in range(rows)]
    n_images = 1 + len(restores)
    corruption = make_corruption(model, [5], torch.Generator().manual_seed(1))
    lat = initial_latents(model, torch.Generator().manual_seed(0))
    run = lambda: _call(model, restores, corruption, lat, cfg)  # noqa: E731
    cores = len(os.sched_getaffinity(0))
    out: dict = {"setup": {"rows": rows, "images_per_call": n_images, "steps": steps, "repeats": repeats, "cores": cores,
                           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__}}
    torch.set_num_threads(1)
    t_base, ref = _time(run, repeats)
    res = {"baseline_1_thread": {"ms_per_image": round(1000 * t_base / n_images, 2), "speedup": 1.0, "max_abs_diff": 0.0}}

    def record(name, t, imgs, **extra):
        res[name] = {"ms_per_image": round(1000 * t / n_images, 2), "speedup": round(t_base / t, 3),
                     "max_abs_diff": float((imgs - ref).abs().max()), **extra}

    torch.set_num_threads(cores)
    t, imgs = _time(run, repeats)
    record(f"threads_{cores}", t, imgs)
    torch.set_num_threads(1)

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    model.denoiser.set_attn_processor(AttnProcessor())
    t, imgs = _time(run, repeats)
    record("classic_attention (no SDPA)", t, imgs)
    model.denoiser.set_attn_processor(AttnProcessor2_0())

    model.denoiser.to(memory_format=torch.channels_last)
    t, imgs = _time(run, repeats)
    record("channels_last", t, imgs)
    model.denoiser.to(memory_format=torch.contiguous_format)

    if compile_:
        t0 = time.perf_counter()
        model.denoiser.compile()  # in place: named_modules (the sites) stay as they are; hooks come and go per call
        try:
            _call(model, restores, corruption, lat, cfg)  # compiles
            first = time.perf_counter() - t0
            t, imgs = _time(run, repeats)
            record("torch.compile", t, imgs, compile_s=round(first, 1))
        except Exception as err:  # compile support varies by platform: record why it could not run
            res["torch.compile"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        finally:
            model.denoiser._compiled_call_impl = None  # back to eager
    out["variants"] = res
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/reference/sampler_profile.json")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args(argv)
    result = profile(a.rows, a.steps, a.repeats, not a.no_compile)
    write_plain_json(result, a.out)
    for k, v in result["variants"].items():
        print(k, v)


if __name__ == "__main__":
    main()

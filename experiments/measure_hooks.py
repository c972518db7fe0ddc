"""Measure the cost of per-row activation patching: raw torch forward hooks vs nnsight 0.8.

Usage::

    python experiments/measure_hooks.py              # prints a JSON summary
    python experiments/measure_hooks.py --repeats 5

Set-up (mirrors the tracing runner): a tiny random diffusers ``UNet2DConditionModel``
(sample 32×32×3, channels (32, 64, 64), one layer per block, cross-attention dim 64), a
classifier-free-guidance batch of 2R rows (R = 16: rows 0..R−1 conditional, R..2R−1
unconditional), and a sampling loop of 20 UNet calls. At each call, corrupted row r (and its
unconditional twin R + r), r = 1..R−1, takes the clean row's output (row 0, resp. R) at its
*own* site: one different module per row, R−1 = 15 sites in all. Variants:

(a) plain UNet calls;
(b) raw ``register_forward_hook`` hooks that return the patched output;
(c) nnsight 0.8 ``NNsight(unet)``, one ``with model.trace(...)`` per UNet call, writing
    ``envoy.output[[r, R + r]] = envoy.output[[0, R]]`` for each site;
(d) nnsight 0.8 over a wrapper module that runs the whole 20-call loop inside one trace,
    with the patches under ``for _ in tracer.iter[:]`` (one trace per sampling run).

Every variant's final latents are checked against (b) (and (a) against an un-patched run).
Timing: the whole 20-call loop, variants interleaved round-robin for ``--repeats`` rounds
after the correctness runs (the warm-up); wall and process CPU time are both recorded, with
one torch thread by default, since the 2-core machine is shared with other jobs. Minimum
over rounds is the headline (other jobs only add time); medians are reported too.
No scheduler maths is timed beyond a trivial Euler-like update; the point is the hook
overhead relative to the UNet itself.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

R = 16                 # prompts-rows per half; batch = 2R
STEPS = 20             # UNet calls per sampling run
SITE_SUFFIXES = ("resnets.0", "resnets.1", "attn1", "attn2", "ff")


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8,
    ).eval()


def execution_order_sites(unet, x, t, ehs) -> list[str]:
    """Candidate sites (resnets, attn1, attn2, ff) in the order they run."""
    order, handles = [], []
    for name, mod in unet.named_modules():
        if name.endswith(SITE_SUFFIXES):
            handles.append(mod.register_forward_hook(lambda m, i, o, n=name: order.append(n)))
    try:
        with torch.no_grad():
            unet(x[:2], t, encoder_hidden_states=ehs[:2])
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def pick_sites(all_sites: list[str], n: int) -> list[str]:
    """n sites spread evenly over the execution order (kept in execution order)."""
    idx = [round(i * (len(all_sites) - 1) / (n - 1)) for i in range(n)]
    return [all_sites[i] for i in idx]


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 32, 32, generator=g).expand(2 * R, -1, -1, -1).contiguous()  # shared noise
    ehs = torch.randn(2 * R, 8, 64, generator=g)   # [2R, tokens, dim]; rows differ (corruption)
    return x, ehs


def sample(call, x, ehs):
    """The loop: STEPS UNet calls with a trivial update; ``call(x, t, ehs)`` -> eps."""
    with torch.no_grad():
        for step in range(STEPS):
            t = torch.tensor(999 - 50 * step)
            eps = call(x, t, ehs)
            x = x - 0.05 * eps
    return x


def rows_for(site_index: int):
    r = site_index + 1                      # corrupted row r patches site sites[r-1]
    return [r, R + r], [0, R]


# ---- (b) raw forward hooks ---------------------------------------------------------------
def run_hooks(unet, sites, x, ehs):
    modules = dict(unet.named_modules())
    handles = []

    def make_hook(i):
        dst, src = rows_for(i)

        def hook(module, args, output):
            out = output.clone()
            out[dst] = output[src]
            return out
        return hook

    for i, s in enumerate(sites):
        handles.append(modules[s].register_forward_hook(make_hook(i)))
    try:
        return sample(lambda x, t, e: unet(x, t, encoder_hidden_states=e).sample, x, ehs)
    finally:
        for h in handles:
            h.remove()


# ---- (c) nnsight, one trace per UNet call ------------------------------------------------
def envoy_at(root, path: str):
    env = root
    for part in path.split("."):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


def run_nnsight_per_call(model, sites, x, ehs):
    envoys = [envoy_at(model, s) for s in sites]

    def call(x, t, e):
        with model.trace(x, t, encoder_hidden_states=e):
            for i, env in enumerate(envoys):
                dst, src = rows_for(i)
                env.output[dst] = env.output[src]
            eps = model.output.sample.save()
        return eps
    return sample(call, x, ehs)


# ---- (d) nnsight, one trace per sampling run ---------------------------------------------
class Sampler(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, ehs):
        return sample(lambda x, t, e: self.unet(x, t, encoder_hidden_states=e).sample, x, ehs)


def run_nnsight_one_trace(model, sites, x, ehs):
    envoys = [envoy_at(model.denoiser, s) for s in sites]
    with model.trace(x, ehs) as tracer:
        for _ in tracer.iter[:STEPS]:
            for i, env in enumerate(envoys):
                dst, src = rows_for(i)
                env.output[dst] = env.output[src]
        out = model.output.save()
    return out


def timed(fn) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w0) * 1000.0, (time.process_time() - c0) * 1000.0


def fixed_overhead(unet, model, sites, repeats: int, calls: int = 20) -> dict:
    """CPU ms per UNet call at batch 2 (UNet cheap, so the engine's fixed cost shows):
    row 1 takes row 0's output at all sites; plain vs torch hooks vs one nnsight trace."""
    g = torch.Generator().manual_seed(2)
    x, e, t = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 8, 64, generator=g), torch.tensor(500)
    modules = dict(unet.named_modules())
    envoys = [envoy_at(model, s) for s in sites]

    def hook(module, args, output):
        out = output.clone()
        out[1] = output[0]
        return out

    def plain():
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=e).sample

    def hooks():
        handles = [modules[s].register_forward_hook(hook) for s in sites]
        try:
            return plain()
        finally:
            for h in handles:
                h.remove()

    def nns():
        with model.trace(x, t, encoder_hidden_states=e):
            for env in envoys:
                env.output[1] = env.output[0]
            out = model.output.sample.save()
        return out

    assert torch.equal(hooks(), nns())
    cpu = {"plain": [], "torch_hooks": [], "nnsight_trace": []}
    for _ in range(repeats):
        for name, fn in [("plain", plain), ("torch_hooks", hooks), ("nnsight_trace", nns)]:
            c0 = time.process_time()
            for _ in range(calls):
                fn()
            cpu[name].append((time.process_time() - c0) * 1000.0 / calls)
    best = {n: round(min(v), 2) for n, v in cpu.items()}
    return {"cpu_ms_per_call_min": best,
            "overhead_ms_per_call": {n: round(v - best["plain"], 2) for n, v in best.items()}}


def correctness(plain, hooks, per_call, one_trace) -> dict:
    """Every patching engine gives the same latents; patching changes them; the clean row stays."""
    ref = hooks()
    plain_out = plain()
    checks = {"plain_differs_from_patched": not torch.equal(plain_out, ref)}
    for name, fn in [("nnsight_per_call", per_call), ("nnsight_one_trace", one_trace)]:
        try:
            out = fn()
            checks[f"{name}_max_abs_diff_vs_hooks"] = float((out - ref).abs().max())
        except Exception as err:  # report, do not hide
            checks[f"{name}_error"] = f"{type(err).__name__}: {err}"[:300]
    # Row 0 (clean) must be untouched by any patching.
    checks["clean_row_unchanged"] = bool(torch.equal(plain_out[[0, R]], ref[[0, R]]))
    return checks


def timings(variants, repeats: int) -> dict:
    """Wall and CPU ms of each variant, ``repeats`` rounds interleaved round-robin: min, median and every run."""
    wall = {n: [] for n, _ in variants}
    cpu = {n: [] for n, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    def summary(xs):
        return {"min": round(min(xs), 1), "median": round(statistics.median(xs), 1)}

    return {n: {"wall_ms": summary(wall[n]), "cpu_ms": summary(cpu[n]),
                "wall_runs_ms": [round(t, 1) for t in wall[n]],
                "cpu_runs_ms": [round(t, 1) for t in cpu[n]]} for n, _ in variants}


def ratios_vs_plain(results: dict, variants) -> tuple[dict, dict]:
    """(time ratios to the plain sampler, CPU overhead ms per UNet call) of every variant."""
    # Other jobs only ever add time, so the minimum over rounds is the least-disturbed
    # estimate; ratios of minima are the headline, medians are kept for reference.
    ratios = {f"{kind}_{stat}": {n: round(results[n][f"{kind}_ms"][stat]
                                          / results["a_plain"][f"{kind}_ms"][stat], 3)
                                 for n, _ in variants}
              for kind in ("wall", "cpu") for stat in ("min", "median")}
    overhead_ms_per_call = {
        n: round((results[n]["cpu_ms"]["min"] - results["a_plain"]["cpu_ms"]["min"]) / STEPS, 1)
        for n, _ in variants}
    return ratios, overhead_ms_per_call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only-overhead", action="store_true",
                    help="only the batch-2 fixed-overhead measurement")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 keeps CPU time meaningful on a shared 2-core box")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import nnsight
    from nnsight import NNsight

    unet = tiny_unet()
    x, ehs = inputs()
    all_sites = execution_order_sites(unet, x, torch.tensor(999), ehs)
    sites = pick_sites(all_sites, R - 1)

    plain = lambda: sample(lambda x, t, e: unet(x, t, encoder_hidden_states=e).sample, x, ehs)
    hooks = lambda: run_hooks(unet, sites, x, ehs)
    nn_model = NNsight(unet)
    per_call = lambda: run_nnsight_per_call(nn_model, sites, x, ehs)
    nn_sampler = NNsight(Sampler(unet))
    one_trace = lambda: run_nnsight_one_trace(nn_sampler, sites, x, ehs)

    small = fixed_overhead(unet, nn_model, sites, args.repeats)
    if args.only_overhead:
        print(json.dumps({"batch2_fixed_overhead": small, "n_sites": len(sites)}, indent=2))
        return

    checks = correctness(plain, hooks, per_call, one_trace)
    # Timing: variants interleaved round-robin so that load from other processes on the
    # machine falls on all of them alike; the correctness runs above were the warm-up.
    variants = [("a_plain", plain), ("b_torch_hooks", hooks),
                ("c_nnsight_per_call", per_call), ("d_nnsight_one_trace", one_trace)]
    variants = [(n, f) for n, f in variants if f"{n[2:]}_error" not in checks]
    results = timings(variants, args.repeats)
    ratios, overhead_ms_per_call = ratios_vs_plain(results, variants)

    print(json.dumps({
        "setup": {"batch_rows": 2 * R, "unet_calls": STEPS, "n_sites": len(sites), "sites": sites,
                  "unet_params": sum(p.numel() for p in unet.parameters()),
                  "repeats": args.repeats, "torch_threads": args.threads},
        "machine": {"cpu_threads": torch.get_num_threads(), "arch": platform.machine(),
                    "torch": torch.__version__, "nnsight": nnsight.__version__},
        "checks": checks, "timings": results, "ratio_vs_plain": ratios,
        "cpu_overhead_ms_per_unet_call": overhead_ms_per_call,
        "batch2_fixed_overhead": small,
    }, indent=2))


if __name__ == "__main__":
    main()

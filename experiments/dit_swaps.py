"""Staniszewski et al.'s question on toy-dit: does a K/V-input swap localise in joint attention, or only a text-stream swap?

Usage::

    python -m experiments.dit_swaps --out results/reference/dit_swaps                   # run what is missing, then summarise
    python -m experiments.dit_swaps --out results/reference/dit_swaps --summarise-only

Per attribute and swap input, one LocoGen sweep on toy-dit (``diffloc trace --method crossattn-swap
--swap-input kv|text-stream --window 1``, 6 prompts, seed 0, each prompt against every other value):
a single joint block reads either its text-stream keys and values (``kv``) or its whole text-stream
input (``text-stream``) from the altered prompt, every other block the original; the pooled vector
stays the original's (``kv-pooled``: the K/V swap with the altered pooled vector in the window rows). Effect by ground truth, (row − original) / (altered − original), over the
informative pairs (prompt × altered value whose altered image shows another value than the original's),
with 95 % bootstrap intervals over prompt × seed; a block *controls* the attribute when its interval's lower bound is
≥ 0.5. Writes ``OUT/summary.json``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from diffloc.tracing.causal import PAIR_KEYS
from diffloc.tracing.io import read_trace, write_plain_json
from diffloc.tracing.stats import bootstrap_effects

ATTRIBUTES = ("colour", "viewpoint", "style")
#: Variant -> swap options. ``kv-pooled``: the K/V swap with the altered prompt's pooled vector in the window rows
#: (with every block's K/V original except the window's), which tells what the pooled (adaLN) path carries.
VARIANTS = {"kv": ("--swap-input", "kv"), "text-stream": ("--swap-input", "text-stream"),
            "kv-pooled": ("--swap-input", "kv", "--pooled", "altered")}
INPUTS = tuple(VARIANTS)
THRESHOLD = 0.5


def run(out: Path, attribute: str, swap_input: str) -> Path:
    run_dir = out / f"{attribute}_{swap_input}"
    if not (run_dir / "trace.parquet").exists():
        subprocess.run([sys.executable, "-m", "diffloc", "trace", "--model", "toy-dit", "--attribute", attribute, "--method",
                        "crossattn-swap", "--component", "denoiser", *VARIANTS[swap_input], "--window", "1",
                        "--max-prompts", "6", "--seed", "0", "--out", str(run_dir)], check=True)
    return run_dir


def summarise_run(run_dir: Path) -> dict:
    table = read_trace(run_dir / "trace.parquet")
    # a swap pair informs when the two references differ by ground truth (altered is 'clean', original 'corrupted' here)
    keys = [*PAIR_KEYS, "alt_value"]  # one pair per prompt, seed and altered value
    pairs = table[table.kind == "clean"].groupby(keys)[["gt_clean", "gt_corrupted"]].first().reset_index()
    pairs["informative"] = pairs.gt_clean != pairs.gt_corrupted
    used = table.merge(pairs.loc[pairs.informative, keys], on=keys, how="inner")
    boot = bootstrap_effects(used, "gt", n=1000, seed=0).sort_values("layer")
    blocks = [{"block": int(r.layer), "site": r.site, "effect": round(float(r.effect), 3),
               "interval": [round(float(r.lower), 3), round(float(r.upper), 3)]} for r in boot.itertuples()]
    return {"n_pairs": int(len(pairs)), "n_informative": int(pairs.informative.sum()), "blocks": blocks,
            "controlling": [b["block"] for b in blocks if b["interval"][0] >= THRESHOLD]}


def summarise(out: Path) -> dict:
    result = {"threshold": THRESHOLD, "metric": "gt", "runs": {}}
    for a in ATTRIBUTES:
        for s in INPUTS:
            d = out / f"{a}_{s}"
            if (d / "trace.parquet").exists():
                result["runs"][f"{a}_{s}"] = {"attribute": a, "swap_input": s, **summarise_run(d)}
    write_plain_json(result, out / "summary.json")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/reference/dit_swaps"))
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    if not args.summarise_only:
        for a in ATTRIBUTES:
            for s in INPUTS:
                run(args.out, a, s)
    for k, r in summarise(args.out)["runs"].items():
        print(k, r["n_informative"], "/", r["n_pairs"], "controlling", r["controlling"],
              [(b["block"], b["effect"]) for b in r["blocks"]])


if __name__ == "__main__":
    main()

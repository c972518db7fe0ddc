"""The toy UNet's findings and screen validation under counterfactual corruption, on fresh prompts.

Usage::

    OMP_NUM_THREADS=1 python -m experiments.evidence --out results/reference/evidence_v1
    python -m experiments.evidence --out results/reference/evidence_v1 --summarise-only

Every sweep uses ``--corrupt replace`` (each clean prompt against every other value of its
attribute, in the world's grammar) on prompts drawn fresh for this run (:func:`fresh_prompts`:
the world's prompt generator with another seed; none is in the shipped prompt sets the other
experiments use), seed 0. Per attribute, ``OUT/<attribute>_<protocol>``:

- ``unet``: exact patching of every UNet site at every step;
- ``swap``: LocoGen's cross-attention swap, one window per attn2 (the counterfactual caption as
  the altered prompt);
- ``text`` / ``text_suffix``: the text encoder in token mode (hidden and attention states) and
  in suffix mode (hidden states);
- ``atp``, ``ig``, ``ig32``: the gradient screens over the same text and UNet sites (``ig`` with 8
  points, ``ig32`` with 32), compared with ``unet`` and ``text`` by :mod:`experiments.screen_stats`.

Counts per attribute are chosen so that each protocol has at least 12 informative pairs by the
counts of ``results/reference/informative_pairs`` (replace flips 85-100 % of the UNet's pairs;
style loses every pair from 'checkered', whose caption tokenises to another length; object loses
'triangles'). The summary (``summarise``) is written by :mod:`experiments.evidence_summary`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from diffloc.tracing.prompts import MarkedPrompt, attribute_prompts
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig
from experiments.make_prompts import prompt_set

ATTRIBUTES = ("colour", "viewpoint", "style", "object", "count")
#: fresh prompts per attribute (pairs: colour 4x3, viewpoint 6x2, style 12 of 18x2, object ~2/3 of 9x3, count 10x2)
N_PROMPTS = {"colour": 4, "viewpoint": 6, "style": 18, "object": 9, "count": 10}
FRESH_SEED = 1
TEXT_KINDS = ("hidden", "attn")

#: protocol -> TraceConfig overrides; run in this order (cheap and central first)
PROTOCOLS = {
    "unet": dict(component="unet"),
    "swap": dict(component="unet", method="crossattn-swap"),
    "atp": dict(component="all", method="atp", text_kinds=TEXT_KINDS),
    "text": dict(component="text_encoder", text_kinds=TEXT_KINDS),
    "text_suffix": dict(component="text_encoder", restore="suffix", text_kinds=("hidden",)),
    "ig": dict(component="all", method="ig", text_kinds=TEXT_KINDS, method_options={"ig_steps": 8}),
    "ig32": dict(component="all", method="ig", text_kinds=TEXT_KINDS, method_options={"ig_steps": 32}),
}


def fresh_prompts(attribute: str, n: int | None = None, seed: int = FRESH_SEED) -> tuple[str, ...]:
    """``n`` marked prompts of ``attribute`` from the world's generator at ``seed``, none in the shipped set."""
    shipped = {p.text for p in attribute_prompts("toy", attribute)}
    out = [p for p in prompt_set(attribute, 4 * (n or N_PROMPTS[attribute]), seed=seed) if MarkedPrompt.parse(p).text not in shipped]
    return tuple(dict.fromkeys(out))[: n or N_PROMPTS[attribute]]


def config(attribute: str, protocol: str) -> TraceConfig:
    return TraceConfig(model="toy", attribute=attribute, corrupt="replace", prompts=fresh_prompts(attribute), seeds=(0,),
                       batch_size=128, **PROTOCOLS[protocol])


def run(out: Path, attributes, protocols) -> None:
    from diffloc.tracing.models import load_model

    model = load_model("toy")
    for protocol in protocols:
        for attribute in attributes:
            run_sweep(config(attribute, protocol), out / f"{attribute}_{protocol}", model=model)
            print(f"done {attribute}_{protocol}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/reference/evidence_v1"))
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--attributes", default=",".join(ATTRIBUTES))
    p.add_argument("--summarise-only", action="store_true")
    a = p.parse_args(argv)
    if not a.summarise_only:
        a.out.mkdir(parents=True, exist_ok=True)
        for attr in a.attributes.split(","):
            (a.out / f"prompts_{attr}.txt").write_text("\n".join(fresh_prompts(attr)) + "\n")
        run(a.out, a.attributes.split(","), a.protocols.split(","))
    from experiments.evidence_summary import summarise

    summarise(a.out)


if __name__ == "__main__":
    main()

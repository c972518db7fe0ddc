"""docs/findings.md's sections on toy-dit swaps, DiT edits, null-space preservation and interference (used by experiments.make_docs).

Usage::

    from experiments.make_docs_dit import dit_edit_sections, dit_swap_section
    text = dit_edit_sections(REF, table, cell)   # "" when none of the result folders exist
    text = dit_swap_section(REF, table)

Reads ``dit_swaps/summary.json`` (``python -m experiments.dit_swaps``), ``edit_eval_dit_v*``
(``diffloc evaluate --model toy-dit``), ``many_edits_*`` (``python -m experiments.many_edits``) and
``interference_*`` (``python -m experiments.interference``) under ``results/reference/``; every
number printed here is read from those files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

GT = ["gt_efficacy", "gt_generalization", "gt_specificity", "gt_others"]
HEAD = ["efficacy", "generalization", "specificity", "others"]
NOTE = ("Each cell is the rate, its 95 % interval in brackets (Wilson over images; \"others\": bootstrap over cases) "
        "and its n (images) in parentheses.")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _dit_eval(ref: Path, table: Callable, cell: Callable) -> str:
    runs = [(p.parent.name, _load(p)) for p in sorted(ref.glob("edit_eval_dit_v*/summary.json"))]
    if not runs:
        return ""
    rows, sources = [], []
    for name, s in runs:
        sources.append(f"`results/reference/{name}/` (`{s['run']}`)")
        for m, r in s["methods"].items():
            if name != runs[0][0] and m in ("unedited", "oracle"):
                continue  # the baselines once
            rows.append([m, *[cell(r, c) for c in GT], r.get("n_images", "—")])
    return ("## Edits on toy-dit (the MM-DiT)\n\n"
            f"Sources: {'; '.join(sources)}. The 24 toy cases, 1 seed, each edit on the clean model and undone "
            "before the next, judged by the world's exact readers. `context-embedder` edits the shared text entry "
            "(UCE-FLUX form), `joint-attn` the text-stream key/value projections of every joint-attention block, "
            "`quickfix` toy-dit's CLIP text encoder (layer 0 `out_proj`), which toy-dit shares with the UNet world. "
            "`+preserve`: the cases' preserve captions, kept softly (UCE's term; the DiT editors always take them); "
            f"`+nullspace`: kept exactly, up to the rank threshold `nullspace_rtol` given in the run. The `oracle` row "
            "(the unedited model given the target in its prompt) is toy-dit's own ceiling: an edit cannot make the model "
            f"draw what it does not draw when asked directly. {NOTE}\n\n"
            + table(["method", *HEAD, "n images"], rows)
            + "\nEfficacy by attribute (edit prompts; Wilson interval, n images):\n\n" + _per_attribute(runs, table)
            + _drawn(ref, runs, table))


def _drawn(ref: Path, runs: list, table: Callable) -> str:
    """The rates pooled over the attributes toy-dit itself draws when asked (oracle efficacy ≥ 0.95 by attribute)."""
    import pandas as pd

    from diffloc.evaluate import wilson

    oracle = runs[0][1].get("per_attribute_gt_ci", {})
    drawn = sorted(k.split("/")[1] for k, v in oracle.items() if k.startswith("oracle/") and v["edit"]["value"] >= 0.95)
    if not drawn:
        return ""
    rows = []
    for i, (name, _) in enumerate(runs):
        t = pd.read_parquet(ref / name / "eval.parquet")
        t = t[t.attribute.isin(drawn) & (~t.method.isin(["unedited", "oracle"]) | (i == 0))]
        for m, g in t.groupby("method", sort=False):
            cells = []
            for split in ("edit", "positive", "negative"):
                x = g[g.split == split].gt_success
                lo, hi = wilson(float(x.sum()), len(x))
                cells.append(f"{x.mean():.3f} [{lo:.3f}, {hi:.3f}] ({len(x)})")
            rows.append([m, *cells])
    return (f"\nPooled over the attributes toy-dit draws when asked ({', '.join(drawn)}: oracle efficacy ≥ 0.95 each), "
            "ground truth, Wilson interval, n images:\n\n" + table(["method", "efficacy", "generalization", "specificity"], rows))


def _per_attribute(runs: list, table: Callable) -> str:
    per: dict = {}
    for _, s in runs:
        for key, v in s.get("per_attribute_gt_ci", {}).items():
            method, attribute = key.split("/")
            per.setdefault(method, {})[attribute] = v["edit"]
    attrs = sorted({a for m in per.values() for a in m})

    def c(x):
        return "—" if not x else f"{x['value']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}] ({x['n']})"

    return table(["method", *attrs], [[m, *[c(v.get(a)) for a in attrs]] for m, v in per.items()])


def _many(ref: Path, table: Callable, cell: Callable) -> str:
    found = [(p.parent.name, _load(p)) for p in sorted(ref.glob("many_edits_*/summary.json"))]
    found = [(n, s) for n, s in found if n != "many_edits"]
    if not any(n != "many_edits_v2" for n, _ in found):
        return ""
    rows = []
    for name, s in found:
        rtol = (s.get("options") or {}).get(s["method"].split("+")[0], {}).get("nullspace_rtol")
        label = s["method"] + (f" (rtol {rtol:g})" if rtol is not None else "")
        for r in sorted(s["runs"].values(), key=lambda r: r["n_edits"]):
            if r["mode"] == "batched":
                rows.append([s.get("model", "toy"), label, r["n_edits"], *[cell(r, c) for c in GT], f"`results/reference/{name}/`"])
    evaluated = {name: len(s["evaluated_cases"]) for name, s in found}
    return ("## Many edits: soft against null-space preservation, on both worlds\n\n"
            "Sources: the folders in the last column (`python -m experiments.many_edits`). Each evaluated case on a model carrying it with N − 1 other edits of the committed set (one stacked "
            "solve, `batched`), 1 seed, ground truth; cases evaluated per run: "
            + ", ".join(f"`{n}` {k}" for n, k in evaluated.items()) + " (every case is edited in either way). `+preserve` keeps the preserve "
            "captions' keys softly (UCE), `+nullspace` confines the update to the complement of their span (AlphaEdit "
            f"/ SPEED). {NOTE}\n\n"
            + table(["model", "method", "N", *HEAD, "run"], rows))


def _interference(ref: Path, table: Callable) -> str:
    found = [(p.parent.name, _load(p)) for p in sorted(ref.glob("interference_*/summary.json"))]
    if not found:
        return ""

    def share(x: dict) -> str:
        return "—" if not x["n"] else f"{x['value']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}] ({x['n']})"

    rows, figs = [], []
    for name, s in found:
        w = s["worst_cell"]
        worst = f"{w['edit']} on {w['concept']}: {w['value']:.2f}" if w["edit"] else "—"
        rows.append([s["model"], s["method"], len(s["rows"]) - 2, len(s["columns"]), share(s["specificity_unedited"]),
                     share(s["specificity_alone"]), share(s["specificity_together"]), worst])
        figs.append(f"![interference, {s['method']} on {s['model']}](../results/reference/{name}/interference.png)")
    return ("## The interference matrix\n\n"
            "Rows: the unedited model (each concept's own fidelity, the reference for every cell below it), each edit of the largest conflict-free set, applied alone to the clean model, and last all of them "
            "together; columns: each preserved concept (an attribute value that the cases' negative prompts hold "
            "fixed, up to 3 prompts each, 1 seed); cells: ground-truth specificity. Prompts in which the model's edits "
            "map the concept's own word are not preserved prompts there and are left out; a cell left with none is "
            "'ed.' (with all 19 edits together most concepts' words are edited). Beside it, each edit's own "
            "efficacy alone and among all. Sources: "
            + ", ".join(f"`results/reference/{n}/`" for n, _ in found) + " (`python -m experiments.interference`).\n\n"
            + table(["model", "method", "edits", "concepts", "unedited model", "specificity, each edit alone", "specificity, all together",
                     "worst cell (alone)"], rows)
            + "\n" + "\n".join(figs) + "\n")


def _dit_diagnosis(ref: Path, table: Callable) -> str:
    found = [(name, where, _load(ref / name / "diagnosis.json")) for name, where in
             (("diagnosis_dit_text", "CLIP residual after layer 0 (`quickfix`'s site)"),
              ("diagnosis_dit_entry", "text stream entering block 0 (`context_embedder`'s output)"))]
    found = [f for f in found if f[2]]
    if not found:
        return ""
    attribute = {(c["source"], c["target"]): c["attribute"]
                 for c in map(json.loads, (ref.parents[1] / "experiments" / "cases" / "toy_edits.jsonl").read_text().splitlines())}
    rows = []
    for name, where, d in found:
        tot: dict = {}
        for c in d.get("cases", [d]):
            a = attribute.get((c["source"], c["target"]), "?")
            for cond, x in c["conditions"].items():
                h, n = tot.setdefault(a, {}).get(cond, (0, 0))
                tot[a][cond] = (h + x["hits"], n + x["n"])
        for a in sorted(tot):
            rows.append([where, a, *[f"{tot[a][k][0]}/{tot[a][k][1]}" for k in ("none", "subject", "after_subject", "all")]])
    return ("## Diagnosis on toy-dit: where can the target be patched in?\n\n"
            "Sources: " + ", ".join(f"`results/reference/{n}/`" for n, _, _ in found) + " (`diffloc diagnose --model toy-dit "
            "--method quickfix|context-embedder --cases experiments/cases/toy_edits.jsonl --seeds 2 --max-prompts 4`). The "
            "target prompt's own state, patched into the source prompt at the subject, after it, or everywhere, on "
            "the unedited model; images in which ground truth reads the target (hits / n), summed over each "
            "attribute's cases. The pooled text vector (adaLN) is not patched at either place: what only it "
            "carries cannot appear.\n\n"
            + table(["patched at", "attribute", "none", "subject", "after subject", "all positions"], rows))


def dit_edit_sections(ref: Path, table: Callable, cell: Callable) -> str:
    """The DiT edit sections, each present when its result files are."""
    parts = (_dit_eval(ref, table, cell), _dit_diagnosis(ref, table), _many(ref, table, cell), _interference(ref, table))
    return "\n".join(s for s in parts if s)


def dit_swap_section(ref: Path, table: Callable) -> str:
    s = _load(ref / "dit_swaps" / "summary.json")
    if not s:
        return ""
    runs = list(s["runs"].values())
    n_blocks = max(len(r["blocks"]) for r in runs)

    def c(b):
        return f"{b['effect'] + 0.0:.2f} [{b['interval'][0] + 0.0:.2f}, {b['interval'][1] + 0.0:.2f}]"

    rows = [[r["attribute"], r["swap_input"], f"{r['n_informative']} / {r['n_pairs']}", *[c(b) for b in r["blocks"]],
             ", ".join(map(str, r["controlling"])) or "none"] for r in runs]
    return ("### Swaps on toy-dit: K/V input against text stream\n\n"
            "Source: `results/reference/dit_swaps/` (`python -m experiments.dit_swaps`). One joint block at a time "
            "reads, from the altered prompt, either its text-stream keys and values (`kv`, the cross-attention swap "
            "LocoGen uses, which Staniszewski et al. call ineffective for joint attention) or its whole text-stream "
            "input (`text-stream`); every other block and the pooled vector keep the original prompt. Effect by "
            "ground truth, (row − original) / (altered − original), over informative pairs (prompt × altered value "
            "whose two reference images differ by ground truth), 95 % bootstrap interval over prompt × seed; a block "
            f"controls the attribute when the lower bound is ≥ {s['threshold']}.\n\n"
            + table(["attribute", "swap input", "informative / pairs", *[f"block {i}" for i in range(n_blocks)], "controlling"],
                    rows))


def informative_section(ref: Path, table: Callable) -> str:
    """Informative pairs per attribute: Gaussian noise by scale against counterfactual replacement, on both toy models."""
    s = _load(ref / "informative_pairs" / "summary.json")
    if not s:
        return ""

    def c(x: dict) -> str:
        return f"{x['flips']}/{x['n']} ({x['fraction']:.2f} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}])" if x["n"] else "—"

    rows = []
    for spec, attrs in s["models"].items():
        for attr, r in attrs.items():
            g = r["gaussian"]
            big = {scale: x for scale, x in zip(g["ladder"], g["by_scale"])}
            rows.append([spec, attr, r["n_prompts"], c(g["at_3sigma"]), c(big[8.0]), f"{g['auto']:g}σ" + ("" if g["auto_reached_80"] else " (< 80 %)"),
                         c(r["replace"]), r["replace"]["skipped_counterfactual_pairs"]])
    return ("## Informative pairs: Gaussian noise against counterfactual replacement\n\n"
            "Source: `results/reference/informative_pairs/` (`python -m experiments.informative_pairs`). Pairs whose "
            "corruption flips ground truth (flips / pairs, the fraction with its Wilson 95 % interval), over the "
            f"attribute's tracing prompts × seeds {', '.join(map(str, s['seeds']))}: Gaussian noise on the attribute "
            "tokens at 3 σ (ROME's default) and 8 σ, the scale `--noise-scale auto` would choose (the smallest on the "
            "1–16 σ ladder flipping ≥ 80 %), and `--corrupt replace` (each other value of the attribute; "
            "counterfactuals that tokenise to another length are skipped and counted). Only clean and corrupted "
            "images are made; these are the counts a trace's `causal_sites.json` reports as `n_gt_flips`.\n\n"
            + table(["model", "attribute", "prompts", "gaussian 3σ", "gaussian 8σ", "auto", "replace", "skipped (replace)"], rows))


def dit_bench_section(ref: Path, table: Callable, met: Callable) -> str:
    """`diffloc bench trace --model toy-dit`: the sweep, naive and memory ratios and the screens' time over exact."""
    b = _load(ref / "bench_trace_toy_dit.json")
    if not b:
        return ""
    su, sec, t, st, so = b["setup"], b["seconds"], b["targets"], b["screen_targets"], b["screen_over_exact"]
    rows = [[f"`{k}`", f"**{b[k]}**", t[k], met(b[k], t[k])] for k in ("sweep_over_plain", "naive_over_sweep", "peak_mem_ratio")]
    for scope in b.get("screen_scopes", ["denoiser"]):
        for name in so:
            if scope not in so[name]:
                continue
            v, target = so[name][scope], st.get(f"{name} {scope}")
            what = "every block state" if scope == "denoiser" else "every block state and head"
            rows.append([f"`screen_over_exact` {name}, {what}", f"**{v}** ({sec[f'{name}_{scope}']:.2f} s vs "
                         f"{sec[f'exact_{scope}']:.2f} s)", target or "(reported)", met(v, target) if target else ""])
    rows.append(["`peak_mem_ratio_screen` (atp ÷ plain generation)", f"{b['peak_mem_ratio_screen']}", st["peak_mem_ratio_screen"],
                 met(b["peak_mem_ratio_screen"], st["peak_mem_ratio_screen"])])
    scopes = " and ".join(f"the {b.get(f'rows_{sc}', '—')} rows of its `{sc}` scope" for sc in b.get("screen_scopes", ["denoiser"]))
    flag = "" if "heads" in b.get("screen_scopes", []) else " --no-heads"
    return ("## Tracing toy-dit on the CPU\n\n"
            f"Source: `results/reference/bench_trace_toy_dit.json` (`diffloc bench trace --model toy-dit{flag}`). "
            f"{su['steps']} steps, guidance {su['guidance']}, {su['images_per_call']} images per call, {su['threads']} thread(s), "
            f"{su['repeats']} repeats; screens over {scopes}, one prompt × seed. Ratios are measured within "
            "one run, on the shared 2-core CPU (other jobs running beside it).\n\n"
            + table(["figure", "measured", "target", ""], rows))


def _rate_ci(f: dict) -> str:
    """'0.40 [0.31, 0.50]' from a fidelity entry ``{"rate": r, "ci": [lo, hi]}``."""
    return f"{f['rate']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]"


def _rate_cells(f: dict, n: int, attrs=("object", "count", "style", "all")) -> list[str]:
    """Rate [Wilson 95 %] cells of bare fidelity rates ``{attribute: rate}`` over ``n`` samples."""
    from diffloc.evaluate import wilson

    return [_rate_ci({"rate": f[a], "ci": wilson(round(f[a] * n), n)}) for a in attrs]


def dit_training_section(ref: Path, table: Callable) -> str:
    """toy-dit fidelity along longer training (``toy_dit_continue/curve.json``, ``python -m experiments.dit_training_curve``)."""
    points = _load(ref / "toy_dit_continue" / "curve.json")
    if not points:
        return ""

    def low(attr):  # from 1,000 steps on: early from-scratch snapshots have not yet learnt the layout
        return min(p["fidelity"][attr]["rate"] for p in points if p["steps_total"] >= 1000)

    rows = []
    for p in points:
        r = p["recipe"]
        start = "warm start" if r.get("init_from") else "from scratch"
        how = ("pixel run shipped then" if r.get("shipped") else
               f"{start}, patch {r.get('patch_size', 4)}, lr {r['lr']:g}, warm-up {r['warmup']}, uniform-t share {r.get('uniform_t_share', 0):g}")
        rows.append([p["run"], how, p["steps_total"], *[_rate_ci(p["fidelity"][a]) for a in ("object", "count", "style", "all")], p["n"]])
    return ("### The pixel-space toy-dit's fidelity along longer training\n\n"
            "Source: `results/reference/toy_dit_continue/curve.json` (`python -m experiments.dit_training_curve`): runs "
            "of the pixel-space toy-dit (`experiments/toy/weights/dit_pixel/`, shipped until the latent model replaced it) warm-started from its checkpoint on a new warm-up + cosine schedule, or trained from scratch with another "
            "recipe (a cosine schedule over that run's own steps), each exported snapshot scored as "
            "above (exact readers, seed 0; Wilson 95 % intervals, n samples). Colour and viewpoint fidelity (not tabulated) "
            f"are at least {low('colour'):.2f} and {low('viewpoint'):.2f} in every snapshot from 1,000 steps on. Figure: [curve.png](../results/reference/toy_dit_continue/curve.png).\n\n"
            + table(["run", "recipe", "steps in all", "object", "count", "style", "all five", "n"], rows))


def dit_denoise_section(ref: Path, table: Callable) -> str:
    """Where the pixel-space toy-dit lost object and count along the sampling path (``toy_dit_pixel_denoise/probe.json``,
    ``python -m experiments.dit_denoise_probe --model experiments/toy/weights/dit_pixel``)."""
    probe = _load(ref / "toy_dit_pixel_denoise" / "probe.json")
    if not probe:
        return ""
    res = probe["results"]
    sigmas = sorted({r["sigma0"] for x in res for r in x["rows"]})
    rows = []
    for x in res:
        for mode in dict.fromkeys(r["mode"] for r in x["rows"]):
            by = {r["sigma0"]: r["fidelity"] for r in x["rows"] if r["mode"] == mode}
            for attr in ("object", "count", "all"):
                label = "pixel, 3,500 steps (shipped then)" if x["model"] == "shipped" else x["model"]   # recorded while it shipped
                rows.append([label, mode, attr, *[_rate_ci(by[s][attr]) if s in by else "—" for s in sigmas]])
    first = res[0]
    return ("### Where along the sampling path the pixel-space toy-dit lost an attribute\n\n"
            "Source: `results/reference/toy_dit_pixel_denoise/probe.json` (`python -m experiments.dit_denoise_probe --model "
            "experiments/toy/weights/dit_pixel`; the pixel-space toy-dit shipped until the latent one replaced it): each of "
            f"{first['n_prompts']} balanced prompts' exact render is noised to σ₀ and denoised by the model "
            f"({first['steps']} Euler steps on σ₀ … 0, the shipped σ's scaled by σ₀; σ₀ = 1 is plain generation), then read "
            f"exactly. Guidance: `none` (scale 1), `full` ({first['guidance_scale']:g} at every step, the shipped sampler), "
            f"`interval` ({first['guidance_scale']:g} only while σ > {first['interval_below']:g}). Cells: rate [Wilson 95 %]; "
            f"n = {first['n_prompts']} per cell. Colour, style and viewpoint are in the file. Figure: "
            "[probe.png](../results/reference/toy_dit_pixel_denoise/probe.png); samples (render, then one row per σ₀): "
            "[full](../results/reference/toy_dit_pixel_denoise/samples_full.png).\n\n"
            + table(["model", "guidance", "attribute", *[f"σ₀ = {s:g}" for s in sigmas]], rows))


def dit_sampler_section(ref: Path, table: Callable) -> str:
    """Whether sampler settings rescued the pixel-space toy-dit's shapes (``toy_dit_pixel_eval/sampler_sweep.json`` and
    ``guidance_sweep.json``, ``python -m diffloc_toy.evaluate --steps-sweep/--shift-sweep/--sweep``)."""
    steps = _load(ref / "toy_dit_pixel_eval" / "sampler_sweep.json")
    guid = _load(ref / "toy_dit_pixel_eval" / "guidance_sweep.json")
    if not steps:
        return ""

    rows = []
    for key, f in steps["fidelity"].items():
        n_steps, shift = (part.split("=")[1] for part in key.split(","))
        rows.append([n_steps, shift, f"{steps['guidance_scale']:g}", *_rate_cells(f, steps["n_samples"]), steps["n_samples"]])
    for scale, f in (guid or {}).get("fidelity", {}).items():
        rows.append([guid["num_inference_steps"], "1.0", f"{float(scale):g}", *_rate_cells(f, guid["n_samples"]), guid["n_samples"]])
    return ("### Sampler settings did not rescue the pixel-space toy-dit's shapes\n\n"
            "Source: `results/reference/toy_dit_pixel_eval/sampler_sweep.json` (`python -m diffloc_toy.evaluate --model "
            "experiments/toy/weights/dit_pixel --n-per-value 25 --steps-sweep 20,50,100 --shift-sweep 0.5,3`: evaluate's "
            "prompts and seed 0, Euler steps at shift 1, then the shift at 20 steps) and `guidance_sweep.json` (`--sweep "
            "2,3,5,7`, seed 100). The pixel-space weights (`experiments/toy/weights/dit_pixel/`), shipped until the latent "
            "toy-dit replaced them; "
            "cells: rate [Wilson 95 %]. Colour and viewpoint are 1.00 in every row (in the files).\n\n"
            + table(["Euler steps", "shift", "guidance", "object", "count", "style", "all five", "n"], rows))


def dit_latent_section(ref: Path, table: Callable) -> str:
    """The shipped latent toy-dit's training, stage by stage, against the pixel runs r5/r6 at equal steps
    (``toy_dit_latent/``; ``diffloc toy train --family vae`` / ``--family dit --set vae=…``)."""
    curve, ae = _load(ref / "toy_dit_latent" / "curve.json"), _load(ref / "toy_dit_latent" / "ae_check.json")
    if not curve or not ae:
        return ""
    pixel = {(p["run"], p["steps_total"]): p for p in _load(ref / "toy_dit_continue" / "curve.json") or []}
    attrs = ("object", "count", "style", "all")

    rows = []
    for p in curve:
        rows.append(["latent, patch 1", p["step"], *_rate_cells(p["fidelity"], p["n"]), p["n"]])
        for run, name in (("r6", "pixel, patch 4 (r6)"), ("r5", "pixel, patch 2 (r5)")):
            if (run, p["step"]) in pixel:
                q = pixel[run, p["step"]]
                rows.append([name, p["step"], *[_rate_ci(q["fidelity"][a]) for a in attrs], q["n"]])
    warm = _load(ref / "toy_dit_latent" / "curve_warm.json") or []
    for p in warm:                                          # warm start from the 2,000-step EMA, steps counted in all
        rows.append([f"latent, warm start (lr {p['lr']:g}, cosine over {p['schedule']:,})", p["step_total"],
                     *_rate_cells(p["fidelity"], p["n"]), p["n"]])
    for p in _load(ref / "toy_dit_latent" / "curve_warm2.json") or []:   # the last stage, and its sibling on the 6,000-step AE
        rows.append([p["label"], p["step_total"], *_rate_cells(p["fidelity"], p["n"]), p["n"]])
    for steps in (2000, 4500, 5500):                        # the exports, through the project's own evaluation
        official = _load(ref / "toy_dit_latent" / f"toy_eval_{steps}.json")
        if official:
            f, n = official["fidelity"], official["n_samples"]
            rows.append(["latent, `diffloc toy evaluate`", steps, *_rate_cells(f, n), n])
    warm_text = ("Warm-start rows continue the previous stage's EMA on a new schedule (`--set init_weights=DIR/dit/transformer "
                 "--set lr=… --set warmup=100`: fresh Adam, generator seed 8), steps counted in all. " if warm else "")
    more = _load(ref / "toy_dit_latent" / "ae_check_6000.json")
    ceiling = (f"; after 3,000 more steps (lr 5e-4, cosine) {more['fidelity']['object']:.3f}" if more else "")
    return ("### toy-dit in a latent space: how the shipped model was trained\n\n"
            "Source: `results/reference/toy_dit_latent/` (runs of the former `experiments.dit_latent`, now `diffloc toy train "
            "--family vae` and `--family dit --set vae=… --set patch_size=1`, the same code path bit for bit; the recipe is in "
            "[toy_world.md](toy_world.md)). An `AutoencoderKL` "
            f"(f4, 8 channels) trained {ae['steps']:,} steps reconstructs fresh renders with object read right in "
            f"{ae['fidelity']['object']:.3f} of n = {ae['n']} (colour, style, viewpoint and count 1.00){ceiling}: "
            "the ceiling of any model decoded by it. The shipped transformer (6 blocks, width 128) trained on its latents "
            "at patch 1 sees 64 image tokens, as the pixel model at patch 4 does, with runs r5/r6's recipe from scratch "
            "(seed 0, cosine over 2,000 steps); each snapshot scored on evaluate's 100 prompts, read exactly. " + warm_text +
            "Cells: rate [Wilson 95 %]. The `diffloc toy evaluate` rows score the exports (`export`: `transformer/`, `vae/` with SD3's `scaling_factor` "
            "and `shift_factor`) through the project's own evaluation (`diffloc toy evaluate --model-dir DIR/dit "
            "--n-per-value 25`, n = 100; at 5,500, the shipped model, `diffloc toy evaluate --model toy-dit` at its default "
            "n = 200: the shipped sampler, other noise seeds; `toy_eval_STEPS.json`). Samples: "
            "[samples_2000.png](../results/reference/toy_dit_latent/samples_2000.png), "
            "[samples_4500.png](../results/reference/toy_dit_latent/samples_4500.png), "
            "[eval_samples_2000.png](../results/reference/toy_dit_latent/eval_samples_2000.png), "
            "[eval_samples_4500.png](../results/reference/toy_dit_latent/eval_samples_4500.png), "
            "[samples_5500.png](../results/reference/toy_dit_latent/samples_5500.png), "
            "[eval_samples_5500.png](../results/reference/toy_dit_latent/eval_samples_5500.png).\n\n"
            + table(["model", "steps", "object", "count", "style", "all five", "n"], rows))

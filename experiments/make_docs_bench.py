"""The benchmarks page (docs/benchmarks.md): tracing, screens, editing, sampler variants and GPU runs, from results/reference/.

Usage::

    from experiments.make_docs_bench import benchmarks_page
    text = benchmarks_page()          # the page, as python -m experiments.make_docs writes it
"""
from __future__ import annotations

import json

from experiments.docs_tables import HEADER, REF, load, md_table, met
from experiments.make_docs_dit import dit_bench_section


def _bench_trace() -> str:
    b = load("bench_trace.json")
    su, ss, sec = b["setup"], b["screen_setup"], b["seconds"]
    t, st = b["targets"], b["screen_targets"]
    so = b["screen_over_exact"]
    sk = b["skipped_noop"]
    mem, mems = b["peak_mem_mb"], b["peak_mem_mb_screen"]
    rss = b["peak_rss_mb_screen"]
    th = b["ms_per_image_threads"]
    rows = [
        ["`screen_over_exact` atp, text encoder", f"**{so['atp']['text_encoder']}** ({sec['atp_text_encoder']:.1f} s vs "
         f"{sec['exact_text_encoder']:.1f} s)", st["atp text_encoder"], met(so["atp"]["text_encoder"], st["atp text_encoder"])],
        ["`screen_over_exact` atp, every head", f"**{so['atp']['heads']}** ({sec['atp_heads']:.1f} s vs {sec['exact_heads']:.1f} s)",
         st["atp heads"], met(so["atp"]["heads"], st["atp heads"])],
        ["`screen_over_exact` ig, text encoder / heads", f"{so['ig']['text_encoder']} / {so['ig']['heads']}", "(reported)", ""],
        ["`naive_over_sweep_text`", f"**{b['naive_over_sweep_text']}** (of {sk['rows']} rows, {sk['noop']} no-ops and "
         f"{sk['duplicate']} duplicates skipped)", st["naive_over_sweep_text"], met(b["naive_over_sweep_text"], st["naive_over_sweep_text"])],
        ["`peak_mem_ratio_screen` (atp ÷ plain generation)", f"{b['peak_mem_ratio_screen']} ({mems['screen']} MB vs {mems['plain']} MB "
         f"live tensors; RSS {rss['screen']} vs {rss['plain']} MB)", st["peak_mem_ratio_screen"],
         met(b["peak_mem_ratio_screen"], st["peak_mem_ratio_screen"])],
        ["`sweep_over_plain`", f"**{b['sweep_over_plain']}**", t["sweep_over_plain"], met(b["sweep_over_plain"], t["sweep_over_plain"])],
        ["`naive_over_sweep` (UNet rows)", f"**{b['naive_over_sweep']}**", t["naive_over_sweep"], met(b["naive_over_sweep"], t["naive_over_sweep"])],
        ["`peak_mem_ratio`", f"**{b['peak_mem_ratio']}** ({mem['sweep']} MB vs {mem['plain']} MB)", t["peak_mem_ratio"],
         met(b["peak_mem_ratio"], t["peak_mem_ratio"])],
        ["`ms_per_image_threads`", f"{th['before_1_thread']:.0f} → {th['after_2_threads']:.0f} ms per image (1 thread → 2)", "", ""],
    ]
    return ("## Tracing on the CPU\n\n"
            f"Source: `results/reference/bench_trace.json` (`diffloc bench trace`). Model `{su['model']}`, "
            f"{su['steps']} steps, guidance {su['guidance']}, {su['images_per_call']} images per call, {su['threads']} threads, "
            f"{su['repeats']} repeat(s), on {su['machine']}. The screen figures: attribute `{ss['attribute']}`, prompt "
            f"`{ss['prompt']}`, {ss['ig_steps']} ig points. Ratios are measured within one run; memory is the peak of "
            "live tensor bytes a call creates, with the resident-set growth beside it.\n\n"
            + md_table(["figure", "measured", "target", ""], rows))


def _bench_edit() -> str:
    b = load("refact_fix/bench_edit.json")
    t = b["targets"]
    k = b["quickfix_shape"]["K"]
    c = b["rank_one_shape"]["C"]
    rows = [
        ["`quickfix_ms_sd_sized`", f"**{b['quickfix_ms_sd_sized']}** ms (solve in the {b['quickfix_space']} space; "
         f"direct form {b['quickfix_direct_ms']} ms; max relative difference {b['woodbury_max_rel_diff']})",
         t["quickfix_ms_sd_sized"], met(b["quickfix_ms_sd_sized"], t["quickfix_ms_sd_sized"])],
        ["rank-one update, solving with C", f"{b['rank_one_ms_sd_sized']} ms", "", ""],
        ["rank-one update, from the cached Cholesky factor", f"**{b['rank_one_cached_ms']}** ms (factorisation "
         f"{b['cholesky_ms']} ms, paid once per layer)", "", ""],
        [f"{b['n_edits']} edits, one stacked solve / one solve each", f"{b['batched_ms']} / {b['naive_ms']} ms", "", ""],
        ["`quickfix_ms_toy` (gather, solve, apply, undo)", f"{b['quickfix_ms_toy']} ms", "", ""],
        ["`refact_s_toy`", f"**{b['refact_s_toy']}** s ({b['refact_toy_opt_steps']} optimiser steps)", t["refact_s_toy"],
         met(b["refact_s_toy"], t["refact_s_toy"])],
    ]
    for key, what in (("nullspace_ms_sd_sized", "null-space solve, {K_preserve[0]} preserved keys"),
                      ("context_embedder_ms_flux_sized", "FLUX-sized `context_embedder` closed form, W0 {W0[0]} × {W0[1]}")):
        if key in b:
            shape = b[key.replace("_ms_sd_sized", "_shape").replace("_ms_flux_sized", "_shape")]
            rows.append([f"`{key}` ({what.format(**shape)})", f"**{b[key]}** ms", t[key], met(b[key], t[key])])
    return ("## Editing on the CPU\n\n"
            f"Source: `results/reference/refact_fix/bench_edit.json` (`diffloc bench edit`). {b['device']}, "
            f"{b['torch_threads']} thread(s), torch {b['torch']}, {b['repeats']} repeats (medians). SD-sized shapes: "
            f"Diff-QuickFix W0 {b['quickfix_shape']['W0'][0]}², {k[0]} key/value pairs; rank-one C {c[0]}².\n\n"
            + md_table(["figure", "measured", "target", ""], rows))


def _sampler() -> str:
    p = load("sampler_profile.json")
    su = p["setup"]
    rows = []
    for name, v in p["variants"].items():
        if "error" in v:
            rows.append([name, "—", "—", f"error: `{v['error']}`"])
        else:
            rows.append([name, f"{v['ms_per_image']:.1f}", f"{v['speedup']:.2f}", f"{v['max_abs_diff']:.1e}"])
    return ("## Sampler variants on the CPU\n\n"
            f"Source: `results/reference/sampler_profile.json` (`python -m experiments.profile_sampler`). One batched "
            f"sweep call: {su['images_per_call']} images ({su['rows']} restored rows), {su['steps']} steps, {su['repeats']} "
            f"repeats, {su['cores']} cores, torch {su['torch']}. Which variants were kept, and why: "
            "[speed.md](speed.md).\n\n" + md_table(["variant", "ms / image", "speed-up", "max \\|Δ\\| vs baseline"], rows))


def _gpu() -> str:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((REF / "gpu_bench").glob("*.json"))}
    card = (REF / "gpu_bench" / "card.txt").read_text().strip().splitlines()[-1]
    names = list(runs)
    tr = {n: runs[n]["trace"] for n in names}

    def row(label, fn):
        return [label, *[fn(runs[n], tr[n]) for n in names]]

    rows = [
        row("dtype, steps, guidance", lambda r, t: f"{r['dtype']}, {r['steps']}, {t['setup']['guidance']}"),
        row("images per sweep call", lambda r, t: t["setup"]["images_per_call"]),
        row("ms per image in the sweep (at 2× rows)",
            lambda r, t: f"**{t['ms_per_image']:.0f}** ({t['linearity_ms_per_row']['at_2x_rows']:.0f})"),
        row("images per second, plain generation", lambda r, t: t["images_per_s_plain"]),
        row(f"`sweep_over_plain` (target {tr[names[0]]['targets']['sweep_over_plain']})", lambda r, t: f"**{t['sweep_over_plain']}**"),
        row(f"`naive_over_sweep` (target {tr[names[0]]['targets']['naive_over_sweep']})",
            lambda r, t: f"{t['naive_over_sweep']} ({met(t['naive_over_sweep'], t['targets']['naive_over_sweep'])})"),
        row("peak memory above the weights, sweep / plain (MB)",
            lambda r, t: f"{t['peak_mem_mb']['sweep']:.0f} / {t['peak_mem_mb']['plain']:.0f} (ratio {t['peak_mem_ratio']})"),
        row("gradient screens", lambda r, t: "; ".join(
            f"`{k}`: " + (f"skipped ({v['skipped']})" if "skipped" in v else f"crashed, fixed in {v.get('fixed_in', '?')}")
            for k, v in r.items() if k.startswith("screens_") and isinstance(v, dict))),
    ]
    v = runs[names[0]]["versions"]
    return ("## GPU\n\n"
            f"Source: `results/reference/gpu_bench/` (`python -m experiments.gpu_bench`). Card: {card}; torch "
            f"{v['torch']}, diffusers {v['diffusers']}, transformers {v['transformers']}. Full-size architectures "
            "built from the published configs with random weights (speed and memory depend on shapes, not weights). "
            "How to run real models on a GPU: [gpu_runbook.md](gpu_runbook.md).\n\n"
            + md_table(["figure", *[f"`{n}`" for n in names]], rows))


def benchmarks_page() -> str:
    return (HEADER + "# Benchmarks\n\n"
            "Every table on this page is generated from the committed result files. What limits each figure, and "
            "the measurements behind the choices, is in [speed.md](speed.md); the hooks engine comparison is in "
            "[hooks.md](hooks.md).\n\n" + "\n".join(s for s in [_bench_trace(), dit_bench_section(REF, md_table, met), _bench_edit(),
                                                         _sampler(), _gpu()] if s))

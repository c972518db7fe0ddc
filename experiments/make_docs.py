"""Generate docs/findings.md and docs/benchmarks.md from the committed files under results/reference/.

Usage::

    python -m experiments.make_docs                  # rewrite docs/findings.md and docs/benchmarks.md
    python -m experiments.make_docs --out /tmp/docs  # write them elsewhere (tests/test_docs.py compares)
    python -m experiments.make_docs --figures        # also redraw docs/figures/ from the committed runs

Every number in the two generated pages is read from results/reference/ here, so the pages
cannot drift from the files: change a result, rerun this command, commit both. Hand-written
prose in this module stays free of numbers; the interpretation of the numbers lives in
docs/tracing.md, docs/editing.md, docs/speed.md and docs/gpu_runbook.md. The localisation,
screen and UNet-beside-DiT sections are in experiments.make_docs_evidence, the DiT sections in
experiments.make_docs_dit, the benchmarks page in experiments.make_docs_bench, and the shared cell
and table formats in experiments.docs_tables.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.docs_tables import DOCS, HEADER, REF, fmt, load, md_table, wilson_cell
from experiments.make_docs_bench import benchmarks_page
from experiments.make_docs_dit import (
    dit_denoise_section,
    dit_edit_sections,
    dit_latent_section,
    dit_sampler_section,
    dit_swap_section,
    dit_training_section,
    informative_section,
)
from experiments.make_docs_evidence import MISS_HEAD, MISS_NOTE, evidence_sections, miss_rows

# ---------------------------------------------------------------------------------------------- findings


EDIT_LABELS = {"unedited": "unedited", "oracle": "oracle (target in the prompt)", "quickfix": "Diff-QuickFix",
               "quickfix+preserve": "**Diff-QuickFix + preserve**", "crossattn": "cross-attention (+ preserve)",
               "refact": "ReFACT (layer 0)"}
RATE_COLS = ["gt_efficacy", "gt_generalization", "gt_specificity", "gt_others", "efficacy", "generalization", "specificity"]
RATE_HEAD = ["efficacy (GT)", "generalization (GT)", "specificity (GT)", "others (GT)", "efficacy (CLIP)",
             "generalization (CLIP)", "specificity (CLIP)"]
GT_COLS, GT_HEAD = RATE_COLS[:4], ["efficacy", "generalization", "specificity", "others"]
CLIP_COLS, CLIP_HEAD = RATE_COLS[4:], ["efficacy", "generalization", "specificity"]
CI_NOTE = ("Each cell is the rate, its 95 % interval in brackets and its n (images) in parentheses; the interval is "
           "Wilson's over images, except for \"others\", a bootstrap over cases.")


def _rates(s: dict, cols=RATE_COLS) -> list[str]:
    return [fmt(s.get(c)) for c in cols]


def _interval(ci, digits: int = 3) -> str:
    return "" if not ci else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _cell(s: dict, rate: str, ci_key: str = "_ci", digits: int = 3) -> str:
    """'0.986 [0.960, 0.995] (216)' from a summary/2 block: <rate>, <rate><ci_key>, <rate>_n."""
    v = s.get(rate)
    if v is None:
        return "—"
    n = s.get(f"{rate}_n")
    return f"{v:.{digits}f}" + _interval(s.get(f"{rate}{ci_key}"), digits) + ("" if n is None else f" ({n})")


def _cases_cell(s: dict, rate: str) -> str:
    ci = s.get(f"{rate}_ci_cases")
    return "—" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _diff_cell(d: dict | None) -> str:
    return "—" if not d else f"{d['difference']:+.3f}" + _interval(d.get("ci_cases"))


def _per_attribute(per: dict) -> str:
    rows = [[key.split("/")[0], key.split("/")[1], fmt(v.get("edit"), 2), fmt(v.get("positive"), 2), fmt(v.get("negative"), 2)]
            for key, v in sorted(per.items())]
    return md_table(["method", "attribute", "edit prompts", "positives (generalization)", "negatives (specificity)"], rows)


def _per_attribute_ci(per: dict, order: list[str]) -> str:
    """Per method × attribute: value [Wilson interval] (n images) for edit prompts, positives and negatives."""
    def cell(x):
        return "—" if not x else f"{x['value']:.2f}" + _interval(x.get("ci"), 2) + f" ({x['n']})"

    keys = sorted(per, key=lambda k: (order.index(k.split("/")[0]) if k.split("/")[0] in order else len(order), k))
    rows = [[EDIT_LABELS.get(k.split("/")[0], k.split("/")[0]), k.split("/")[1],
             cell(per[k].get("edit")), cell(per[k].get("positive")), cell(per[k].get("negative"))] for k in keys]
    return md_table(["method", "attribute", "edit prompts", "positives (generalization)", "negatives (specificity)"], rows)


def _variants(v: dict) -> str:
    rows = [[k, s["what"], *[_cell(s, c) for c in GT_COLS]] for k, s in v.items()]
    diff = [[k, *[_diff_cell(s.get("minus_shipped", {}).get(c)) for c in GT_COLS[:3]]]
            for k, s in v.items() if s.get("minus_shipped")]
    return (md_table(["variant", "what", *GT_HEAD], rows)
            + "\nPaired differences against `shipped` (same cases and seeds; 95 % bootstrap interval over cases):\n\n"
            + md_table(["variant", "Δ efficacy", "Δ generalization", "Δ specificity"], diff))


def _edits() -> str:
    v5 = load("edit_eval_v5/summary.json")
    fix, dev, plain = load("refact_fix/summary.json"), load("edit_dev_ablation_v2/summary.json"), load("edit_plain_v1/summary.json")
    order = ["unedited", "oracle", "quickfix", "quickfix+preserve", "crossattn", "refact"]
    methods = [m for m in order if m in v5["methods"]] + [m for m in v5["methods"] if m not in order]
    ms = v5["methods"]
    out = ["## Edits on the toy world\n",
           f"Source: `results/reference/edit_eval_v5/` (`{v5['run']}`; per-rate tables also in its `rates.md`). "
           f"{v5['n_cases']} cases, {v5['seeds']} seed(s); each edit applied to the clean model and undone before the "
           "next. GT is the toy world's exact readers; \"others\" is the share of the other attributes still read as "
           f"the prompt says. {CI_NOTE}\n",
           "By ground truth:\n",
           md_table(["method", *GT_HEAD, "n images"], [[EDIT_LABELS.get(m, m), *[_cell(ms[m], c) for c in GT_COLS],
                                                      ms[m]["n_images"]] for m in methods]),
           "By CLIP (the toy scorer, as ReFACT measures):\n",
           md_table(["method", *CLIP_HEAD], [[EDIT_LABELS.get(m, m), *[_cell(ms[m], c) for c in CLIP_COLS]] for m in methods]),
           "The same ground-truth rates with 95 % bootstrap intervals over cases (the cases, not the images, "
           "resampled):\n",
           md_table(["method", *GT_HEAD], [[EDIT_LABELS.get(m, m), *[_cases_cell(ms[m], c) for c in GT_COLS]] for m in methods]),
           "Ground-truth success by attribute and prompt split (`edit_eval_v5`; Wilson interval, n images):\n",
           _per_attribute_ci(v5["per_attribute_gt_ci"], order),
           "### Plain cases: filled in from the world\n\n"
           f"Source: `results/reference/edit_plain_v1/` (`{plain['run']}`; cases `{plain['cases']}`, seeds "
           f"{', '.join(map(str, plain['seeds']))}, {plain['metric']}). The same re-mappings without hand-written "
           "templates, target prompts or preserve captions, completed from the world's grammar (`world`), against the "
           f"hand-written cases (`shipped`). {CI_NOTE}\n",
           _variants(plain["variants"]),
           "### Design choices, compared on the dev set only\n\n"
           f"Source: `results/reference/edit_dev_ablation_v2/` (`{dev['run']}`; cases `{dev['cases']}`, seeds "
           f"{', '.join(map(str, dev['seeds']))}, {dev['metric']}). {CI_NOTE}\n",
           _variants(dev["variants"]),
           "### ReFACT configurations and the padding leak\n\nSource: `results/reference/refact_fix/` "
           "(`python -m experiments.refact_leak`). `tokens_L*`: C accumulated over BOS..EOS only; `all_L*`: over all "
           "positions (shipped); the number is the layer. \"blank moved\" is ‖Δ‖/‖out‖ of the blank CFG prompt's "
           "outputs, \"padding moved\" the same on the negatives' padding; `final_p` / `edited_p` are the target's "
           "probability at the end of the v* search and recomputed from the edited weights. This file carries no "
           "intervals; *n* is per row.\n",
           md_table(["config", "efficacy (GT)", "generalization (GT)", "specificity (GT)", "others (GT)",
                   "blank moved", "padding moved", "final_p", "edited_p", "n cases", "n images"],
                  [[k, *_rates(s, RATE_COLS[:4]), fmt(s.get("blank_rel")), fmt(s.get("neg_pad_rel")), fmt(s.get("final_p")),
                    fmt(s.get("edited_p")), s.get("n_cases", "—"), s.get("n_images", "—")]
                   for k, s in sorted(fix["methods"].items(), key=lambda kv: (kv[0] != "unedited", kv[0]))]),
           "By attribute and split (GT):\n", _per_attribute(fix["per_attribute_gt"])]
    return "\n".join(out)


def _diagnosis() -> str:
    d = load("diagnosis_object/diagnosis.json")
    conds = ["none", "subject", "after_subject", "all"]
    rows, tot = [], {c: [0, 0] for c in conds}
    for c in d["cases"]:
        cells = []
        for k in conds:
            x = c["conditions"][k]
            tot[k][0] += x["hits"]
            tot[k][1] += x["n"]
            cells.append(f"{x['hits']}/{x['n']}")
        rows.append([f"{c['source']} → {c['target']}", c["site"].split(":", 1)[1], *cells, c["recommended"] or "—"])
    rows.append(["**all cases**", "", *[f"**{h}/{n}**" for h, n in tot.values()], ""])
    return ("## Diagnosis before editing: object re-mappings\n\n"
            "Source: `results/reference/diagnosis_object/` (`diffloc diagnose --cases <object cases> --method quickfix`). "
            "Images (hits / n, judged by ground truth) in which the target appears when the target prompt's own "
            "text-encoder states after the edit layer are patched into the source prompt: nowhere, at the subject "
            "token(s), at every position after the subject, everywhere (the model's own ceiling).\n\n"
            + md_table(["case", "edit site", "none", "subject", "after subject", "all positions", "recommended"], rows))


def _many_edits() -> str:
    s = load("many_edits_v2/summary.json")
    runs = sorted(s["runs"].values(), key=lambda r: (r["n_edits"], r["mode"] != "batched", r["mode"]))
    rows = [[name, "baseline", *[_cell(b, c) for c in GT_COLS]] for name, b in sorted(s["baselines"].items())]
    rows += [[r["n_edits"], r["mode"], *[_cell(r, c) for c in GT_COLS]] for r in runs]
    per = sorted({a for r in runs for a in r.get("per_attribute_efficacy_ci", {})})

    def pcell(x):
        return "—" if not x else f"{x['value']:.2f}" + _interval(x.get("ci"), 2) + f" ({x['n']})"

    per_rows = [[r["n_edits"], r["mode"], *[pcell(r.get("per_attribute_efficacy_ci", {}).get(a)) for a in per]] for r in runs]
    return ("## Many edits at once\n\n"
            f"Source: `results/reference/many_edits_v2/` (`python -m experiments.many_edits`; tables also in its "
            f"`rates.md`). `{s['method']}`, N edits in the model at once; each of the evaluated cases "
            f"({len(s['evaluated_cases'])} of `{s['cases']}`) on a model carrying it with N − 1 others, {s['seeds']} "
            "seed(s), ground truth. Modes: `batched` is one stacked solve with composed targets (shipped), "
            "`batched-independent` the same without composing targets, `sequential` one edit after another. "
            f"{CI_NOTE}\n\n"
            + md_table(["N", "mode", *GT_HEAD], rows)
            + "\nEfficacy by attribute (Wilson interval, n images):\n\n" + md_table(["N", "mode", *per], per_rows)
            + "\n![N edits at once](../results/reference/many_edits_v2/many_edits.png)\n")


def _toy_fidelity() -> str:
    dit, unet = load("toy_dit_eval/toy_eval.json"), load("toy_eval_v3/toy_eval.json")
    attrs = [a for a in dit["fidelity"] if a != "all"] + ["all"]

    def sampler(e):
        s = e["sampler"]
        return f"{s['scheduler']}, {s['num_inference_steps']} steps, guidance {s['guidance_scale']}, seed {s['seed']}"

    rows = [[a, wilson_cell(dit["fidelity"].get(a), dit["n_samples"]), wilson_cell(unet["fidelity"].get(a), unet["n_samples"]),
             wilson_cell(dit["clip_agreement"]["generated"].get(a), dit["clip_agreement"].get("n_generated_used"))]
            for a in attrs]
    by_value = [[a, v, fmt(x, 2), fmt(unet["fidelity_by_value"].get(a, {}).get(v), 2)]
                for a, vals in dit["fidelity_by_value"].items() for v, x in vals.items()]
    return ("## Prompt fidelity: toy-dit beside the UNet toy\n\n"
            "Source: `results/reference/toy_dit_eval/toy_eval.json` (toy-dit, the toy world drawn by an SD3-style "
            f"MM-DiT, `{dit['model_dir']}`; {sampler(dit)}) and `results/reference/toy_eval_v3/toy_eval.json` (the UNet "
            f"toy, `{unet['model_dir']}`; {sampler(unet)}). Prompt fidelity is the share of generated samples the exact "
            "readers read as the prompt says (\"all\": every attribute at once); n is the samples "
            f"(`n_samples`), and the 95 % interval is Wilson's on round(fidelity × n). Scorer agreement is the CLIP "
            "scorer agreeing with the readers on toy-dit's generated samples that the readers find all-correct "
            "(n = `n_generated_used`). Toy-dit samples: "
            "[samples.png](../results/reference/toy_dit_eval/samples.png).\n\n"
            + md_table(["attribute", "toy-dit fidelity", "UNet toy fidelity", "toy-dit scorer agreement, generated"], rows)
            + f"\nBy value (point estimates; each value has at least {dit['n_per_value_min']} toy-dit samples and "
            f"{unet['n_per_value_min']} UNet-toy samples, the exact count per value is not in the files):\n\n"
            + md_table(["attribute", "value", "toy-dit", "UNet toy"], by_value))


def _dit_findings() -> str:
    """Toy-dit localisation from results/reference/dit_findings/summary.json; empty when the file is not there."""
    path = REF / "dit_findings" / "summary.json"
    if not path.exists():
        return ""
    s = json.loads(path.read_text())
    if not s:
        return ""
    from experiments.dit_findings import THRESHOLD, TOP_K  # noqa: F401  (THRESHOLD: the prose below)

    over = [[a, r.get("n_pairs", "—"), r.get("n_informative", "—"), r.get("n_gt_flips", "—"), r.get("n_sites", "—"),
             len(r.get("causal", [])), fmt(r.get("top3_share"))] for a, r in s.items()]
    top = [[a, i + 1, f"`{t['site']}`", t.get("kind", ""), f"{t['effect']:.3f}" + _interval(t.get("interval"))]
           for a, r in s.items() for i, t in enumerate(r.get("top_sites", []))]

    def pr(x):
        return "—" if not x else f"{fmt(x.get('precision'), 2)} / {fmt(x.get('recall'), 2)}"

    contrib = [[a, ", ".join(map(str, c.get("blocks_by_contribution", []))), ", ".join(map(str, c.get("causal_slice_blocks", []))) or "none",
                fmt(c.get("spearman")), *[pr(c.get(f"top{k}")) for k in TOP_K]]
               for a, r in s.items() if (c := r.get("attn_contrib"))]
    atp = [[a, t["n_pairs"], f"{t.get('n_sites', '—')} ({t.get('structural_zeros', '—')})", t.get("n_causal", "—"), t.get("k", "—"),
            fmt(t.get("spearman")) + _interval(t.get("spearman_ci")), fmt(t.get("pearson")) + _interval(t.get("pearson_ci")),
            fmt(t.get("recall")) + _interval(t.get("recall_ci")),
            f"{fmt(t.get('recall_clip'))}{_interval(t.get('recall_clip_ci'))} ({t.get('n_causal_clip', '—')})", "**yes**" if t.get("recommended") else "no"]
           for a, r in s.items() if (t := r.get("atp")) and "spearman" in t]
    out = ("## Localisation on toy-dit\n\n"
           "Source: `results/reference/dit_findings/summary.json` (`python -m experiments.dit_findings`). Exact causal "
           "tracing of every toy-dit denoiser site, restored at every step, with counterfactual corruption (each prompt "
           "against every other value of its attribute), scored by ground truth over the informative pairs; *pairs* is "
           "all prompt × seed × counterfactual pairs, *GT flips* those whose clean image the readers score above the "
           "corrupted one, *informative* the GT flips plus the pairs whose corruption lowers the CLIP score by at least "
           "`pair_signal`'s minimum drop. Effects carry their 95 % bootstrap interval over pairs (n = the "
           f"informative pairs); a site is causal when its lower bound is at least {THRESHOLD}. \"top-3 share\" is the "
           "share of the total positive effect held by the three strongest sites.\n\n"
           + md_table(["attribute", "pairs", "informative", "GT flips", "sites", "causal sites", "top-3 share"], over)
           + "\nStrongest sites (effect [95 % interval]):\n\n"
           + md_table(["attribute", "rank", "site", "kind", "effect"], top))
    if contrib:
        out += ("\nAttention contribution (Zarei et al., `attn-contrib`) ranks the blocks; the check is whether its top "
                "blocks are those whose text → image attention slice is causal by exact patching. Spearman is the block "
                "ranking against the slices' exact effects; precision / recall of its top-k blocks against the causal "
                "slice blocks:\n\n"
                + md_table(["attribute", "blocks by contribution", "causal slice blocks", "Spearman",
                          *[f"top-{k} precision / recall" for k in TOP_K]], contrib))
    if atp:
        out += ("\nAtP against exact patching, site by site, by the protocol of the UNet's screen validation "
                "(`experiments/screen_stats.py`: informative pairs, structural zeros left out of the correlations, recall of "
                "the exact causal set C in AtP's top max(10, |C|) with ties sharing the places left, 95 % bootstrap "
                "intervals over pairs; recommended when recall ≥ 0.9 with lower bound ≥ 0.7):\n\n"
                + md_table(["attribute", "pairs", "sites (structural zeros)", "\\|C\\|", "k", "Spearman", "Pearson",
                          "recall of C in top k", "recall of C by CLIP (\\|C\\|)", "recommended"], atp))
        miss = [r for a, v in s.items() for r in miss_rows(a, "transformer", "atp", (v.get("atp") or {}).get("misses", []))]
        if miss:
            out += "\nAtP's misses on toy-dit: " + MISS_NOTE + "\n\n" + md_table(MISS_HEAD, miss)
    return out


def _figures() -> str:
    return ("Figures (by ground truth, informative pairs; `python -m experiments.make_docs --figures` redraws them from "
            "`results/reference/evidence_v1/` and `results/reference/dit_findings/`):\n\n"
            "![colour UNet trace with intervals](figures/colour_unet.png)\n"
            "![object: LocoGen windows](figures/object_swap.png)\n"
            "![colour, suffix mode](figures/colour_text_suffix.png)\n"
            "![object, suffix mode](figures/object_text_suffix.png)\n"
            "![toy-dit object, blocks × streams](figures/dit_object_blocks.png)\n"
            "![toy-dit colour, blocks × streams](figures/dit_colour_blocks.png)\n\n"
            "More UNet charts: [object](figures/object_unet.png), [count](figures/count_unet.png), "
            "[style](figures/style_unet.png).\n")


def findings_page() -> str:
    return (HEADER + "# Findings on the toy world\n\n"
            "Every table on this page is generated from the committed result files. What the numbers mean, and how "
            "the protocols work, is in [tracing.md](tracing.md) (localisation and screens) and "
            "[editing.md](editing.md) (edits); the toy world itself is in [toy_world.md](toy_world.md).\n\n"
            + "\n".join(s for s in [evidence_sections(REF, md_table), _figures(), informative_section(REF, md_table), _toy_fidelity(), dit_training_section(REF, md_table),
                                     dit_sampler_section(REF, md_table), dit_latent_section(REF, md_table), dit_denoise_section(REF, md_table), _dit_findings(), dit_swap_section(REF, md_table), _edits(), _diagnosis(),
                                     _many_edits(), dit_edit_sections(REF, md_table, _cell)] if s))


# --------------------------------------------------------------------------------------------- benchmarks


# ------------------------------------------------------------------------------------------------ figures

# docs figure -> (committed run, figure that diffloc.plots.plot_run draws there)
FIGURES = {
    "colour_unet.png": ("evidence_v1/colour_unet", "unet_effects.png"),
    "object_unet.png": ("evidence_v1/object_unet", "unet_effects.png"),
    "count_unet.png": ("evidence_v1/count_unet", "unet_effects.png"),
    "style_unet.png": ("evidence_v1/style_unet", "unet_effects.png"),
    "object_swap.png": ("evidence_v1/object_swap", "unet_effects.png"),
    "colour_text_suffix.png": ("evidence_v1/colour_text_suffix", "text_encoder_heatmap.png"),
    "object_text_suffix.png": ("evidence_v1/object_text_suffix", "text_encoder_heatmap.png"),
    "dit_object_blocks.png": ("dit_findings/object_exact", "transformer_blocks.png"),
    "dit_colour_blocks.png": ("dit_findings/colour_exact", "transformer_blocks.png"),
}


def draw_figures(dest: Path) -> list[Path]:
    """Redraw the trace figures of docs/figures/ from the committed runs (a copy of each run, so results/ is untouched)."""
    import shutil
    import tempfile

    from diffloc.plots import plot_run

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (run, fig) in FIGURES.items():
            copy = Path(tmp) / run.replace("/", "_")
            if not copy.exists():
                copy.mkdir()
                for f in ("trace.parquet", "meta.json"):
                    shutil.copy(REF / run / f, copy / f)
                plot_run(copy, metric="gt")  # the toy's ground truth, as the findings tables
            shutil.copy(copy / "figures" / fig, dest / name)
            written.append(dest / name)
    return written


PAGES = {"findings.md": findings_page, "benchmarks.md": benchmarks_page}


def write_pages(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, page in PAGES.items():
        (out / name).write_text(page(), encoding="utf-8")
        paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DOCS), help="folder for findings.md and benchmarks.md (default: docs/)")
    p.add_argument("--figures", action="store_true", help="also redraw docs/figures/ from the committed runs")
    args = p.parse_args(argv)
    for path in write_pages(Path(args.out)):
        print(path)
    if args.figures:
        dest = Path(args.out) / "figures"
        dest.mkdir(exist_ok=True)
        for path in draw_figures(dest):
            print(path)


if __name__ == "__main__":
    main()

"""docs/findings.md's sections on DiT edits, null-space preservation and interference (used by experiments.make_docs).

Usage::

    from experiments.make_docs_dit_edits import dit_edit_sections
    text = dit_edit_sections(REF, table, cell)   # "" when none of the result folders exist

Reads ``edit_eval_dit_v*`` (``diffloc evaluate --model toy-dit``), ``many_edits_*`` (``python -m
experiments.many_edits``) and ``interference_*`` (``python -m experiments.interference``) under
``results/reference/``; every number printed here is read from those files.
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
            f"`+nullspace`: kept exactly, up to the rank threshold `nullspace_rtol` given in the run. {NOTE}\n\n"
            + table(["method", *HEAD, "n images"], rows))


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
                rows.append([s.get("model", "toy"), label, r["n_edits"], *[cell(r, c) for c in GT], f"`{name}`"])
    return ("## Many edits: soft against null-space preservation, on both worlds\n\n"
            "Each evaluated case on a model carrying it with N − 1 other edits of the committed set (one stacked "
            "solve, `batched`), all 24 cases evaluated, 1 seed, ground truth. `+preserve` keeps the preserve "
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
        rows.append([s["model"], s["method"], len(s["rows"]) - 1, len(s["columns"]), share(s["specificity_alone"]),
                     share(s["specificity_together"]), worst])
        figs.append(f"![interference, {s['method']} on {s['model']}](../results/reference/{name}/interference.png)")
    return ("## The interference matrix\n\n"
            "Rows: each edit of the largest conflict-free set, applied alone to the clean model, and last all of them "
            "together; columns: each preserved concept (an attribute value that the cases' negative prompts hold "
            "fixed, up to 3 prompts each, 1 seed); cells: ground-truth specificity. A cell whose prompts all name an "
            "edited word is not a preserved concept on that model and is left out ('ed.'). Beside it, each edit's own "
            "efficacy alone and among all. Sources: "
            + ", ".join(f"`results/reference/{n}/`" for n, _ in found) + " (`python -m experiments.interference`).\n\n"
            + table(["model", "method", "edits", "concepts", "specificity, each edit alone", "specificity, all together",
                     "worst cell (alone)"], rows)
            + "\n" + "\n".join(figs) + "\n")


def dit_edit_sections(ref: Path, table: Callable, cell: Callable) -> str:
    """The three sections, each present when its result files are."""
    return "\n".join(s for s in (_dit_eval(ref, table, cell), _many(ref, table, cell), _interference(ref, table)) if s)

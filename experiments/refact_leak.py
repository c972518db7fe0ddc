"""ReFACT on the committed toy edit set: the padding leak before/after, and the faithful method per layer.

Usage::

    OMP_NUM_THREADS=1 python -m experiments.refact_leak                       # resumes; results/reference/refact_fix/
    OMP_NUM_THREADS=1 python -m experiments.refact_leak --configs unedited,tokens_L0,all_L0 --every 2   # 12 cases

Every configuration is the faithful ReFACT (editing/refact.py: ReFACT's contrastive −L2 loss on
the pooled feature, its weight decay, k* / k̄ update, clamp, lr 0.05, ≤ 100 steps, no contrastive
captions, the cases' templates and grammatical targets), differing only in the covariance's
positions (``tokens``: BOS..EOS, as before the fix; ``all``: the 77 positions the UNet reads)
and the layer. Each case is a single edit of the clean model, undone before the next, scored
by ground truth (and the toy CLIP scorer) on its edit prompt, 5 positives and 5 negatives over
the seeds, as ``diffloc evaluate`` does; ``unedited`` is the baseline on the same images.

Leak figures, per edit, on the text encoder's final output (what the UNet reads): ``blank_rel``
the change of the blank CFG prompt's 77 outputs relative to their norm; ``blank_per_subject``
its mean per-position change over the edit prompt's subject-token change; ``neg_pad_rel`` the
mean relative change at the padding positions of the 5 negative prompts. Each (configuration,
case) writes ``rows/<config>__<case>.parquet`` and ``.json``: a rerun skips finished units;
``summary.json`` and ``summary.md`` are rebuilt from whatever exists.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import pandas as pd
import torch

from diffloc.editing.cases import load_cases
from diffloc.editing.corpus import read_corpus
from diffloc.editing.editors import edit_case
from diffloc.editing.records import undo_edit
from diffloc.evaluate import evaluate_methods, summarise
from diffloc.tracing.io import atomic_write_bytes, read_table, write_json_format, write_table
from diffloc.tracing.models import load_model
from diffloc.tracing.prompts import MarkedPrompt
from diffloc.tracing.scoring import load_scorer
from diffloc.tracing.worlds import world_of

CONFIGS = {"tokens_L0": ("tokens", 0), "all_L0": ("all", 0), "all_L1": ("all", 1), "all_L2": ("all", 2)}
CONFIGS_ORDER = ("unedited", *CONFIGS)
LEAK = ("blank_rel", "blank_per_subject", "neg_pad_rel")


@torch.no_grad()
def _encode(model, texts: list[str]) -> torch.Tensor:
    return model.text_encoder(model.tokenize(texts).to(model.device)).last_hidden_state  # [B, 77, D]


def _texts(case: dict) -> list[str]:
    return ["", case["edit"]["prompt"]] + [p["prompt"] for p in case["negatives"]]


def leak(model, case: dict, before: torch.Tensor, after: torch.Tensor) -> dict:
    """The leak figures of one edit from the encoder outputs of ``_texts(case)`` before and after."""
    d = (after - before).norm(dim=-1)  # [B, 77] per-position change
    prompt = case["edit"]["prompt"]
    m = re.search(rf"(?<!\w){re.escape(case['source'])}(?!\w)", prompt)
    j = MarkedPrompt(prompt, m.start(), m.end()).positions(model.tokenizer)[-1]
    lengths = model.tokenizer(_texts(case)[2:], truncation=True, max_length=77, return_length=True)["length"]
    pad = torch.stack([torch.arange(77) >= n for n in lengths])  # [5, 77]
    rel = d[2:] / before[2:].norm(dim=-1)
    return {"blank_rel": float((after[0] - before[0]).norm() / before[0].norm()),
            "blank_per_subject": float(d[0].mean() / d[1, j]), "subject_change": float(d[1, j]),
            "neg_pad_rel": float(rel[pad].mean())}


def run_unit(model, case, name, seeds, scorer, truth, corpus) -> tuple[pd.DataFrame, dict]:
    """Rows and edit info of one (configuration, case)."""
    if name == "unedited":
        return evaluate_methods(model, [case], methods=(), seeds=seeds, scorer=scorer, truth=truth, baselines=("unedited",)), {}
    positions, layer = CONFIGS[name]
    options = {"refact": {"corpus": corpus, "layer": layer, "cov_positions": positions}}
    before = _encode(model, _texts(case))
    t0 = time.perf_counter()
    records = edit_case("refact", model, case, options)
    seconds = time.perf_counter() - t0
    info = {k: records[0].info[k] for k in ("final_p", "edited_p", "opt_steps", "delta_norm_ratio")}
    info.update(leak(model, case, before, _encode(model, _texts(case))), edit_seconds=round(seconds, 3))
    for rec in reversed(records):
        undo_edit(model, rec)
    rows = evaluate_methods(model, [case], methods=("refact",), seeds=seeds, scorer=scorer, truth=truth, options=options, baselines=())
    return rows.assign(method=name), info


def _rates(table: pd.DataFrame, rows: Path) -> dict:
    out = {}
    for name, s in summarise(table).items():
        ids = set(table[table.method == name].case)
        infos = [json.loads(p.read_text()) for p in sorted(rows.glob(f"{name}__*.json")) if p.stem.split("__")[1] in ids]
        s["n_cases"] = len(ids)
        for k in (*LEAK, "subject_change", "final_p", "edited_p", "opt_steps"):
            if infos and k in infos[0]:
                s[k] = round(sum(i[k] for i in infos) / len(infos), 4)
        out[name] = s
    return out


def summary(out: Path, names: list[str]) -> dict:
    """summary.json / summary.md: every configuration on its cases, and all of them on the cases they share."""
    rows = out / "rows"
    tables = [read_table(p) for p in sorted(rows.glob("*.parquet"))]
    if not tables:
        return {}
    table = pd.concat(tables, ignore_index=True)
    common = set.intersection(*(set(g.case) for _, g in table.groupby("method")))
    result = {"methods": _rates(table, rows), "common_cases": sorted(common),
              "on_common_cases": _rates(table[table.case.isin(common)], rows)}
    piv = table.pivot_table(index=["method", "attribute"], columns="split", values="gt_success", aggfunc="mean").round(3)
    result["per_attribute_gt"] = {f"{m}/{a}": row for (m, a), row in piv.to_dict("index").items()}
    write_json_format("summary", result, out / "summary.json")
    atomic_write_bytes(out / "summary.md", markdown(result, names).encode())
    return result


def markdown(result: dict, names: list[str]) -> str:
    cols = ["gt_efficacy", "gt_generalization", "gt_specificity", "gt_others", "efficacy", "generalization", "specificity",
            *LEAK, "final_p", "edited_p", "n_cases"]
    lines = []
    for title, block in (("each configuration on its cases", "methods"),
                         (f"on the {len(result.get('common_cases', []))} cases every configuration ran", "on_common_cases")):
        lines += [f"\n{title}\n", "| config | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name in [n for n in names if n in result[block]]:
            s = result[block][name]
            lines.append(f"| {name} | " + " | ".join(str(s.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/reference/refact_fix"))
    ap.add_argument("--cases", default="experiments/cases/toy_edits.jsonl")
    ap.add_argument("--configs", default="unedited," + ",".join(CONFIGS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="evaluate every k-th case in file order (subsets nest)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = args.configs.split(",")
    cases = load_cases(args.cases)[:: args.every]
    model, scorer = load_model("toy"), load_scorer("toy")
    truth, (corpus, _) = world_of(model), read_corpus(None, model)
    (args.out / "rows").mkdir(parents=True, exist_ok=True)
    for case in cases:  # case-major: an interrupted run leaves every configuration on the same cases
        for name in names:
            path = args.out / "rows" / f"{name}__{case['id']}.parquet"
            if path.exists():
                continue
            t0 = time.perf_counter()
            rows, info = run_unit(model, case, name, range(args.seeds), scorer, truth, corpus)
            write_table(rows, path)
            atomic_write_bytes(path.with_suffix(".json"), json.dumps(info).encode())
            print(f"{name} {case['id']}: {time.perf_counter() - t0:.1f}s {info}", flush=True)
        summary(args.out, list(CONFIGS_ORDER))
    print(markdown(summary(args.out, list(CONFIGS_ORDER)), list(CONFIGS_ORDER)))


if __name__ == "__main__":
    main()

"""docs/findings.md sections from the evidence runs: localisation under replace beside Gaussian, screens, UNet beside DiT.

Usage::

    from experiments.make_docs_evidence import evidence_sections
    text = evidence_sections(REF, table)      # REF: results/reference; table(head, rows) -> markdown

Reads ``evidence_v1/summary.json`` (:mod:`experiments.evidence_summary`) and
``dit_findings/summary.json`` (:mod:`experiments.dit_findings`). Numbers only come from those
files; what they mean is in docs/tracing.md.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

PROTOCOL_NAMES = {"unet": "UNet, exact", "text": "text encoder, token mode", "text_suffix": "text encoder, suffix mode",
                  "swap": "LocoGen swap windows"}
SCREEN_NAMES = {"atp": "atp", "ig": "ig (8 points)", "ig32": "ig (32 points)"}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _f(x, d: int = 2) -> str:
    return "—" if x is None or x != x else f"{x:.{d}f}"


def _ci(v, d: int = 2) -> str:
    return f" [{v[0]:.{d}f}, {v[1]:.{d}f}]" if v else ""


def _short(site: str) -> str:
    """UNet attention sites without their one transformer block (`up_blocks.1.att1.attn2`); DiT blocks kept."""
    site = re.sub(r"(attentions\.\d+)\.transformer_blocks\.0\.", r"\1.", site)
    return site.replace("attentions.", "att").replace("encoder.layers.", "L").replace("self_attn.out_proj", "attn")


def _top(s: dict, n: int = 3) -> str:
    if s.get("states"):  # text encoder: the named layer-0 states (its strongest are complete cuts tied at 1)
        return "; ".join(f"{k} {v['effect']:.2f}{_ci(v['ci'])}" for k, v in s["states"].items())
    return "; ".join(f"{_short(t['site'])} {t['effect']:.2f}{_ci(t['ci'])}" for t in s.get("top", [])[:n]) or "—"


def _split(s: dict) -> str:
    h = s.get("split_half") or {}
    if h.get("mean_abs_diff") is None:
        return "—"
    j = "—" if h.get("causal_jaccard") is None else f"{h['causal_jaccard']:.2f}"
    return f"J {j}, \\|Δ\\| {h['mean_abs_diff']:.2f} of {h['spread']:.2f} ({h['halves'][0]}+{h['halves'][1]})"


def _causal(s: dict) -> str:
    if not s.get("enough"):
        return f"not enough signal ({s['n_informative']} < 8)"
    return str(len(s["causal"]))


def localisation(ev: dict, table: Callable) -> str:
    rows = []
    for attr, protos in ev["findings"].items():
        for proto, by in protos.items():
            for corr in ("replace", "gaussian"):
                if (s := by.get(corr)) is None:
                    continue
                label = {"replace": "replace, fresh prompts", "gaussian": "gaussian 3σ, shipped prompts"}[corr]
                if proto == "swap":
                    label = {"replace": "altered value, fresh prompts", "gaussian": "altered value, shipped prompts"}[corr]
                rows.append([attr, PROTOCOL_NAMES[proto], label, s["n_pairs"], f"{s['n_informative']} ({s['n_gt_flips']})",
                             _causal(s), _top(s), _f(s.get("top3_share")), _split(s)])
    return ("## Localisation: counterfactual replacement beside Gaussian noise\n\n"
            "Source: `results/reference/evidence_v1/` (`python -m experiments.evidence`: `--corrupt replace`, each "
            "prompt against every other value of its attribute, on prompts drawn fresh for this run, seed 0) and, for "
            "the Gaussian rows, `results/reference/findings_v4/` (3σ noise on the shipped prompts, the earlier runs). "
            "Every effect is by ground truth, the ratio of means over the **informative** pairs (GT flips, or the CLIP "
            "score drops ≥ 5 points) with its 95 % bootstrap interval over those pairs; *informative (GT flips)* gives "
            "both counts. A site is causal when its lower bound is ≥ 0.5, and only with ≥ 8 informative pairs. "
            "Top-3 share: the three strongest sites' share of the total positive effect. Split-half: the informative "
            "prompt × seed pairs split alternately; J is the causal sets' Jaccard, |Δ| the mean absolute effect "
            "difference beside the sites' spread, (a+b) the pairs per half. Strongest sites tied at 1.00 are listed in "
            "the site table's order; for the text encoder the column names layer 0's states instead (the paper's "
            "state, attention at the last subject token, and the residual at the subject, the token after it and EOS; "
            "in suffix mode each restores from that token to the end), since its strongest rows are complete cuts. "
            "LocoGen rows pair each prompt with an altered value in both sources; a pair informs when the two "
            "references differ by ground truth.\n\n"
            + table(["attribute", "protocol", "corruption", "pairs", "informative (GT flips)", "causal sites",
                     "strongest sites, effect [95 % CI]", "top-3 share", "split-half"], rows))


MISS_HEAD = ["attribute", "component", "screen", "site", "exact (CLIP)", "screen (CLIP)", "reason", "cancelled", "per-step contributions"]
MISS_NOTE = ("*cancelled* is 1 − |Σ contributions| / Σ |contributions| (over denoising steps for a denoiser site; over tokens and "
             "pairs for a text site); *not causal by CLIP* when exact patching's own CLIP effect is below 0.5 (the screens "
             "differentiate CLIP); else *cancellation* when *cancelled* exceeds ½; else *outranked* when the screen estimates at least half "
             "the site's exact effect (other sites' estimates overshoot above it); else *first-order* (the linear estimate "
             "falls short without cancelling). Per-step: the mean contribution at each of the 20 steps, on the effect scale.")


def miss_rows(attr: str, comp: str, screen: str, misses: list[dict]) -> list[list]:
    """Table rows of a screen's misses (:func:`experiments.screen_stats.compare`)."""
    out = []
    for m in misses:
        steps = "—" if not m.get("per_step") else ", ".join(f"{x:.2f}" for x in m["per_step"])
        site = f"`{_short(m['site'])}`" + (f" @{m['token_role']}" if m.get("token_role") else "")
        out.append([attr, comp, screen, site, _f(m["exact_clip"]), _f(m["screen_clip"]), m["reason"], _f(m.get("cancelled_share")), steps])
    return out


def screens(ev: dict, table: Callable) -> str:
    rows, misses, recommended = [], [], []
    for attr, comps in ev["screens"].items():
        for comp, by in comps.items():
            for name, s in by.items():
                if "spearman" not in s:
                    continue
                rows.append([attr, comp, SCREEN_NAMES.get(name, name), s["n_pairs"], f"{s['n_sites']} ({s['structural_zeros']})",
                             s["n_causal"], s["k"], _f(s["spearman"]) + _ci(s["spearman_ci"]), _f(s["pearson"]) + _ci(s["pearson_ci"]),
                             _f(s["recall"]) + _ci(s["recall_ci"]), f"{_f(s.get('recall_clip'))}{_ci(s.get('recall_clip_ci'))} ({s.get('n_causal_clip', '—')})",
                             "**yes**" if s["recommended"] else "no"])
                if s["recommended"]:
                    recommended.append(f"{SCREEN_NAMES.get(name, name)} for {attr} ({comp})")
                misses += miss_rows(attr, comp, SCREEN_NAMES.get(name, name), s["misses"])
    out = ("## Screens against exact patching\n\n"
           "Source: `results/reference/evidence_v1/summary.json` (`python -m experiments.evidence`; statistics in "
           "`experiments/screen_stats.py`). Each screen ran on the same fresh prompts, seeds and counterfactuals as the "
           "exact UNet and token-mode text-encoder sweeps, and is compared with them on the informative pairs (n). "
           "*sites (structural zeros)*: the sites compared, and those that are no-ops by construction (exact patching "
           "skipped them in every pair, e.g. tokens the causal encoder reads before the word, or the screen's estimate is "
           "exactly 0), which are left out of both correlations. Spearman and Pearson compare the CLIP effects; *recall* "
           "is the share of the exact causal set C (by ground truth, lower bound ≥ 0.5) among the screen's top "
           "k = max(10, |C|), ties at the cut sharing the places left (the expected recall over a random order of the "
           "ties); the last recall column uses the causal set by CLIP instead, the score the screens differentiate. "
           "Intervals: 95 % percentile bootstrap over prompt × seed (a prompt's counterfactuals resampled together), C "
           "fixed. **Recommended**: recall of C (ground truth) ≥ 0.9 and its lower bound ≥ 0.7.\n\n"
           + table(["attribute", "component", "screen", "pairs", "sites (structural zeros)", "\\|C\\|", "k", "Spearman",
                    "Pearson", "recall of C in top k", "recall of C by CLIP (\\|C\\|)", "recommended"], rows))
    out += "\nRecommended by the rule: " + ("; ".join(recommended) if recommended else "none") + ".\n"
    if misses:
        out += "\nMisses: sites of C outside the screen's top k, with the measured reason. " + MISS_NOTE + "\n\n" + table(MISS_HEAD, misses)
    return out


def side_by_side(ev: dict, dit: dict | None, table: Callable) -> str:
    if not dit:
        return ""
    rows = []
    for attr, protos in ev["findings"].items():
        u, d = (protos.get("unet") or {}).get("replace"), dit.get(attr)
        if not u or not d:
            continue
        dtop = "; ".join(f"{_short(t['site'].split(':', 1)[1])} {t['effect']:.2f}{_ci(t['interval'])}" for t in d["top_sites"][:3])
        rows.append([attr, f"{u['n_informative']} / {u['n_pairs']}", _causal(u) + f" of {u['n_sites']}", _top(u), _f(u.get("top3_share")),
                     f"{d['n_informative']} / {d['n_pairs']}", f"{len(d['causal'])} of {d['n_sites']}", dtop, _f(d.get("top3_share"))])
    return ("## UNet beside DiT, per attribute\n\n"
            "The toy UNet (`results/reference/evidence_v1/<attribute>_unet`) and toy-dit (`results/reference/dit_findings/<attribute>_exact`), both exact "
            "patching of every denoiser site at every step under counterfactual replacement, by ground truth over the "
            "informative pairs (informative / pairs). Top-3 share: how concentrated the effect is.\n\n"
            + table(["attribute", "UNet pairs", "UNet causal", "UNet strongest, effect [95 % CI]", "UNet top-3 share",
                     "DiT pairs", "DiT causal", "DiT strongest, effect [95 % CI]", "DiT top-3 share"], rows))


def evidence_sections(ref: Path, table: Callable) -> str:
    ev = _load(ref / "evidence_v1" / "summary.json")
    if not ev:
        return ""
    return "\n".join(s for s in (localisation(ev, table), screens(ev, table),
                                 side_by_side(ev, _load(ref / "dit_findings" / "summary.json"), table)) if s)

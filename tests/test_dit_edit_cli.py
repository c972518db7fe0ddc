"""toy-dit through the CLI: an edit launched from a trace edits the blocks it names, evaluate reports
ground-truth rates with intervals, undo restores every weight bit-exactly."""
from __future__ import annotations

import json
import subprocess
import sys

from diffloc.editing.records import weight_hash
from diffloc.tracing.io import write_json_format
from diffloc.tracing.models import load_model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffloc", *args], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                          **__import__("os").environ})


def _hashes(model) -> dict:
    return {k: weight_hash(v) for k, v in model.denoiser.state_dict().items()}


def test_toy_dit_edit_from_trace_evaluate_and_undo(tmp_path):
    trace = tmp_path / "trace"
    causal = [{"site": "transformer:transformer_blocks.4@text", "component": "transformer", "kind": "out_text", "effect": 1.0}]
    write_json_format("causal_sites", {"metrics": ["clip", "gt"], "clip": {"causal": causal}, "gt": {"causal": causal}}, trace / "causal_sites.json")
    edited, restored = tmp_path / "E", tmp_path / "U"
    r = _cli("edit", "--method", "joint-attn", "--from-trace", str(trace), "--source", "red", "--target", "blue", "--model", "toy-dit",
             "--out", str(edited))
    assert r.returncode == 0, r.stderr
    records = json.loads((edited / "edit.json").read_text())["edits"]
    # @text after block 4 is read by blocks 4 and 5: their text-stream key/value projections, nothing else
    assert sorted(x["site"] for x in records) == sorted(f"transformer:transformer_blocks.{b}.attn.{p}_proj"
                                                        for b in (4, 5) for p in ("add_k", "add_v"))
    clean, after = _hashes(load_model("toy-dit")), _hashes(load_model(str(edited)))
    changed = {k for k in clean if clean[k] != after[k]}
    assert changed == {f"transformer_blocks.{b}.attn.{p}_proj.weight" for b in (4, 5) for p in ("add_k", "add_v")}

    r = _cli("evaluate", "--model", str(edited), "--out", str(tmp_path / "ev"), "--seeds", "1")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())["methods"]["edited"]
    for rate in ("gt_efficacy", "gt_generalization", "gt_specificity"):
        lo, hi = s[rate + "_ci"]
        assert s[rate + "_n"] > 0 and lo <= s[rate] <= hi

    r = _cli("undo", "--model", str(edited), "--out", str(restored))
    assert r.returncode == 0, r.stderr
    assert _hashes(load_model(str(restored))) == clean

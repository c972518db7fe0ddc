"""The pre-edit diagnosis: patch positions, known answers, the toy's measured limit, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from diffloc.editing.diagnose import _positions, diagnose, recommend, residual_site, write_diagnosis
from diffloc.editing.quickfix import prompt_pairs
from diffloc.editing.records import EditError, save_edited
from diffloc.tracing.sampler import SamplerConfig, generate, initial_latents
from diffloc_toy import world

CFG = SamplerConfig(2, 2.0)


def test_patch_positions_of_a_hand_built_pair(pixel_model):
    src, tgt = prompt_pairs("red", "blue", ["one {} circle at the top"])
    pos = _positions(pixel_model, "text_encoder", src, tgt)
    assert pos["subject"] == [([2], [2])]                      # BOS, 'one', 'red'
    assert pos["after_subject"] == [(list(range(3, 77)),) * 2]  # every later token, EOS and padding included
    assert pos["all"] == [(list(range(77)),) * 2] and pos["none"] == [([], [])]
    # a longer target: the after-subject pairs skip the target's extra token, never pair padding with it
    src, tgt = prompt_pairs("one", "two", ["{} red circle"], targets=["[two] red circles at the top"])
    s_pos, t_pos = _positions(pixel_model, "text_encoder", src, tgt)["after_subject"][0]
    assert len(s_pos) == len(t_pos) and s_pos[0] == 2 and max(t_pos) == 76


class ImageWorld:
    """A stub world with a known answer: an image 'shows' a caption's attributes if it is
    (to float tolerance) the image the unpatched model draws for that caption and seed."""

    def __init__(self, model, captions, seeds):
        self.refs = []
        for c in captions:
            lat = torch.cat([initial_latents(model, torch.Generator().manual_seed(s)) for s in seeds])
            for img in generate(model, [c] * len(seeds), cfg=CFG, latents=lat):
                self.refs.append((img, world.parse_caption(c)))

    parse_caption = staticmethod(world.parse_caption)

    def read(self, image):
        dist, attrs = min(((float((image - ref).abs().max()), a) for ref, a in self.refs), key=lambda t: t[0])
        return attrs if dist < 1e-4 else {}


def test_diagnosis_gives_the_known_answer_on_a_stub_world(pixel_model):
    """Patching every position is the target prompt itself (all hits); no patch is the source (none)."""
    templates = ["one {} circle at the top", "two {} squares in the middle"]
    captions = [t.format(c) for t in templates for c in ("red", "blue")]
    truth = ImageWorld(pixel_model, captions, [0, 1])
    d = diagnose(pixel_model, "red", "blue", "text_encoder:encoder.layers.1.mlp.fc2", templates=templates, seeds=[0, 1],
                 truth=truth, cfg=CFG)
    assert d["residual_site"] == "text_encoder:encoder.layers.1" and d["layer"] == 1
    assert d["conditions"]["all"] == {"hits": 4, "n": 4, "rate": 1.0}
    assert d["conditions"]["none"]["hits"] == 0
    assert d["judge"] == "ground truth"


def test_recommendation_follows_the_rates():
    rates = lambda a, b, c: {"subject": {"rate": a}, "after_subject": {"rate": b}, "all": {"rate": c}}  # noqa: E731
    assert recommend(rates(0.9, 1.0, 1.0))[0] == "refact"
    assert recommend(rates(0.0, 1.0, 1.0))[0] == "quickfix"
    assert recommend(rates(0.0, 0.1, 0.3))[0] is None


def test_toy_subject_token_cannot_carry_the_colour():
    """The measured limit: the target's exact residual after layer 0 at 'red' alone never turns it
    blue; at the tokens after it, it always does (ground truth)."""
    from diffloc.editing.cases import load_cases
    from diffloc.tracing.models import load_model
    from diffloc.tracing.worlds import world_of

    m = load_model("toy")
    case = load_cases("experiments/cases/toy_edits.jsonl")[0]
    d = diagnose(m, "red", "blue", "text_encoder:encoder.layers.0.self_attn.out_proj", templates=case["templates"][:4],
                 targets=case["targets"][:4], seeds=[0], truth=world_of(m))
    c = d["conditions"]
    assert (c["subject"]["hits"], c["after_subject"]["hits"], c["all"]["hits"], c["none"]["hits"]) == (0, 4, 4, 0)
    assert d["recommended"] == "quickfix"


def test_unet_site_and_diagnosis_file(tmp_path):
    with pytest.raises(EditError, match="not in a text-encoder layer"):
        residual_site("unet:mid_block.attentions.0.transformer_blocks.0.attn2")
    write_diagnosis({"source": "red"}, tmp_path / "diagnosis.json")
    assert json.loads((tmp_path / "diagnosis.json").read_text())["schema"] == "diagnosis/1"


def test_cli_diagnose_writes_json_and_refuses_a_unet_site(tmp_path, pixel_model):
    src = save_edited(pixel_model, [], tmp_path / "base", source="nowhere")
    r = subprocess.run([sys.executable, "-m", "diffloc", "diagnose", "--model", str(src), "--source", "red", "--target", "blue",
                        "--method", "quickfix", "--seeds", "1", "--max-prompts", "1", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "d" / "diagnosis.json").read_text())
    assert d["residual_site"] == "text_encoder:encoder.layers.0" and set(d["conditions"]) == {"none", "subject", "after_subject", "all"}
    r = subprocess.run([sys.executable, "-m", "diffloc", "diagnose", "--model", str(src), "--source", "red", "--target", "blue",
                        "--method", "crossattn", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "--diagnose patches text-encoder states" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_edit_diagnose_writes_the_diagnosis_beside_the_edit(tmp_path, pixel_model):
    src = save_edited(pixel_model, [], tmp_path / "base", source="nowhere")
    r = subprocess.run([sys.executable, "-m", "diffloc", "edit", "--method", "refact", "--layer", "1", "--source", "red", "--target", "blue",
                        "--diagnose", "--diagnose-seeds", "1", "--model", str(src), "--out", str(tmp_path / "e")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "diagnosis 'red'->'blue' at text_encoder:encoder.layers.1" in r.stdout
    d = json.loads((tmp_path / "e" / "diagnosis.json").read_text())
    assert d["site"] == "text_encoder:encoder.layers.1.mlp.fc2" and d["conditions"]["all"]["n"] == 4  # 4 paper templates x 1 seed
    assert (tmp_path / "e" / "edit.json").exists()


def test_text_entry_patch_touches_only_the_prompt_rows_at_every_call():
    """Denoiser-call patching: CFG's unconditional rows (first half) stay, the prompts' rows take the
    target's states at the paired positions, on every call (the hand-built batch is the reference)."""
    from diffloc.editing.diagnose import _patch

    rows, n_seeds = 4, 2                                   # 2 prompts x 2 seeds
    tgt = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # [P, T, D]
    pairs = [([1, 2], [2, 3]), ([], [])]
    calls = {"n": 0}
    fn = _patch(rows, pairs, tgt, n_seeds, calls, every_call=True)
    out = torch.zeros(2 * rows, 5, 3)
    for _ in range(3):                                     # three denoiser steps
        new = fn(None, None, out)
        want = out.clone()
        want[rows + 0, [1, 2]] = tgt[0, [2, 3]]
        want[rows + 1, [1, 2]] = tgt[0, [2, 3]]
        assert torch.equal(new, want)
    assert calls["n"] == 3
    with pytest.raises(RuntimeError, match="prompts have 4"):
        fn(None, None, torch.zeros(3, 5, 3))


def test_toy_dit_text_entry_after_the_subject_carries_the_colour():
    """On toy-dit the text stream entering block 0 (context_embedder's output) carries 'blue' at the tokens
    after the subject, never at the subject token alone (ground truth, the measured answer)."""
    from diffloc.editing.cases import load_cases
    from diffloc.tracing.models import load_model
    from diffloc.tracing.worlds import world_of

    m = load_model("toy-dit")
    case = load_cases("experiments/cases/toy_edits.jsonl")[0]
    d = diagnose(m, "red", "blue", "transformer:context_embedder", templates=case["templates"][:3], targets=case["targets"][:3],
                 seeds=[0], truth=world_of(m))
    c = d["conditions"]
    assert (c["none"]["hits"], c["subject"]["hits"], c["after_subject"]["hits"], c["all"]["hits"]) == (0, 0, 3, 3)
    assert d["residual_site"] == "transformer:context_embedder" and d["recommended"] == "context-embedder"
    with pytest.raises(EditError, match="not in a text-encoder layer"):
        diagnose(m, "red", "blue", "transformer:transformer_blocks.0.attn.add_k_proj", seeds=[0], truth=world_of(m))

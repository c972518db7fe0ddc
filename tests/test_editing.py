"""Editors on real module trees: quickfix, ReFACT, cross-attention; records, save, undo."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_pixel_model
from diffloc.editing.crossattn import crossattn
from diffloc.editing.quickfix import gather, keys_values, quickfix
from diffloc.editing.records import EditError, load_records, redo_edit, save_edited, undo_edit, weight_hash
from diffloc.editing.refact import covariance, fc2_site, refact
from diffloc.tracing.models import load_model
from diffloc.tracing.sites import Site

CORPUS = ["a photo of two red circles at the top", "three blue squares in the middle", "a green diamond on a plain background",
          "one yellow triangle at the bottom", "a picture of two green squares on a striped background"] * 8


@pytest.fixture()
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLOC_CACHE", str(tmp_path / "cache"))
    return tiny_pixel_model()


def test_quickfix_moves_source_outputs_to_target(model):
    site = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")
    K, V = keys_values(model, site, "red", "blue", ("{}", "A photo of {}", "An image of {}", "A picture of {}"))
    bias = model.module(site).bias.detach()
    before = ((K @ model.module(site).weight.T) - V).norm()
    recs = quickfix(model, "red", "blue")
    after = ((K @ model.module(site).weight.T) - V).norm()
    assert after < 0.5 * before
    assert recs[0].site == str(site) and recs[0].info["lambda"] == 0.01 and recs[0].info["n_pairs"] == K.shape[0]
    assert torch.equal(model.module(site).bias, bias), "quickfix leaves the bias untouched"
    # the edited layer's outputs for the source prompt now approach the target's
    from diffloc.tracing.prompts import MarkedPrompt

    src = gather(model, site, [MarkedPrompt.parse("a photo of [red]")], "out")[0]
    tgt = gather(model, site, [MarkedPrompt.parse("a photo of [blue]")], "out")[0]
    assert (src - tgt).norm() / tgt.norm() < 0.5


def test_aligned_positions_pair_equal_contexts_one_to_one_and_skip_inserted_tokens():
    from diffloc.editing.quickfix import aligned_positions

    pad = [9] * 4
    # word substitution: the same context after the subject -> position by position
    assert aligned_positions([0, 1, 2, 3, 4, *pad], [0, 1, 5, 3, 4, *pad], 2, 2) == ([2, 3, 4, 5, 6, 7, 8],) * 2
    # a two-token word in the target ('tri angles'): its last token pairs with the source word,
    # and EOS/padding pair with EOS/padding (shifted by one), never with the extra token
    ps, pt = aligned_positions([0, 1, 2, 7, 4, *pad], [0, 1, 5, 8, 6, 4, *pad], 2, 2)
    assert ps == [2, 3, 4, 5, 6, 7, 8] and pt == [2, 4, 5, 6, 7, 8, 9]


def test_quickfix_target_prompts_equal_substitution_when_they_say_the_same(model):
    site = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")
    templates = ["a photo of {} circles", "two {} squares at the top"]
    K, V = keys_values(model, site, "red", "blue", templates)
    K2, V2 = keys_values(model, site, "red", "blue", templates, targets=["a photo of [blue] circles", "two [blue] squares at the top"])
    assert torch.equal(K, K2) and torch.equal(V, V2)
    # a grammatical target with a longer tail pairs fewer positions, each with a real partner
    K3, V3 = keys_values(model, site, "one", "two", ["{} red triangle"], targets=["[two] red triangles"])
    extra = len(model.tokenizer("two red triangles").input_ids) - len(model.tokenizer("one red triangle").input_ids)
    assert K3.shape[0] == V3.shape[0] == 76 - extra  # 'one' (position 1) to the end, less the unpaired extra tokens
    with pytest.raises(EditError, match="one target prompt per template"):
        keys_values(model, site, "red", "blue", templates, targets=["[blue] circles"])
    with pytest.raises(EditError, match="target prompt"):
        keys_values(model, site, "red", "blue", ["{} circles"], targets=["blue circles"])


def test_quickfix_preserve_keeps_preserved_outputs(model):
    """UCE's preservation term on the quickfix layer: preserved captions' outputs move far less,
    while the edit still maps the source onto the target."""
    from diffloc.tracing.prompts import MarkedPrompt

    site = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")
    keep = ["a photo of green", "two green squares in the middle", "a yellow diamond at the top"]
    ids = model.tokenize(keep, "text_encoder")

    def outputs():
        from diffloc.tracing.hooks import Recorder

        with Recorder(model.modules, [site]) as rec:
            model.text_encoder(ids)
        return rec.outputs[site][:, 1:].clone()  # [3, 76, D]

    base = outputs()
    drift = {}
    for name, kw in (("plain", {}), ("preserve", {"preserve": keep})):
        recs = quickfix(model, "red", "blue", **kw)
        drift[name] = float((outputs() - base).norm() / base.norm())
        src = gather(model, site, [MarkedPrompt.parse("a photo of [red]")], "out")[0]
        tgt = gather(model, site, [MarkedPrompt.parse("a photo of [blue]")], "out")[0]
        assert (src - tgt).norm() / tgt.norm() < 0.6, name
        undo_edit(model, recs[0])
    assert drift["preserve"] < 0.5 * drift["plain"], drift
    assert recs[0].info["n_preserve_keys"] == 3 * 76 and recs[0].info["preserve"] == keep


def test_undo_is_bit_exact_and_checks_hashes(model):
    site = "text_encoder:encoder.layers.0.self_attn.out_proj"
    w0 = model.module(site).weight.detach().clone()
    recs = quickfix(model, "red", "blue")
    assert not torch.equal(model.module(site).weight, w0)
    undo_edit(model, recs[0])
    assert torch.equal(model.module(site).weight, w0)
    with pytest.raises(EditError, match="does not match"):
        undo_edit(model, recs[0])  # already undone: the record no longer matches
    redo_edit(model, recs[0])
    assert weight_hash(model.module(site).weight) == recs[0].hash_after


def test_refact_rank_one_hits_v_star(model):
    recs = refact(model, "red", "blue", layer=1, corpus=CORPUS, contrastive=CORPUS[:4], max_steps=30)
    rec = recs[0]
    assert rec.site == str(fc2_site(model, 1)) and rec.info["layer"] == 1
    assert torch.linalg.matrix_rank(rec.delta.float()) == 1
    assert rec.info["delta_norm_ratio"] <= 4.0 + 1e-4
    C = covariance(model, fc2_site(model, 1), CORPUS)
    assert (torch.linalg.eigvalsh(C.double()) > 0).all()
    cached = list((model.source or "x") and __import__("pathlib").Path(__import__("os").environ["DIFFLOC_CACHE"]).glob("cov/*.pt"))
    assert len(cached) == 1, "the covariance is cached on disk"


def test_crossattn_edits_to_k_and_to_v_only(model):
    recs = crossattn(model, "red", "blue", sites=["unet:mid_block.attentions.0.transformer_blocks.0.attn2"])
    assert sorted(r.site.rsplit(".", 1)[1] for r in recs) == ["to_k", "to_v"]
    with pytest.raises(EditError, match="attn2"):
        crossattn(model, "red", "blue", sites=["unet:mid_block.resnets.0"])


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_edited_replica_opens_in_stock_pipeline(tmp_path, family):
    from diffusers import StableDiffusionPipeline

    m = load_model(f"tiny-{family}")
    recs = quickfix(m, "dog", "cat") + crossattn(m, "dog", "cat", sites=[m.sites.denoiser[2].path and str([s for s in m.sites.denoiser if s.kind == "attn2"][0])])
    out = save_edited(m, recs, tmp_path / "edited")
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    site = recs[0].site.split(":", 1)[1]
    assert torch.equal(dict(pipe.text_encoder.named_modules())[site].weight, m.module(recs[0].site).weight)
    img = pipe("a dog", num_inference_steps=1, output_type="pt").images
    assert torch.isfinite(img).all()
    meta = json.loads((out / "edit.json").read_text())
    assert [e["method"] for e in meta["edits"]] == ["quickfix", "crossattn", "crossattn"]
    assert len(load_records(out)) == 3


def test_output_inside_source_is_refused(tmp_path, model):
    src = save_edited(model, [], tmp_path / "src", source="nowhere")
    for bad in (src, src / "inner"):
        with pytest.raises(EditError, match="inside it|source model"):
            save_edited(model, [], bad, source=str(src))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "diffloc", *args], capture_output=True, text=True)


def test_cli_edit_reads_templates_and_preserve_files(tmp_path, model):
    src = save_edited(model, [], tmp_path / "base", source="nowhere")
    (tmp_path / "tpl.txt").write_text("# edit prompts\none {} circle at the top\ntwo {} squares in the middle\n")
    (tmp_path / "keep.txt").write_text("one green circle at the top\ntwo yellow squares in the middle\n")
    r = _cli("edit", "--method", "crossattn", "--source", "red", "--target", "blue", "--model", str(src), "--out", str(tmp_path / "e"),
             "--templates", str(tmp_path / "tpl.txt"), "--preserve", str(tmp_path / "keep.txt"))
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "e" / "edit.json").read_text())["edits"][0]["info"]
    assert info["templates"] == ["one {} circle at the top", "two {} squares in the middle"] and info["n_preserve"] == 2
    (tmp_path / "tgt.txt").write_text("two [blue] circles at the top\ntwo [blue] squares in the middle\n")
    r = _cli("edit", "--method", "quickfix", "--source", "red", "--target", "blue", "--model", str(src), "--out", str(tmp_path / "q"),
             "--templates", str(tmp_path / "tpl.txt"), "--targets", str(tmp_path / "tgt.txt"))
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "q" / "edit.json").read_text())["edits"][0]["info"]
    assert info["targets"] == ["two [blue] circles at the top", "two [blue] squares in the middle"]


def test_cli_edit_then_undo_bit_exact(tmp_path, model):
    src = save_edited(model, [], tmp_path / "base", source="nowhere")
    r = _cli("edit", "--method", "quickfix", "--source", "red", "--target", "blue", "--model", str(src), "--out", str(tmp_path / "e1"))
    assert r.returncode == 0, r.stderr
    r = _cli("edit", "--method", "crossattn", "--source", "red", "--target", "blue", "--model", str(tmp_path / "e1"), "--out", str(tmp_path / "e2"))
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "e2" / "edit.json").read_text())["edits"]) == 1 + len(model.sites.denoiser and [s for s in model.sites.denoiser if s.kind == "attn2"]) * 2
    r = _cli("undo", "--model", str(tmp_path / "e2"), "--out", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stderr
    a, b = load_model(str(src)), load_model(str(tmp_path / "restored"))
    for (na, pa), (nb, pb) in zip(list(a.text_encoder.named_parameters()) + list(a.denoiser.named_parameters()),
                                  list(b.text_encoder.named_parameters()) + list(b.denoiser.named_parameters())):
        assert na == nb and torch.equal(pa, pb), na


@pytest.mark.parametrize("args, msg", [
    (["edit", "--method", "bogus", "--source", "a", "--target", "b", "--out", "X"], "unknown method"),
    (["edit", "--method", "quickfix", "--source", "red", "--target", "blue", "--model", "SRC", "--out", "SRC/inner"], "inside"),
    (["edit", "--method", "quickfix", "--source", "red", "--target", "blue", "--model", "SRC", "--out", "X", "--site", "unet:conv_out"], "self_attn.out_proj"),
    (["edit", "--method", "quickfix", "--source", "   ", "--target", "blue", "--model", "SRC", "--out", "X"], "tokenises to nothing"),
    (["undo", "--model", "SRC", "--out", "X"], "edit.json"),
    (["evaluate", "--model", "SRC", "--out", "X", "--refact-layer", "99", "--seeds", "1"], "layer 99 out of range"),
    (["edit", "--method", "quickfix", "--source", "red", "--target", "blue", "--model", "SRC", "--out", "X", "--templates", "TPL"], "exactly one '{}'"),
    (["edit", "--method", "refact", "--source", "red", "--target", "blue", "--model", "SRC", "--out", "X", "--preserve", "TPL"], "--preserve applies to --method quickfix, crossattn"),
    (["edit", "--method", "quickfix", "--source", "red", "--target", "blue", "--model", "SRC", "--out", "X", "--targets", "TPL"], "give --templates too"),
    (["edit", "--method", "quickfix", "--source", "red", "--target", "blue", "--model", "SRC", "--out", "X", "--templates", "ONE",
      "--targets", "TPL"], "one target prompt per template"),
])
def test_cli_bad_edit_input(tmp_path, model, args, msg):
    src = save_edited(model, [], tmp_path / "SRC", source="nowhere")
    (src / "edit.json").unlink() if "undo" in args else None
    (tmp_path / "tpl.txt").write_text("a photo of {}\nno slot here\n")
    (tmp_path / "one.txt").write_text("a photo of {}\n")
    args = [a.replace("SRC", str(src)).replace("X", str(tmp_path / "X")).replace("TPL", str(tmp_path / "tpl.txt"))
            .replace("ONE", str(tmp_path / "one.txt")) for a in args]
    r = _cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

"""DiT and T5 editors on tiny replicas: the closed form on the gathered keys, bit-exact undo, stock reload."""
from __future__ import annotations

import pytest
import torch

from diffloc.editing.closed_form import least_squares_update, preserved_basis
from diffloc.editing.dit_editors import _context_plan, _joint_plan, _pixart_plan, _t5_plan, dit_pairs, dit_preserve_keys
from diffloc.editing.editors import EDITORS
from diffloc.editing.records import EditError, save_edited, undo_edit, weight_hash
from diffloc.editing.trace_options import options_from_trace
from diffloc.tracing.io import write_json_format
from diffloc.tracing.models import load_model

TEMPLATES = ["a photo of {}"]
_models: dict = {}


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(fam: str):
    if fam not in _models:
        _models[fam] = load_model(f"tiny-{fam}")
    return _models[fam]


PLANS = {"dit-crossattn": lambda m, o: _pixart_plan(m, o.get("sites")), "joint-attn": lambda m, o: _joint_plan(m, o.get("sites")),
         "context-embedder": lambda m, o: _context_plan(m), "t5-quickfix": lambda m, o: _t5_plan(m, o.get("site"))}

CASES = [("pixart", "dit-crossattn", {"sites": ["transformer:transformer_blocks.1.attn2"]}),
         ("sd3", "joint-attn", {"sites": ["transformer:transformer_blocks.1.attn.to_add_out"]}),
         ("flux", "context-embedder", {}),
         ("sd3", "t5-quickfix", {}),
         ("flux", "t5-quickfix", {"site": "text_encoder_2:encoder.block.1.layer.0.SelfAttention.o"}),
         ("pixart", "t5-quickfix", {})]


@pytest.mark.parametrize("fam, name, opts", CASES, ids=[f"{f}-{n}" for f, n, _ in CASES])
def test_closed_form_on_gathered_keys_and_bit_exact_undo(fam, name, opts):
    model = tiny(fam)
    editor = EDITORS.get(name)
    options = editor.make_options(opts, templates=TEMPLATES, lam=1e-3)
    plan = PLANS[name](model, {k: getattr(options, k) for k in ("sites", "site") if hasattr(options, k)})
    gathered = dit_pairs(model, list(plan.targets), "red", "blue", TEMPLATES, None, plan.gather, plan.timesteps, plan.segments)
    before = {w: model.module(w).weight.detach().clone() for ws in plan.targets.values() for w in ws}
    recs = editor.apply(model, "red", "blue", options)
    try:
        assert {r.site for r in recs} == set(before)
        for key, ws in plan.targets.items():
            K, T = gathered[key]
            for w in ws:
                W0, W = before[w].float(), model.module(w).weight.detach().float()
                V = T @ W0.T                                                 # the unedited layer on the target's inputs
                torch.testing.assert_close(W, least_squares_update(W0, K, V, lam=1e-3), rtol=1e-5, atol=1e-5)
                assert (K @ W.T - V).norm() < 0.5 * (K @ W0.T - V).norm()   # (W + ΔW) k moves to v
                if K.shape[0] < K.shape[1]:                                  # fewer pairs than dims: an exact fit
                    torch.testing.assert_close(K @ W.T, V, rtol=1e-3, atol=1e-3)
    finally:
        for r in reversed(recs):
            undo_edit(model, r)
    for w, t in before.items():
        assert weight_hash(model.module(w).weight) == weight_hash(t)


@pytest.mark.parametrize("fam, name, opts", [("pixart", "dit-crossattn", {"sites": ["transformer:transformer_blocks.0.attn2"]}),
                                             ("sd3", "joint-attn", {}), ("flux", "t5-quickfix", {})])
def test_edited_folder_opens_in_stock_pipeline(tmp_path, fam, name, opts):
    import diffusers

    model = tiny(fam)
    recs = EDITORS.get(name).apply(model, "red", "blue", templates=TEMPLATES, **opts)
    try:
        edited = {r.site: model.module(r.site).weight.detach().clone() for r in recs}
        out = save_edited(model, recs, tmp_path / "edited")
        pipe = getattr(diffusers, model.family.pipeline).from_pretrained(out)
        for site, w in edited.items():
            comp, path = site.split(":")
            assert torch.equal(pipe.components[comp].get_submodule(path).weight, w)
    finally:
        for r in reversed(recs):
            undo_edit(model, r)


def test_nullspace_mode_keeps_preserved_inputs_exactly():
    model = tiny("sd3")
    plan = _context_plan(model)
    key = next(iter(plan.targets))
    Kp = dit_preserve_keys(model, [key], ["a green square"], plan.gather, plan.timesteps)[key]
    W0 = model.module(key).weight.detach().clone()
    recs = EDITORS.get("context-embedder").apply(model, "red", "blue", templates=TEMPLATES, preserve=["a green square"],
                                                 preserve_mode="nullspace")
    try:
        W = model.module(key).weight.detach()
        assert recs[0].info["preserve_mode"] == "nullspace"
        B = preserved_basis(Kp).float()                                     # the preserved directions kept by the rank rule
        assert recs[0].info["nullspace_dim"][str(key)] == W.shape[1] - B.shape[0] > 0
        dW = (W - W0).double()
        assert float((dW @ B.double().T).norm() / dW.norm()) < 1e-5         # ΔW is blind to every kept direction
        # so a preserved key's output moves only through the directions below the threshold (σ <= rtol·σ_max)
        rest = torch.linalg.matrix_norm((Kp - Kp @ B.T @ B).double(), ord=2)
        leak = torch.linalg.matrix_norm(Kp.double() @ dW.T, ord=2)
        assert float(leak) <= 1.01 * float(torch.linalg.matrix_norm(dW, ord=2) * rest) + 1e-6
        assert float(rest) <= 1e-5 * float(torch.linalg.matrix_norm(Kp.double(), ord=2)) * B.shape[1] ** 0.5
    finally:
        undo_edit(model, recs[0])
    assert torch.equal(model.module(key).weight, W0)


def _trace(tmp_path, entries):
    causal = [{"site": s, "component": s.split(":")[0], "kind": k, "effect": e} for s, k, e in entries]
    write_json_format("causal_sites", {"metrics": ["clip"], "clip": {"causal": causal}}, tmp_path / "causal_sites.json")
    return tmp_path


def test_sites_from_a_dit_trace(tmp_path):
    d = _trace(tmp_path, [("transformer:transformer_blocks.3@text", "out_text", 0.9),
                          ("transformer:transformer_blocks.1.attn.to_add_out", "attn_text", 0.7),
                          ("transformer:transformer_blocks.2.attn.txt2img", "other", 0.8),
                          ("transformer:transformer_blocks.3.attn.to_add_out", "attn_text", 0.5),
                          ("transformer:transformer_blocks.0.ff", "ff", 0.95),
                          ("transformer:transformer_blocks.4.attn2", "attn2", 0.6),
                          ("text_encoder_2:encoder.block.1.layer.0.SelfAttention.o", "attn", 0.4),
                          ("text_encoder_2:encoder.block.0.layer.1.DenseReluDense.wo", "mlp", 0.9)])
    assert options_from_trace(d, "joint-attn") == {"sites": ["transformer:transformer_blocks.3.attn", "transformer:transformer_blocks.2.attn",
                                                             "transformer:transformer_blocks.1.attn"]}
    assert options_from_trace(d, "dit-crossattn") == {"sites": ["transformer:transformer_blocks.4.attn2"]}
    assert options_from_trace(d, "t5-quickfix", model=tiny("flux")) == {"site": "text_encoder_2:encoder.block.1.layer.0.SelfAttention.o"}
    assert options_from_trace(d, "context-embedder") == {}
    opts = EDITORS.get("joint-attn").make_options(options_from_trace(d, "joint-attn"))
    assert opts.sites[0] == "transformer:transformer_blocks.3.attn"


def test_options_refuse_wrong_sites_and_models_in_one_line():
    with pytest.raises(EditError, match="joint-attention blocks"):
        EDITORS.get("joint-attn").make_options(sites=["text_encoder:encoder.layers.0.self_attn.out_proj"])
    with pytest.raises(EditError, match="SelfAttention.o"):
        EDITORS.get("t5-quickfix").make_options(site="text_encoder:encoder.block.0.layer.1.DenseReluDense.wo")
    with pytest.raises(EditError, match="context_embedder"):
        EDITORS.get("context-embedder").make_options(site="transformer:proj_out")
    with pytest.raises(EditError, match="preserve_mode"):
        EDITORS.get("dit-crossattn").make_options(preserve_mode="hard")
    with pytest.raises(EditError, match="sd3/flux/toy-dit"):
        EDITORS.get("joint-attn").apply(tiny("pixart"), "red", "blue", templates=TEMPLATES)


def test_preserve_mode_reaches_the_unet_editors(tmp_path, monkeypatch):
    from conftest import tiny_pixel_model
    from diffloc.editing.quickfix import preserve_keys
    from diffloc.tracing.sites import Site

    monkeypatch.setenv("DIFFLOC_CACHE", str(tmp_path / "cache"))
    model = tiny_pixel_model()
    site = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")
    captions = ["a green square"]
    Kp = preserve_keys(model, site, captions)
    W0 = model.module(site).weight.detach().clone()
    for name in ("quickfix", "crossattn"):
        assert EDITORS.get(name).make_options(preserve_mode="nullspace").preserve_mode == "nullspace"
    recs = EDITORS.get("quickfix").apply(model, "red", "blue", preserve=captions, preserve_mode="nullspace")
    try:
        W = model.module(site).weight.detach()
        assert recs[0].info["preserve_mode"] == "nullspace"
        assert float((Kp @ W.T - Kp @ W0.T).abs().max() / (Kp @ W0.T).abs().max()) < 1e-5
    finally:
        undo_edit(model, recs[0])


def test_a_causal_text_stream_names_every_later_block_as_a_reader(tmp_path):
    """@text after block k is read by blocks k..last; a text->image slice names only its own block."""
    model = load_model("toy-dit")
    n = len(model.denoiser.transformer_blocks)
    d = _trace(tmp_path / "a", [("transformer:transformer_blocks.3@text", "out_text", 0.9),
                                ("transformer:transformer_blocks.1.attn.txt2img", "other", 0.8)])
    sites = options_from_trace(d, "joint-attn", model=model)["sites"]
    assert sites == [f"transformer:transformer_blocks.{i}.attn" for i in [3, *range(4, n), 1]]
    d = _trace(tmp_path / "b", [("transformer:transformer_blocks.0.attn.txt2img", "other", 1.0)])
    assert options_from_trace(d, "joint-attn", model=model) == {"sites": ["transformer:transformer_blocks.0.attn"]}
    # with no trace, joint-attn edits every joint block
    opts = EDITORS.get("joint-attn").make_options(templates=TEMPLATES)
    plan = _joint_plan(model, opts.sites)
    assert [str(k) for k in plan.targets] == [f"transformer:transformer_blocks.{i}.attn.add_k_proj" for i in range(n)]


def test_nullspace_rtol_sets_the_room_and_the_update_avoids_the_kept_directions():
    """A narrow layer whose preserve keys fill its input: no room at 1e-5 (weights unchanged), room at 1e-2,
    and ΔW is blind to the directions kept at that threshold (checked against preserved_basis directly)."""
    model = load_model("toy-dit")
    plan = _context_plan(model)
    key = next(iter(plan.targets))
    captions = ["a photo of one green square at the top on a plain background", "a photo of two yellow circles in the middle",
                "a photo of three blue diamonds at the bottom on a striped background"]
    Kp = dit_preserve_keys(model, [key], captions, plan.gather, plan.timesteps)[key]
    W0 = model.module(key).weight.detach().clone()
    editor = EDITORS.get("context-embedder")
    for rtol in (1e-5, 1e-2):
        recs = editor.apply(model, "red", "blue", templates=TEMPLATES, preserve=captions, preserve_mode="nullspace", nullspace_rtol=rtol)
        try:
            W = model.module(key).weight.detach()
            B = preserved_basis(Kp, rtol).double()
            room = recs[0].info["nullspace_dim"][str(key)]
            assert room == W.shape[1] - B.shape[0] and recs[0].info["nullspace_rtol"] == rtol
            dW = (W - W0).double()
            if room == 0:
                assert float(dW.abs().max()) == 0.0
            else:
                assert float(dW.norm()) > 0 and float((dW @ B.T).norm() / dW.norm()) < 1e-5
        finally:
            undo_edit(model, recs[0])
    assert recs[0].info["nullspace_dim"][str(key)] > 0
    with pytest.raises(EditError, match=r"nullspace_rtol must be a number in \[0, 1\)"):
        editor.make_options(nullspace_rtol=1.5)


def test_nullspace_method_labels():
    from diffloc.editing.editors import Method, as_method, case_options, method_labels

    m = as_method("context-embedder+nullspace")
    assert (m.editor, m.preserve, m.nullspace, m.label) == ("context-embedder", True, True, "context-embedder+nullspace")
    assert "quickfix+nullspace" in method_labels() and "refact+nullspace" not in method_labels()
    case = {"id": "c", "source": "red", "target": "blue", "preserve": ["a green square"]}
    opts = case_options(m, case, {"context-embedder": {"nullspace_rtol": 0.01}})
    assert (opts.preserve_mode, opts.preserve, opts.nullspace_rtol) == ("nullspace", ("a green square",), 0.01)
    assert case_options(Method("quickfix", preserve=True), case).preserve_mode == "soft"
    with pytest.raises(EditError, match="no null-space mode"):
        as_method("refact+nullspace")
    with pytest.raises(EditError, match="needs preserve captions"):
        case_options(m, {"id": "c", "source": "red", "target": "blue"})


@pytest.mark.parametrize("fam, expected", [("sd3", [("text_encoder", 0), ("text_encoder_3", 77)]),
                                           ("flux", [("text_encoder_2", 0)]), ("pixart", [("text_encoder", 0)])])
def test_sequence_segments_are_where_each_pipeline_puts_its_encoders(fam, expected):
    """SD3: CLIP-L and CLIP-G side by side along features at 0 (one segment), T5 after CLIP's 77 tokens; FLUX: T5 only
    (CLIP enters through the pooled vector); PixArt: its one T5."""
    from diffloc.editing.dit_keys import sequence_segments

    assert sequence_segments(tiny(fam)) == expected

"""SD 1.x, 2.x and SDXL replicas end to end: a trace and an edit each, half precision on CPU."""
from __future__ import annotations

import pytest
import torch

from diffloc.editing.quickfix import default_site, quickfix
from diffloc.editing.records import save_edited
from diffloc.tracing.models import load_model
from diffloc.tracing.sampler import NonFiniteError, Restore, SamplerConfig, make_corruption, patched_generate
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig

PROMPT = ("a painting of a house in the style of [Van Gogh]",)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_trace_and_edit_each_family(tmp_path, family, scorer):
    model = load_model(f"tiny-{family}")
    cfg = TraceConfig(model=f"tiny-{family}", attribute="style", prompts=PROMPT, seeds=(0,), num_inference_steps=2,
                      guidance_scale=5.0, batch_size=512)
    table = run_sweep(cfg, tmp_path / "trace", model=model, scorer=scorer)
    comps = set(table.component) - {"clean", "corrupted"}
    expected = {"text_encoder", "unet"} | ({"text_encoder_2"} if family == "sdxl" else set())
    assert comps == expected
    n_unet = {"sd1": 70, "sd2": 70, "sdxl": 227}[family]
    assert (table.component == "unet").sum() == n_unet
    assert table.clip_score.notna().all()
    # an edit on every text encoder of the family, saved and reopened by the stock pipeline
    records = quickfix(model, "Van Gogh", "a painting")
    if family == "sdxl":
        records += quickfix(model, "Van Gogh", "a painting", site=default_site("text_encoder_2"))
        assert records[-1].site.startswith("text_encoder_2:text_model.encoder.layers.0")
    out = save_edited(model, records, tmp_path / "edited")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(out)
    enc = pipe.text_encoder_2 if family == "sdxl" else pipe.text_encoder
    path = records[-1].site.split(":", 1)[1]
    assert torch.equal(dict(enc.named_modules())[path].weight, model.module(records[-1].site).weight)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_on_cpu(dtype):
    """float16 / bfloat16 weights sample on the CPU and give the float32 run's images (to half precision)."""
    def run(dt):
        model = load_model("tiny-sd1", dtype=dt)
        assert model.denoiser.dtype == getattr(torch, dt)
        corr = make_corruption(model, [7, 8], torch.Generator().manual_seed(0))
        return patched_generate(model, PROMPT[0].replace("[", "").replace("]", ""), [Restore()], corr,
                                torch.Generator().manual_seed(0), SamplerConfig(num_inference_steps=2, guidance_scale=5.0))

    imgs, ref = run(dtype), run("float32")
    assert imgs.dtype == torch.float32 and imgs.shape[0] == 2
    assert torch.isfinite(imgs).all()
    assert (imgs - ref).abs().max() < 0.05, "half precision drifted from the float32 images"


def test_non_finite_activations_stop_the_run(pixel_model):
    def poison(module, inputs, output):
        return output * float("nan")

    from diffloc.tracing.hooks import hooks
    from diffloc.tracing.sites import Site

    corr = make_corruption(pixel_model, [2], torch.Generator().manual_seed(0))
    with hooks(pixel_model.modules, {Site.parse("unet:mid_block.resnets.0"): poison}):
        with pytest.raises(NonFiniteError, match="non-finite"):
            patched_generate(pixel_model, "a red circle", [Restore()], corr, torch.Generator().manual_seed(0), SamplerConfig(2, 2.0))


def test_model_spec_errors_are_one_line(tmp_path):
    from diffloc.tracing.models import ModelSpecError

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    cases = [("nope", "unknown model spec"), (str(tmp_path / "missing"), "does not exist"),
             (str(tmp_path / "missing.safetensors"), "does not exist"), (str(bad), "cannot load single-file checkpoint")]
    (tmp_path / "empty").mkdir()
    cases.append((str(tmp_path / "empty"), "no model_index.json"))
    for spec, msg in cases:
        with pytest.raises(ModelSpecError, match=msg) as err:
            load_model(spec)
        assert "\n" not in str(err.value)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    from diffloc.tracing.models import ModelSpecError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelSpecError, match="HF_HUB_OFFLINE is set"):
        load_model("runwayml/stable-diffusion-v1-5")

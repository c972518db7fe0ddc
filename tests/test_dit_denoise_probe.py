"""experiments.dit_denoise_probe: from unit noise it is the shipped sampler step for step; its fidelity is the readers'."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffloc.tracing.models import load_model
from diffloc.tracing.sampler import SamplerConfig, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["toy-dit", "pixel"])
def model(request):
    """The shipped (latent) toy-dit, and the pixel-space one the probe was first run on."""
    torch.set_num_threads(1)
    return load_model("toy-dit" if request.param == "toy-dit" else str(ROOT / "experiments" / "toy" / "weights" / "dit_pixel"))


def _noise(model, n: int, seed: int) -> torch.Tensor:
    """Start noise in the denoiser's space: [n, 8, 8, 8] latents, or [n, 3, 32, 32] pixels."""
    c, size = model.denoiser.config.in_channels, model.denoiser.config.sample_size
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_unit_noise_start_equals_plain_generation(model):
    """σ₀ = 1 at full guidance is tracing.sampler.generate on the same noise (x₀ is multiplied by 1 − σ₀ = 0)."""
    from experiments.dit_denoise_probe import denoise_from

    prompts = ["a photo of one red circle at the top on a plain background", "two blue squares, bottom, striped"]
    noise = _noise(model, 2, 3)
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = generate(model, prompts, cfg=SamplerConfig(num_inference_steps=3, guidance_scale=3.0), latents=noise)
    got = denoise_from(model, prompts, x0, 1.0, 3, lambda s: 3.0, noise=noise)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    other = denoise_from(model, prompts, x0, 0.5, 3, lambda s: 3.0, noise=noise)   # a lower start keeps some of x₀
    assert (other - ref).abs().max() > 0.05


def test_guidance_follows_the_noise_level(model):
    """A scale function that is 1 everywhere gives the unguided sampler; one that is 1 only below σ = 0.4 differs
    from both full guidance and none (the interval mode really switches mid-path)."""
    from experiments.dit_denoise_probe import denoise_from

    prompts = ["a photo of one red circle at the top on a plain background"]
    noise = _noise(model, 1, 4)
    x0 = torch.zeros(1, 3, 32, 32)
    none = denoise_from(model, prompts, x0, 1.0, 4, lambda s: 1.0, noise=noise)
    torch.testing.assert_close(none, generate(model, prompts, cfg=SamplerConfig(num_inference_steps=4, guidance_scale=1.0),
                                              latents=noise), atol=1e-5, rtol=0)
    full = denoise_from(model, prompts, x0, 1.0, 4, lambda s: 3.0, noise=noise)
    interval = denoise_from(model, prompts, x0, 1.0, 4, lambda s: 3.0 if s > 0.4 else 1.0, noise=noise)
    assert (interval - full).abs().max() > 1e-3 and (interval - none).abs().max() > 1e-3


def test_fidelity_counts_reader_agreement_with_wilson_intervals():
    """Renders read back exactly (rate 1, n = 8); relabelling two prompts' objects costs exactly 2 of 8."""
    from diffloc.evaluate import wilson
    from diffloc_toy import world
    from diffloc_toy.evaluate import balanced_attrs
    from experiments.dit_denoise_probe import fidelity

    attrs = balanced_attrs(2, seed=0)
    imgs = world.to_float(world.render_batch(attrs, seed=1))
    assert fidelity(imgs, attrs)["all"] == {"rate": 1.0, "ci": [round(c, 3) for c in wilson(8, 8)], "n": 8}
    wrong = [dict(a, object="diamond" if a["object"] != "diamond" else "circle") if i < 2 else a for i, a in enumerate(attrs)]
    got = fidelity(imgs, wrong)
    assert got["object"]["rate"] == 0.75 and got["colour"]["rate"] == 1.0 and got["all"]["rate"] == 0.75


@pytest.mark.parametrize("args, said", [(["--modes", "full,bogus"], "--modes"), (["--sigmas", "0.4,1.5"], "(0, 1]"),
                                        (["--sigmas", "half"], "--sigmas")])
def test_bad_options_exit_2_naming_what_is_allowed(tmp_path, capsys, args, said):
    from experiments.dit_denoise_probe import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), *args])
    assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "probe.json").exists()

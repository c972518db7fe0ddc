"""diffloc_toy.evaluate's sampler sweep: each setting really reaches the sampler, and bad input exits 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


def test_each_setting_is_sampled_with_its_own_steps_and_shift(tmp_path, monkeypatch):
    """The images scored under "steps=20,shift=3.0" equal an independent generation with a freshly built
    FlowMatchEulerDiscreteScheduler(shift=3) on evaluate's prompts and seeds, and differ from shift 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffloc.tracing.models import load_model
    from diffloc_toy import evaluate as ev

    torch.set_num_threads(1)
    seen = []
    real = ev.fidelity
    monkeypatch.setattr(ev, "fidelity", lambda images, attrs: (seen.append(images.clone()), real(images, attrs))[1])
    record = ev.sweep_sampler(tmp_path, steps=[3], shifts=[3.0], model_dir="toy-dit", n_per_value=1, seed=0)
    assert list(record["fidelity"]) == ["steps=3,shift=1.0", "steps=20,shift=3.0"]
    assert json.loads((tmp_path / "sampler_sweep.json").read_text())["n_samples"] == 4

    ref_model = load_model("toy-dit")
    attrs, prompts = ev.eval_prompts(1, 0)
    ref_model.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    shifted = ev.generate(ref_model, prompts, seed=0, num_inference_steps=20, guidance_scale=3.0)
    torch.testing.assert_close(seen[1], shifted, atol=1e-5, rtol=0)
    ref_model.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    plain = ev.generate(ref_model, prompts, seed=0, num_inference_steps=20, guidance_scale=3.0)
    assert (plain - shifted).abs().max() > 0.05
    few = ev.generate(ref_model, prompts, seed=0, num_inference_steps=3, guidance_scale=3.0)
    torch.testing.assert_close(seen[0], few, atol=1e-5, rtol=0)


@pytest.mark.parametrize("args, says", [
    (["--model", "toy", "--shift-sweep", "2"], "needs a flow-matching scheduler"),
    (["--model", "toy-dit", "--steps-sweep", "twenty"], "--steps-sweep takes integers"),
    (["--model", "toy-dit", "--steps-sweep", "0"], "must be >= 1"),
])
def test_bad_sweeps_exit_2_naming_what_is_allowed(tmp_path, args, says):
    r = subprocess.run([sys.executable, "-m", "diffloc_toy.evaluate", "--out", str(tmp_path), *args],
                       capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "sampler_sweep.json").exists()

"""The latent toy-dit (``diffloc_toy.latent``, ``train_dit`` with ``vae``): its latent space, export, sampling,
bit-exact resumes of both training stages, and bad input exiting 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_DIT = dict(num_layers=1, num_heads=2, head_dim=8, n_images=64, batch=4, warmup=1, ckpt_every=2, export_every=100, patch_size=1)


def _space(tmp_path, seed: int, attrs):
    """A random (untrained) autoencoder saved to tmp_path/vae and its latent space measured on ``attrs``' renders."""
    from diffloc_toy import world
    from diffloc_toy.latent import LatentSpace, new_vae

    torch.manual_seed(seed)
    new_vae().save_pretrained(tmp_path / "vae")
    renders = world.render_batch(attrs, seed=seed + 3)                           # uint8 [B, 3, 32, 32]
    return LatentSpace(tmp_path / "vae", renders), renders


def _euler_reference(space, net, prompts, noise, steps: int, guidance: float) -> torch.Tensor:
    """An independent Euler + CFG loop (FlowMatchEuler, shift 1; "" as negative) and SD3's latent decode."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffloc_toy.paths import MODEL_DIR

    tok = CLIPTokenizer.from_pretrained(MODEL_DIR, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(MODEL_DIR, subfolder="text_encoder").eval()
    with torch.no_grad():
        o = te(tok(["" for _ in prompts] + list(prompts), padding="max_length", max_length=77, return_tensors="pt").input_ids)
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        sched.set_timesteps(steps)
        x = noise
        for t in sched.timesteps:
            v = net(torch.cat([x, x]), encoder_hidden_states=o.last_hidden_state, pooled_projections=o.pooler_output,
                    timestep=t.expand(2 * len(prompts))).sample
            vu, vc = v.chunk(2)
            x = sched.step(vu + guidance * (vc - vu), t, x).prev_sample
        return (space.vae.decode(x / space.scale + space.shift).sample / 2 + 0.5).clamp(0, 1)


def test_reference_sampler_with_the_exact_velocity_decodes_the_renders_own_latent(tmp_path):
    """A denoiser returning the rectified-flow velocity towards a render's latent, (x_t - z0) / sigma with
    sigma = timestep / 1000, must end exactly on z0: the output equals the VAE's reconstruction of the render.
    Any slip in the timestep scale or in the latent shift/scale breaks the equality."""
    from diffloc_toy import world

    attrs = [dict(object="square", colour="red", style="plain", viewpoint="top", count="two"),
             dict(object="triangle", colour="blue", style="striped", viewpoint="bottom", count="one")]
    space, renders = _space(tmp_path, 0, attrs)
    x = renders.float() / 127.5 - 1
    z0 = space.latents(x)

    def oracle(xt, encoder_hidden_states, pooled_projections, timestep):
        sigma = (timestep / 1000).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(xt - torch.cat([z0, z0])) / sigma)

    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    got = _euler_reference(space, oracle, [world.caption(a) for a in attrs], noise, steps=7, guidance=3.0)
    with torch.no_grad():
        ref = (space.vae.decode(space.vae.encode(x).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert abs(space.scale - 1) > 0.05 or abs(space.shift) > 0.05          # a non-trivial normalisation: the check bites
    torch.testing.assert_close(z0.std(), torch.tensor(1.0), atol=1e-4, rtol=0)   # latents the DiT sees have unit std


def _export(tmp_path, space, layers: int = 2):
    from diffusers import SD3Transformer2DModel

    from diffloc_toy.paths import MODEL_DIR
    from diffloc_toy.train_dit import DitTrainConfig, _export, transformer_config

    cfg = DitTrainConfig(num_layers=layers, num_heads=2, head_dim=16, patch_size=1, vae=str(tmp_path / "vae"))
    torch.manual_seed(1)
    net = SD3Transformer2DModel(**transformer_config(cfg, 64, space.channels)).eval()
    return net, _export(tmp_path, cfg, net, 0, MODEL_DIR, space)


def test_an_export_samples_with_the_library_sampler_as_the_reference_loop(tmp_path):
    """train_dit's export of a latent run is a folder load_model opens as a latent toy-dit (vae/ with SD3's
    scaling and shift factors): tracing.sampler.generate on it equals the independent Euler loop on the same noise."""
    from diffloc.tracing.models import load_model
    from diffloc.tracing.sampler import SamplerConfig, generate
    from diffloc_toy import world

    attrs = [dict(object="circle", colour="green", style="checkered", viewpoint="middle", count="three")] * 2
    space, _ = _space(tmp_path, 1, attrs)
    net, folder = _export(tmp_path, space)
    model = load_model(str(folder))
    assert model.vae is not None and model.vae.config.scaling_factor == space.scale and model.vae.config.shift_factor == space.shift
    prompts = [world.caption(attrs[0]), "two red squares at the top on a plain background"]
    noise = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    ref = generate(model, prompts, cfg=SamplerConfig(num_inference_steps=3, guidance_scale=3.0), latents=noise)
    got = _euler_reference(space, net, prompts, noise, steps=3, guidance=3.0)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert (got - _euler_reference(space, net, prompts, noise, steps=3, guidance=1.0)).abs().max() > 1e-4


def test_encode_images_inverts_decode_and_the_probe_keeps_a_lightly_noised_latent(tmp_path):
    """tracing.sampler.encode_images is decode's inverse on a latent export (decode(encode(x)) is the VAE's
    reconstruction); the denoise probe on that export, started at σ₀ = 0.02, ends within a small distance
    of that reconstruction (a random denoiser can move it only by σ₀ times its velocity)."""
    from diffloc.tracing.models import load_model
    from diffloc.tracing.sampler import decode, encode_images
    from diffloc_toy import world
    from experiments.dit_denoise_probe import denoise_from

    attrs = [dict(object="diamond", colour="yellow", style="striped", viewpoint="top", count="one")] * 2
    space, renders = _space(tmp_path, 2, attrs)
    _, folder = _export(tmp_path, space, layers=1)
    model = load_model(str(folder))
    images = world.to_float(renders)
    z = encode_images(model, images)
    torch.testing.assert_close(z, space.latents(images * 2 - 1), atol=1e-5, rtol=0)
    with torch.no_grad():
        recon = (space.vae.decode(space.vae.encode(images * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decode(model, z), recon, atol=1e-5, rtol=0)
    prompts = [world.caption(a) for a in attrs]
    near = denoise_from(model, prompts, images * 2 - 1, 0.02, 4, lambda s: 3.0)
    far = denoise_from(model, prompts, images * 2 - 1, 1.0, 4, lambda s: 3.0)
    assert (near - recon).abs().mean() < 0.5 * (far - recon).abs().mean()


def _hashes(log: Path) -> list[tuple[int, str]]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["step"], r["sha_ema"]) for r in rows if r.get("event") == "ckpt"]


def test_a_killed_latent_run_resumes_to_the_uninterrupted_runs_weights(tmp_path, monkeypatch):
    """Killed after its checkpoint at step 2 and rerun, a 4-step latent run logs the EMA hashes of one that ran
    straight through, and its latent loss really is on the VAE's latents (the model's input has 8 channels)."""
    import diffloc_toy.train_dit as td
    from diffloc_toy.paths import MODEL_DIR

    torch.set_num_threads(1)
    _space(tmp_path, 3, [dict(object="circle", colour="red", style="plain", viewpoint="top", count="one")])
    cfg = td.DitTrainConfig(**TINY_DIT, steps=4, vae=str(tmp_path / "vae"))
    with torch.enable_grad():
        td.train_dit(tmp_path / "straight", cfg, MODEL_DIR)
    real, calls = td._batch_loss, []

    def dies_at_step_3(model, *a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        assert model.config.in_channels == 8
        return real(model, *a)

    monkeypatch.setattr(td, "_batch_loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt), torch.enable_grad():
        td.train_dit(tmp_path / "killed", cfg, MODEL_DIR)
    monkeypatch.setattr(td, "_batch_loss", real)
    with torch.enable_grad():
        td.train_dit(tmp_path / "killed", cfg, MODEL_DIR)
    straight, resumed = _hashes(tmp_path / "straight" / "dit_log.jsonl"), _hashes(tmp_path / "killed" / "dit_log.jsonl")
    assert resumed == straight and len(straight) == 2 and straight[0][1] != straight[1][1]
    assert (tmp_path / "straight" / "dit" / "vae" / "config.json").is_file()


def test_a_killed_vae_run_resumes_to_the_uninterrupted_runs_weights(tmp_path, monkeypatch):
    """The autoencoder stage: killed after its step-2 checkpoint and rerun, it ends with the straight run's weights."""
    import diffloc_toy.latent as lt

    torch.set_num_threads(1)
    cfg = lt.VaeTrainConfig(steps=4, batch=2, n_images=64, ckpt_every=2, check_every=1000, warmup=2, cosine=True)
    with torch.enable_grad():
        lt.train_vae(tmp_path / "straight", cfg)
        real, calls = lt.Data.batch, []

        def dies_at_step_3(self, *a, **k):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(self, *a, **k)

        monkeypatch.setattr(lt.Data, "batch", dies_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            lt.train_vae(tmp_path / "killed", cfg)
        assert torch.load(tmp_path / "killed" / "ckpt" / "vae.pt", weights_only=False)["step"] == 2
        monkeypatch.setattr(lt.Data, "batch", real)
        lt.train_vae(tmp_path / "killed", cfg)
    a, b = (torch.load(tmp_path / d / "ckpt" / "vae.pt", weights_only=False) for d in ("straight", "killed"))
    assert a["step"] == b["step"] == 4 and torch.equal(a["gen"], b["gen"])
    for k, v in a["vae"].items():
        assert torch.equal(v, b["vae"][k]), k
    torch.manual_seed(0)
    fresh = lt.new_vae().state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in a["vae"].items())        # the steps moved the weights


@pytest.mark.parametrize("args, msg", [
    (["--family", "dit", "--set", "vae=NOPE"], "vae NOPE: not a diffusers model folder (no config.json)"),
    (["--family", "dit", "--set", "vae=V", "--set", "patch_size=16"], "patch_size must divide the latent size 8, got 16"),
    (["--family", "vae", "--set", "cosine=maybe"], "--set 'cosine=maybe': cosine takes true or false"),
    (["--family", "vae", "--steps", "0"], "steps must be >= 1, got 0"),
    (["--family", "vae", "--set", "init_from=NOPE"], "init_from NOPE: not an autoencoder folder"),
])
def test_bad_latent_training_input_exits_2_naming_what_is_wanted(tmp_path, args, msg):
    args = [a.replace("NOPE", str(tmp_path / "nope")).replace("=V", f"={tmp_path}") for a in args]
    r = subprocess.run([sys.executable, "-m", "diffloc", "toy", "train", "--out", str(tmp_path / "o"), *args],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "DIFFLOC_QUIET": "1"})
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert msg.replace("NOPE", str(tmp_path / "nope")) in last, last

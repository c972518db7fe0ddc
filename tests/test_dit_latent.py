"""experiments.dit_latent: its sampler lands on the latent an exact velocity points to, and bad input exits 2."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import torch


def test_sampler_with_the_exact_velocity_decodes_the_renders_own_latent(tmp_path):
    """A denoiser that returns the rectified-flow velocity towards a render's latent, (x_t - z0) / sigma with
    sigma = timestep / 1000, must end exactly on z0: the output equals the VAE's reconstruction of the
    render. Any slip in the timestep scale or in the latent shift/scale breaks the equality."""
    from diffloc_toy import world
    from experiments.dit_latent import LatentDit, new_vae

    torch.manual_seed(0)
    new_vae().save_pretrained(tmp_path / "vae")
    attrs = [dict(object="square", colour="red", style="plain", viewpoint="top", count="two"),
             dict(object="triangle", colour="blue", style="striped", viewpoint="bottom", count="one")]
    renders = world.render_batch(attrs, seed=3)                                   # uint8 [2, 3, 32, 32]
    lat = LatentDit(tmp_path / "vae", renders)
    x = renders.float() / 127.5 - 1
    z0 = lat.latents(x)

    def oracle(xt, encoder_hidden_states, pooled_projections, timestep):
        sigma = (timestep / 1000).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(xt - torch.cat([z0, z0])) / sigma)

    got = lat.sample(oracle, [world.caption(a) for a in attrs], seed=0, steps=7)
    with torch.no_grad():
        ref = (lat.vae.decode(lat.vae.encode(x).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert abs(lat.scale - 1) > 0.05 or abs(lat.shift) > 0.05          # a non-trivial normalisation: the check bites
    torch.testing.assert_close(z0.std(), torch.tensor(1.0), atol=1e-4, rtol=0)   # latents the DiT sees have unit std


def test_bad_input_exits_2_naming_what_is_wanted(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "experiments.dit_latent", *args], capture_output=True, text=True)

    r = run("dit", "--out", str(tmp_path), "--steps", "10", "--vae", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not a diffusers model folder" in r.stderr.strip().splitlines()[-1]
    r = run("dit", "--out", str(tmp_path), "--steps", "10")
    assert r.returncode == 2 and "needs --vae" in r.stderr.strip().splitlines()[-1]
    r = run("ae", "--out", str(tmp_path), "--steps", "0")
    assert r.returncode == 2 and "--steps and --every must be >= 1" in r.stderr.strip().splitlines()[-1]


def test_an_export_samples_with_the_shipped_sampler_as_the_probe_does(tmp_path):
    """``export`` writes a folder load_model opens as a latent toy-dit (vae/ with scaling and shift factors):
    tracing.sampler.generate on it equals the probe's own Euler + CFG + decode loop on the same noise."""
    from diffusers import SD3Transformer2DModel

    from diffloc.tracing.models import load_model
    from diffloc.tracing.sampler import SamplerConfig, generate
    from diffloc_toy import world
    from experiments.dit_latent import LatentDit, export, new_vae

    torch.manual_seed(1)
    new_vae().save_pretrained(tmp_path / "vae")
    attrs = [dict(object="circle", colour="green", style="checkered", viewpoint="middle", count="three")] * 2
    lat = LatentDit(tmp_path / "vae", world.render_batch(attrs, seed=4))
    net = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=8, out_channels=8, num_layers=2, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32,
                                pooled_projection_dim=64, pos_embed_max_size=8, qk_norm="rms_norm").eval()
    model = load_model(str(export(lat, net, tmp_path / "dit", 0)))
    assert model.vae is not None and model.vae.config.scaling_factor == lat.scale
    prompts = [world.caption(attrs[0]), "two red squares at the top on a plain background"]
    noise = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    ref = generate(model, prompts, cfg=SamplerConfig(num_inference_steps=3, guidance_scale=3.0), latents=noise)
    got = lat.sample(net, prompts, seed=0, steps=3, guidance=3.0, noise=noise)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert (got - lat.sample(net, prompts, seed=0, steps=3, guidance=1.0, noise=noise)).abs().max() > 1e-4


def test_encode_images_inverts_decode_and_the_probe_keeps_a_lightly_noised_latent(tmp_path):
    """tracing.sampler.encode_images is decode's inverse on a latent export (decode(encode(x)) is the VAE's
    reconstruction); the denoise probe on that export, started at σ₀ = 0.02, ends within a small distance
    of that reconstruction (a random denoiser can move it only by σ₀ times its velocity)."""
    from diffusers import SD3Transformer2DModel

    from diffloc.tracing.models import load_model
    from diffloc.tracing.sampler import decode, encode_images
    from diffloc_toy import world
    from experiments.dit_denoise_probe import denoise_from
    from experiments.dit_latent import LatentDit, export, new_vae

    torch.manual_seed(2)
    new_vae().save_pretrained(tmp_path / "vae")
    attrs = [dict(object="diamond", colour="yellow", style="striped", viewpoint="top", count="one")] * 2
    renders = world.render_batch(attrs, seed=6)
    lat = LatentDit(tmp_path / "vae", renders)
    net = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=8, out_channels=8, num_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32,
                                pooled_projection_dim=64, pos_embed_max_size=8).eval()
    model = load_model(str(export(lat, net, tmp_path / "dit", 0)))
    images = world.to_float(renders)
    z = encode_images(model, images)
    torch.testing.assert_close(z, lat.latents(images * 2 - 1), atol=1e-5, rtol=0)
    with torch.no_grad():
        recon = (lat.vae.decode(lat.vae.encode(images * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decode(model, z), recon, atol=1e-5, rtol=0)
    prompts = [world.caption(a) for a in attrs]
    near = denoise_from(model, prompts, images * 2 - 1, 0.02, 4, lambda s: 3.0)
    far = denoise_from(model, prompts, images * 2 - 1, 1.0, 4, lambda s: 3.0)
    assert (near - recon).abs().mean() < 0.5 * (far - recon).abs().mean()


def test_an_interrupted_run_resumes_to_the_uninterrupted_runs_weights(tmp_path, monkeypatch):
    """Killed after its checkpoint at step 2 and rerun, a 4-step run ends with the weights, EMA and Adam state of
    one that ran straight through, bit for bit (every draw comes from the generator held in the checkpoint)."""
    import experiments.dit_latent as dl

    torch.set_num_threads(1)
    torch.manual_seed(3)
    dl.new_vae().save_pretrained(tmp_path / "vae")
    monkeypatch.setattr(dl, "score", lambda *a, **k: None)
    monkeypatch.setattr(dl, "export", lambda *a, **k: None)
    kw = dict(vae_dir=str(tmp_path / "vae"), steps=4, every=10, ckpt_every=2, n_images=2000)
    (tmp_path / "a").mkdir(); (tmp_path / "b").mkdir()
    dl.train_latent_dit(tmp_path / "a", **kw)

    real, calls = dl._latent_loss, []

    def dies_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dl, "_latent_loss", dies_at_step_3)
    try:
        dl.train_latent_dit(tmp_path / "b", **kw)
    except KeyboardInterrupt:
        pass
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["step"] == 2
    rerun = []
    monkeypatch.setattr(dl, "_latent_loss", lambda *a, **k: (rerun.append(1), real(*a, **k))[1])
    dl.train_latent_dit(tmp_path / "b", **kw)
    assert len(rerun) == 2                                     # the rerun trained steps 3 and 4 only: it resumed
    a, b = (torch.load(tmp_path / x / "ckpt.pt", weights_only=False) for x in "ab")
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert torch.equal(a["gen"], b["gen"])
    assert float(a["opt"]["state"][0]["step"]) == float(b["opt"]["state"][0]["step"]) == 4      # four Adam steps in both
    for k, v in a["opt"]["state"][0].items():
        assert torch.equal(v, b["opt"]["state"][0][k]), k

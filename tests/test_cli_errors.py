"""Honest errors: input errors are one line with exit code 2; bugs keep their traceback.

Also: ``--debug`` shows the traceback of input errors, no warning is muted for the process,
and ``--help`` texts keep their literal [brackets].
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from diffloc.cli.app import main
from diffloc.tracing.errors import DifflocInputError


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "diffloc", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, msg", [
    (["trace", "--attribute", "colour", "--device", "tpu", "--out", "OUT"], "unknown device 'tpu'; allowed: cpu, cuda, cuda:N, mps"),
    (["trace", "--attribute", "hue", "--out", "OUT"], "unknown attribute 'hue'"),
    (["trace", "--attribute", "colour", "--executor", "spark", "--out", "OUT"], "unknown executor 'spark'; allowed: local, ray"),
    (["trace", "--model", "nope", "--attribute", "colour", "--out", "OUT"], "unknown model spec 'nope'"),
    (["trace", "--attribute", "colour", "--step-window", "5", "--out", "OUT"], "bad step window '5'"),
    (["trace", "--attribute", "colour", "--dtype", "float8", "--out", "OUT"], "unknown dtype 'float8'"),
    (["bench", "trace", "--steps", "0", "--out", "OUT/b.json"], "--steps must be >= 1, got 0"),
    (["bench", "trace", "--model", "random-sd9", "--out", "OUT/b.json"], "unknown model spec 'random-sd9'"),
    (["sites", "--model", "tiny-sd1", "--component", "vae"], "unknown component 'vae'"),
    (["plot", "OUT"], "no trace.parquet in"),
    (["report", "OUT/missing"], "is not a folder"),
    (["evaluate", "--out", "OUT", "--method", "rome"], "unknown method 'rome'"),
    (["trace", "--attribute", "colour", "--component", "unet", "--restore", "suffix", "--out", "OUT"], "a denoiser-only sweep (--component unet) has none"),
    (["trace", "--attribute", "colour", "--restore", "middle", "--out", "OUT"], "unknown --restore 'middle'; allowed: token, suffix, span"),
    (["trace", "--attribute", "style", "--component", "unet", "--method", "crossattn-swap", "--window", "99", "--out", "OUT"],
     "window 99 larger than the"),
    (["trace", "--attribute", "colour", "--until-stable", "1.5", "--out", "OUT"], "--until-stable must be a rank correlation in (0, 1]"),
    (["trace", "--attribute", "colour", "--until-stable", "0", "--out", "OUT"], "--until-stable must be a rank correlation in (0, 1]"),
    (["trace", "--attribute", "colour", "--bootstrap", "0", "--out", "OUT"], "--bootstrap must be >= 1"),
    (["trace", "--attribute", "colour", "--method", "magic", "--out", "OUT"], "unknown trace method 'magic'"),
    (["trace", "--attribute", "colour", "--bogus", "--out", "OUT"], "No such option: --bogus"),
    (["trace", "--attribute", "colour", "--component", "text_encoder", "--restore", "span", "--span-end", "500", "--out", "OUT"],
     "--span-end 500 outside the 77 token positions of this model; allowed: "),
    (["trace", "--attribute", "colour", "--threshold", "nan", "--out", "OUT"], "--threshold must be a finite number, got nan"),
    (["trace", "--attribute", "colour", "--window", "3", "--out", "OUT"], "--window is an option of method crossattn-swap; --method exact has none"),
    (["trace", "--attribute", "colour", "--method", "ig", "--ig-steps", "0", "--out", "OUT"], "--ig-steps must be an integer >= 1, got 0"),
    (["trace", "--attribute", "colour"], "Missing option '--out'"),
    (["evaluate", "--cases", "experiments/cases/toy_edits.jsonl", "--method", "quickfix", "--together", "99", "--out", "OUT"],
     "--together 99 out of range; allowed 1..24"),
    # DiT families: refused before any unit runs (no progress bar, no output folder)
    (["trace", "--model", "tiny-flux", "--attribute", "colour", "--scorer", "toy", "--guidance", "0", "--out", "OUT"],
     "FLUX.1-dev needs a distilled guidance scale > 0 (its pipeline uses 3.5), got 0.0"),
    (["trace", "--model", "tiny-sd3", "--attribute", "colour", "--scorer", "toy", "--guidance", "-1", "--out", "OUT"],
     "guidance_scale must be >= 0, got -1.0"),
    # a head past a DiT block's heads (tiny-sd3: 4 per joint attention; tiny-pixart: 8 per cross-attention)
    (["edit", "--method", "joint-attn", "--model", "tiny-sd3", "--site", "transformer:transformer_blocks.0.attn.heads.9",
      "--source", "red", "--target", "blue", "--out", "OUT"], "head 9 out of range; transformer_blocks.0.attn has heads 0..3"),
    (["edit", "--method", "dit-crossattn", "--model", "tiny-pixart", "--site", "transformer:transformer_blocks.0.attn2.heads.99",
      "--source", "red", "--target", "blue", "--out", "OUT"], "head 99 out of range"),
    # toy-dit training: recipe fields and warm starts
    (["toy", "train", "--family", "dit", "--set", "speed=3", "--out", "OUT"], "--set 'speed=3': expected KEY=VALUE with KEY one of seed,"),
    (["toy", "train", "--family", "dit", "--set", "lr=fast", "--out", "OUT"], "--set 'lr=fast': lr takes a float"),
    (["toy", "train", "--family", "dit", "--set", "uniform_t_share=2", "--out", "OUT"], "uniform_t_share must be in [0, 1], got 2.0"),
    (["toy", "train", "--family", "dit", "--init-from", "OUT/none.pt", "--out", "OUT"], "no such checkpoint"),
    # T5 sites on a CLIP-only model
    (["edit", "--method", "quickfix", "--model", "toy", "--site", "text_encoder:encoder.block.0.layer.0.SelfAttention.o",
      "--source", "red", "--target", "blue", "--out", "OUT"], "not a T5 encoder"),
    (["edit", "--method", "t5-quickfix", "--model", "toy", "--site", "text_encoder_2:encoder.block.0.layer.0.SelfAttention.o",
      "--source", "red", "--target", "blue", "--out", "OUT"], "no component 'text_encoder_2'"),
    (["diagnose", "--model", "toy", "--site", "text_encoder:encoder.block.0.layer.0.SelfAttention.o", "--source", "red",
      "--target", "blue", "--out", "OUT"], "not a T5 encoder"),
])
def test_documented_bad_inputs_are_one_line_with_exit_code_2(tmp_path, args, msg):
    r = _cli(*[a.replace("OUT", str(tmp_path / "out")) for a in args])
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.stderr[-2000:]


def test_flux_schnell_asked_for_guidance_is_one_line(tmp_path):
    """A FLUX.1-schnell folder (no guidance embedding) loads with its pipeline's defaults (4 steps, guidance 0);
    asked for guidance (CFG or embedded) it is one line, exit 2, before any work."""
    import diffusers

    from diffloc.tracing.families.dit_replicas import build_dit_models, dit_replica_configs, with_tokenizers
    from diffloc.tracing.models import load_model

    cfgs = dit_replica_configs("flux")
    cfgs["transformer/config.json"]["guidance_embeds"] = False
    cfgs["scheduler/scheduler_config.json"].update(shift=1.0, use_dynamic_shifting=False)
    folder = tmp_path / "schnell"
    diffusers.FluxPipeline(**with_tokenizers(build_dit_models(cfgs, 0), cfgs)).save_pretrained(folder)
    assert load_model(str(folder)).defaults == {"guidance_scale": 0.0, "num_inference_steps": 4}
    out = tmp_path / "out"
    r = _cli("trace", "--model", str(folder), "--attribute", "colour", "--scorer", "toy", "--guidance", "5", "--out", str(out))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: FLUX.1-schnell has no guidance and FLUX no classifier-free guidance; use guidance_scale 0, got 5.0"], r.stderr[-2000:]
    assert not out.exists(), "refused before the sweep wrote anything"


def test_a_bug_inside_a_command_shows_its_traceback(monkeypatch):
    import diffloc.tracing.models

    def broken(*a, **k):
        return {}["oops"]  # a KeyError: a bug, not bad input

    monkeypatch.setattr(diffloc.tracing.models, "load_model", broken)
    with pytest.raises(KeyError, match="oops"):
        main(["sites", "--model", "toy"])


def test_a_bug_in_a_subprocess_prints_a_traceback_and_exit_code_1(tmp_path):
    code = ("import diffloc.tracing.models as m\n"
            "def broken(*a, **k):\n    raise IndexError('list index out of range (a bug)')\n"
            "m.load_model = broken\n"
            "from diffloc.cli.app import main\nmain(['sites'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and "IndexError" in r.stderr


def test_debug_shows_the_traceback_of_input_errors(tmp_path):
    with pytest.raises(DifflocInputError, match="unknown device 'tpu'"):
        main(["--debug", "trace", "--attribute", "colour", "--device", "tpu", "--out", str(tmp_path / "x")])


def test_no_warning_is_muted_for_the_process():
    """After the CLI ran a command, no filter ignores UserWarning or FutureWarning (all, for every module)."""
    code = ("import warnings\nfrom diffloc.cli.app import main\nmain(['sites', '--model', 'tiny-sd1', '--component', 'unet'])\n"
            "print('MUTED', any(f[0] == 'ignore' and f[2] in (UserWarning, FutureWarning) and f[1] is None and f[3] is None"
            " for f in warnings.filters))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "MUTED False"


@pytest.mark.parametrize("command, literal", [
    (["trace", "--help"], "'a photo of a [red]"),
    (["trace", "--help"], "'diffloc[ray]'"),
    (["edit", "--help"], "'[two] red"),
])
def test_help_keeps_literal_brackets(command, literal):
    r = _cli(*command)
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    assert " ".join(literal.split()) in flat, flat[:3000]

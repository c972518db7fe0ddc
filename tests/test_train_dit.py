"""toy-dit training (``diffloc_toy.train_dit``): a killed run resumes bit-identically, a warm start
really starts from the given checkpoint, and bad options are refused."""
from __future__ import annotations

import json

import pytest
import torch

from diffloc.tracing.errors import ConfigError

TINY = dict(num_layers=1, num_heads=2, head_dim=8, n_images=64, batch=4, warmup=1, ckpt_every=2, export_every=100)


def _train(out, **over):
    from diffloc_toy.paths import MODEL_DIR
    from diffloc_toy.train_dit import DitTrainConfig, train_dit

    with torch.enable_grad():
        return train_dit(out, DitTrainConfig(**{**TINY, **over}), MODEL_DIR)


def _ckpt_hashes(out) -> list[tuple[int, str]]:
    rows = [json.loads(line) for line in (out / "dit_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["sha_ema"]) for r in rows if r.get("event") == "ckpt"]


def test_killed_run_resumes_bit_identically(tmp_path, monkeypatch):
    import diffloc_toy.train_dit as td

    _train(tmp_path / "straight", steps=4)
    calls = {"n": 0}
    real = td.ema_update

    def dies_at_step_3(ema, model, step, decay):
        calls["n"] += 1
        if calls["n"] == 3:                       # after the step-2 checkpoint, before step 3 ends
            raise KeyboardInterrupt
        real(ema, model, step, decay)

    monkeypatch.setattr(td, "ema_update", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", steps=4)
    monkeypatch.setattr(td, "ema_update", real)
    assert _ckpt_hashes(tmp_path / "killed") == _ckpt_hashes(tmp_path / "straight")[:1]
    _train(tmp_path / "killed", steps=4)           # resumes at step 2
    straight, resumed = _ckpt_hashes(tmp_path / "straight"), _ckpt_hashes(tmp_path / "killed")
    assert resumed == straight and len(straight) == 2 and straight[0][1] != straight[1][1]


def test_warm_start_begins_at_the_checkpoint_weights(tmp_path):
    _train(tmp_path / "first", steps=2)
    first = torch.load(tmp_path / "first" / "ckpt" / "dit.pt", weights_only=False)
    _train(tmp_path / "warm", steps=1, lr=0.0, init_from=str(tmp_path / "first" / "ckpt" / "dit.pt"))
    warm = torch.load(tmp_path / "warm" / "ckpt" / "dit.pt", weights_only=False)
    assert warm["step"] == 1
    for k, v in first["model"].items():             # lr 0: the step moved nothing, so the weights are the checkpoint's
        assert torch.equal(warm["model"][k], v), k
    _train(tmp_path / "cold", steps=1, lr=0.0)             # same seed, no warm start
    cold = torch.load(tmp_path / "cold" / "ckpt" / "dit.pt", weights_only=False)
    assert any(not torch.equal(cold["model"][k], v) for k, v in first["model"].items())


def test_warm_start_from_a_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint"):
        _train(tmp_path / "w", steps=1, init_from=str(tmp_path / "nope.pt"))


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_uniform_t_share_outside_0_1_is_refused(share):
    from diffloc_toy.train_dit import DitTrainConfig

    with pytest.raises(ValueError, match="uniform_t_share must be in"):
        DitTrainConfig(uniform_t_share=share)


def test_cli_trains_then_warm_starts_with_recipe_fields(tmp_path):
    from diffloc.cli.app import main

    tiny = ["--set", "n_images=64", "--set", "batch=4", "--set", "num_layers=1", "--set", "num_heads=2", "--set", "head_dim=8"]
    main(["toy", "train", "--family", "dit", "--out", str(tmp_path / "a"), "--steps", "2", *tiny])
    main(["toy", "train", "--family", "dit", "--out", str(tmp_path / "b"), "--steps", "1", *tiny,
          "--init-from", str(tmp_path / "a" / "ckpt" / "dit.pt"), "--set", "lr=2.5e-4"])
    meta = json.loads((tmp_path / "b" / "dit" / "diffloc.json").read_text())["train_config"]
    assert meta["init_from"] == str(tmp_path / "a" / "ckpt" / "dit.pt") and meta["lr"] == 2.5e-4 and meta["num_layers"] == 1


def test_stop_at_ends_a_run_where_the_full_schedule_stood_at_that_step(tmp_path):
    """``stop_at`` (how the shipped toy-dit's last stage was cut) stops after that step on the full schedule's
    learning rates: its checkpoints equal the uninterrupted run's up to that step, and no later step ran."""
    _train(tmp_path / "full", steps=4, ckpt_every=1)
    _train(tmp_path / "cut", steps=4, stop_at=3, ckpt_every=1)
    assert _ckpt_hashes(tmp_path / "cut") == _ckpt_hashes(tmp_path / "full")[:3]
    assert torch.load(tmp_path / "cut" / "ckpt" / "dit.pt", weights_only=False)["step"] == 3
    meta = json.loads((tmp_path / "cut" / "dit" / "diffloc.json").read_text())
    assert meta["steps_trained"] == 3 and meta["train_config"]["stop_at"] == 3
    _train(tmp_path / "short", steps=3, ckpt_every=1)        # a 3-step schedule anneals sooner: step 3 differs
    assert _ckpt_hashes(tmp_path / "short")[:2] == _ckpt_hashes(tmp_path / "cut")[:2]
    assert _ckpt_hashes(tmp_path / "short")[2] != _ckpt_hashes(tmp_path / "cut")[2]

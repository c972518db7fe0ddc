"""Bootstrap intervals, split-half stability and the interval rule of causal_sites.json, on synthetic tables."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from diffloc.tracing.causal import read_causal_sites, site_effects, write_causal_sites
from diffloc.tracing.io import read_json_format
from diffloc.tracing.stable import judge
from diffloc.tracing.stats import SITE_KEYS, bootstrap_effects, real_effects, split_half


def synthetic(effects, n_prompts=3, n_seeds=3, noise=2, seed=0, jitter=0.3, skip=None):
    """A trace table: per pair random clean / corrupted scores, and per site ``effect(pair) + jitter·N(0, 1)``.

    ``effects``: {site name: float or fn(pair index) -> float}; names starting ``unet`` are UNet sites.
    ``skip``: {site name: pair indices without that site's rows}.
    """
    rng = np.random.default_rng(seed)
    recs = []
    for pi, (p, s) in enumerate((p, s) for p in range(n_prompts) for s in range(n_seeds)):
        for ni in range(noise):
            clean, corr = 80 + 10 * rng.random(), 30 + 10 * rng.random()
            base = dict(prompt_index=p, seed=s, noise_index=ni, token=-1, window_start=-1, window_end=-1, method="exact",
                        clip_clean=clean, clip_corrupted=corr)
            for kind, score in (("clean", clean), ("corrupted", corr)):
                recs.append(dict(base, component=kind, kind=kind, site="", layer=-1, token_role="", clip_score=score))
            for j, (name, eff) in enumerate(effects.items()):
                if pi in (skip or {}).get(name, ()):
                    continue
                e = eff(pi) if callable(eff) else eff
                e = e + jitter * rng.normal() if jitter and not callable(eff) else e
                comp = "unet" if name.startswith("unet") else "text_encoder"
                recs.append(dict(base, component=comp, kind="attn", site=f"{comp}:{name}", layer=-1 if comp == "unet" else j,
                                 token_role="" if comp == "unet" else "last_subject", clip_score=corr + e * (clean - corr)))
    t = pd.DataFrame(recs)
    t["effect_clip"] = (t.clip_score - t.clip_corrupted) / (t.clip_clean - t.clip_corrupted)
    return t


def slow_bootstrap(table, metric, n, seed):
    """Independent reference: each resample concatenates the drawn pairs' rows and recomputes site_effects."""
    pairs = sorted(set(zip(table.prompt_index, table.seed)))
    by_pair = {k: g for k, g in table.groupby(["prompt_index", "seed"])}
    draws = np.random.default_rng(seed).integers(0, len(pairs), size=(n, len(pairs)))
    full = site_effects(table, metric).set_index(SITE_KEYS)
    samples = []
    for row in draws:
        sample = pd.concat([by_pair[pairs[i]] for i in row], ignore_index=True)
        samples.append(site_effects(sample, metric).set_index(SITE_KEYS).effect.reindex(full.index))
    boot = pd.concat(samples, axis=1)
    full["lower"] = boot.quantile(0.025, axis=1)
    full["upper"] = boot.quantile(0.975, axis=1)
    return full


EFFECTS = {"unet_a": 0.8, "unet_b": 0.3, "unet_c": 0.05, "enc_0": 0.6, "enc_1": -0.1}


def test_bootstrap_matches_a_slow_reference():
    table = synthetic(EFFECTS, skip={"unet_b": (0, 4)})  # a site some pairs lack
    table.loc[table.index[7::23], "clip_score"] = np.nan  # missing scores: means skip them, as pandas does
    fast = bootstrap_effects(table, "clip", n=200, seed=3).set_index(SITE_KEYS)
    ref = slow_bootstrap(table, "clip", 200, 3)
    assert list(fast.index) == list(ref.index)
    np.testing.assert_allclose(fast.effect, ref.effect, rtol=1e-10)
    np.testing.assert_allclose(fast.lower, ref.lower, rtol=1e-10)
    np.testing.assert_allclose(fast.upper, ref.upper, rtol=1e-10)
    assert (fast.lower < fast.effect).all() and (fast.effect < fast.upper).all()
    assert fast.n_pairs.to_dict()[("unet", "attn", "unet:unet_b", -1, "", -1, -1)] == 7


def test_same_seed_same_numbers_other_seed_other_numbers():
    table = synthetic(EFFECTS)
    a, b = bootstrap_effects(table, "clip", n=300, seed=1), bootstrap_effects(table, "clip", n=300, seed=1)
    pd.testing.assert_frame_equal(a, b)
    c = bootstrap_effects(table, "clip", n=300, seed=2)
    assert not np.allclose(a.lower, c.lower)


def test_identical_effect_across_pairs_has_zero_width():
    table = synthetic({"unet_same": 0.6, "unet_noisy": 0.6}, jitter=0.0)
    table.loc[table.site == "unet:unet_noisy", "clip_score"] += np.random.default_rng(1).normal(size=(table.site == "unet:unet_noisy").sum())
    boot = bootstrap_effects(table, "clip", n=500).set_index("site")
    same = boot.loc["unet:unet_same"]
    assert same.effect == pytest.approx(0.6) and same.lower == same.upper == same.effect
    assert boot.loc["unet:unet_noisy", "upper"] - boot.loc["unet:unet_noisy", "lower"] > 1e-3


def test_one_pair_gives_the_degenerate_interval():
    table = synthetic(EFFECTS, n_prompts=1, n_seeds=1)
    boot = bootstrap_effects(table, "clip", n=100)
    assert (boot.lower == boot.effect).all() and (boot.upper == boot.effect).all()


def test_fast_enough_for_a_thousand_sites():
    table = synthetic({f"unet_{i}": i / 1000 for i in range(1000)}, n_prompts=8, n_seeds=5, noise=1)
    start = time.perf_counter()
    boot = bootstrap_effects(table, "clip", n=1000)
    assert len(boot) == 1000 and time.perf_counter() - start < 3.0


def test_causal_rule_uses_the_interval_lower_bound(tmp_path):
    # wide: mean about 0.6 over pairs, but half the pairs at 0 -> lower bound far below 0.5
    effects = {"unet_wide": lambda pi: 1.2 if pi % 2 else 0.0, "unet_tight": 0.6, "unet_low": 0.3}
    table = synthetic(effects, n_prompts=4, n_seeds=4, jitter=0.0)
    data = write_causal_sites(table, tmp_path / "causal_sites.json", threshold=0.5, bootstrap=500, bootstrap_seed=0)
    boot = bootstrap_effects(table, "clip", n=500, seed=0).set_index("site")
    assert boot.loc["unet:unet_wide", "effect"] >= 0.5 > boot.loc["unet:unet_wide", "lower"]
    assert [e["site"] for e in data["clip"]["causal"]] == ["unet:unet_tight"]
    tight = data["clip"]["causal"][0]
    # 16 prompt x seed pairs x 2 corruption samples = 32 clean/corrupted pairs, all informative (drops of 40-60 points)
    assert tight["interval"] == [0.6, 0.6] and tight["n_pairs"] == 32 and tight["n_informative"] == 32
    on_disk = read_json_format("causal_sites", tmp_path / "causal_sites.json")
    assert on_disk["schema"] == "causal_sites/3" and "lower bound >= threshold" in on_disk["rule"]
    assert on_disk["bootstrap"] == {"n": 500, "seed": 0, "unit": "prompt x seed pair", "level": 0.95, "interval": "percentile"}
    assert on_disk["n_pairs"] == 32 and on_disk["clip"]["split_half"]["n_pairs"] == 16  # split halves: prompt x seed
    assert read_causal_sites(tmp_path, component="unet")[0]["interval"] == [0.6, 0.6]


def test_one_pair_keeps_the_old_rule(tmp_path):
    table = synthetic(EFFECTS, n_prompts=1, n_seeds=1, jitter=0.0)
    data = write_causal_sites(table, tmp_path / "c.json", threshold=0.5, min_informative=1)  # 2 informative pairs, allowed here
    assert {e["site"].split(":")[1] for e in data["clip"]["causal"]} == {"unet_a", "enc_0"}  # effect >= 0.5


def test_version_2_causal_sites_still_read(tmp_path):
    v2 = {"schema": "causal_sites/2", "threshold": 0.5, "metrics": ["clip"], "rule": "causal if effect >= threshold",
          "clip": {"causal": [{"site": "text_encoder:text_model.encoder.layers.0.self_attn.out_proj", "component": "text_encoder",
                               "kind": "attn", "effect": 0.71, "layer": 0, "token_role": "last_subject"}],
                   "n_sites_scored": 9, "stability_spearman": {}}}
    (tmp_path / "causal_sites.json").write_text(json.dumps(v2))
    hits = read_causal_sites(tmp_path, component="text_encoder", kind="attn")
    assert hits == [dict(v2["clip"]["causal"][0], interval=None)]


def test_split_half_known_answers():
    # effects rank the same way in every pair: perfectly stable
    table = synthetic({f"unet_{i}": (lambda pi, i=i: i / 10 + 0.01 * pi) for i in range(6)}, n_prompts=2, n_seeds=3)
    res = split_half(table, "clip")
    assert res["spearman"] == {"unet": 1.0} and res["n_pairs"] == 6 and res["halves"] == [3, 3] and res["n_sites"] == {"unet": 6}
    # pairs alternate (sorted by prompt, seed): seed 0 of each prompt against seed 1, whose ranking is flipped
    # (and weaker, so that halves mixing both seeds would rank like seed 0: +1)
    flip = synthetic({f"unet_{i}": (lambda pi, i=i: i / 5 if pi % 2 == 0 else 0.5 - i / 20) for i in range(6)}, n_prompts=2, n_seeds=2)
    assert split_half(flip, "clip")["spearman"] == {"unet": -1.0}
    # restricted to the sites given
    some = site_effects(table, "clip").iloc[:2]
    res = split_half(table, "clip", sites=some)
    assert res["n_sites"] == {"unet": 2} and res["spearman"] == {"unet": None}
    assert split_half(synthetic(EFFECTS, n_prompts=1, n_seeds=1), "clip")["spearman"]["unet"] is None  # one pair


def test_split_half_agreement_known_answer():
    """Halves that differ by exactly 0.2 at every site: mean |Δ| 0.2, and the causal sets
    {0.55, 0.7, 1.0} against {0.5, 0.8} (threshold 0.5) overlap in 2 of 3; ranks agree fully."""
    base = {"unet_a": 0.3, "unet_b": 0.45, "unet_c": 0.6, "unet_d": 0.9}
    table = synthetic({k: (lambda pi, e=e: e + 0.1 if pi % 2 == 0 else e - 0.1) for k, e in base.items()}, n_prompts=2, n_seeds=2)
    res = split_half(table, "clip", threshold=0.5)
    agree = res["agreement"]["unet"]
    assert res["spearman"] == {"unet": 1.0}
    assert agree["mean_abs_diff"] == pytest.approx(0.2, abs=1e-4)
    assert agree["spread"] == pytest.approx(float(np.std(list(base.values()))), abs=1e-4)
    assert agree["causal_jaccard"] == pytest.approx(2 / 3, abs=1e-4)
    assert split_half(table, "clip", threshold=2.0)["agreement"]["unet"]["causal_jaccard"] is None  # no causal site in either half


def test_real_effects_exclude_zero():
    table = synthetic({"unet_zero": 0.0, "unet_pos": 0.5, "unet_neg": -0.5}, n_prompts=4, n_seeds=3, jitter=0.2)
    real = real_effects(bootstrap_effects(table, "clip", n=500))
    assert set(real.site) == {"unet:unet_pos", "unet:unet_neg"}


def test_judge_needs_every_ranked_component_at_target():
    stable = {f"unet_{i}": (lambda pi, i=i: 0.1 + i / 10 + 0.01 * pi) for i in range(5)}
    assert judge(synthetic(stable, n_prompts=2, n_seeds=2), target=0.9, bootstrap=200)["met"]
    flip = {f"unet_{i}": (lambda pi, i=i: 0.1 + (i / 10 if pi % 2 == 0 else 0.5 - i / 10)) for i in range(5)}
    verdict = judge(synthetic({**stable, **{"enc_" + k: v for k, v in flip.items()}}, n_prompts=2, n_seeds=2), target=0.9, bootstrap=200)
    assert not verdict["met"] and verdict["spearman"]["clip"] == {"text_encoder": -1.0, "unet": 1.0}
    # a component with fewer than three real effects does not hold the verdict
    few = {**stable, "enc_0": 0.0, "enc_1": 0.0}
    assert judge(synthetic(few, n_prompts=2, n_seeds=2, jitter=0.0), target=0.9, bootstrap=200)["met"]

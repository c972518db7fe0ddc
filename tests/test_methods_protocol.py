"""Trace methods declare their options and behaviour; metrics declare their role; rows come from one builder."""
from __future__ import annotations

from dataclasses import fields, is_dataclass

import pytest

from diffloc.tracing.errors import ConfigError, DifflocInputError
from diffloc.tracing.methods import TRACE_METHODS, causal_rows, options_from_config
from diffloc.tracing.metrics import CallableMetric, ClipMetric, scorer_of
from diffloc.tracing.sweep import run_sweep
from diffloc.tracing.trace_config import TraceConfig

PROMPT = "a photo of two [red] circles at the top on a plain background"


@pytest.mark.parametrize("name", ["exact", "atp", "ig", "crossattn-swap"])
def test_every_method_declares_frozen_validated_options_and_its_behaviour(name):
    method = TRACE_METHODS.get(name)
    assert is_dataclass(method.Options) and method.Options.__dataclass_params__.frozen
    opts = method.options(TraceConfig(method=name))
    for f in fields(opts):
        assert f.metadata.get("help"), f"{name}.{f.name} has no CLI help"
    assert isinstance(method.measures, bool) and isinstance(method.skips_rows, bool)
    assert method.followup(TraceConfig(method=name), None, None) == [] or name in ("atp", "ig")
    with pytest.raises(ConfigError, match="has no option"):
        method.options(TraceConfig(method=name, method_options={"bogus": 1}))


@pytest.mark.parametrize("name, opts, msg", [("ig", {"ig_steps": 0}, "--ig-steps must be an integer >= 1"),
                                             ("atp", {"confirm_top": -1}, "--confirm-top must be an integer >= 0"),
                                             ("crossattn-swap", {"swap": "shuffle"}, "unknown --swap 'shuffle'"),
                                             ("crossattn-swap", {"window": 0}, "--window must be an integer >= 1")])
def test_bad_method_options_are_one_line_config_errors(name, opts, msg):
    with pytest.raises(ConfigError, match=msg):
        TRACE_METHODS.get(name).options(TraceConfig(method=name, method_options=opts))


def test_options_of_older_runs_read_from_flat_config_keys():
    swap = TRACE_METHODS.get("crossattn-swap")
    assert options_from_config(swap, {"window": 3, "swap": "remove", "ig_steps": 8}) == swap.Options(window=3, swap="remove")


@pytest.mark.parametrize("field, value", [("threshold", float("nan")), ("noise_scale", float("inf"))])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ConfigError, match="must be a finite number"):
        TraceConfig(**{field: value})


def test_exactly_one_metric_is_the_scorer(scorer):
    extra = CallableMetric("redness", lambda imgs, texts: imgs[:, 0].mean((1, 2)))
    assert scorer_of([extra, ClipMetric(scorer)]).name == "clip"
    with pytest.raises(DifflocInputError, match="exactly one metric of role 'scorer'"):
        scorer_of([extra])
    with pytest.raises(DifflocInputError, match="exactly one metric of role 'scorer'"):
        scorer_of([ClipMetric(scorer), ClipMetric(scorer, name="clip2")])


def test_an_extra_metric_is_a_column_and_clip_stays_the_scorer(tmp_path, pixel_model, scorer):
    mine = CallableMetric("redness", lambda imgs, texts: imgs[:, 0].mean((1, 2)))
    cfg = TraceConfig(model="tiny", attribute="colour", component="denoiser", prompts=(PROMPT,), seeds=(0,), num_inference_steps=2)
    table = run_sweep(cfg, tmp_path, model=pixel_model, scorer=scorer, metrics=[mine])
    assert set(table.scorer) == {scorer.model_id} and "redness_score" in table and "clip_score" in table
    assert len(causal_rows(table)) == len(table)

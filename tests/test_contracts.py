"""The contract batteries of tests/contracts.py applied to every registered executor, trace method, metric,
world, editor and family. The registries are checked to hold exactly the names listed here, so a new
registration without its contract class fails."""
from __future__ import annotations

import pytest

from contracts import (
    ArchitectureContract,
    EditorContract,
    ExecutorContract,
    MetricContract,
    TraceMethodContract,
    WorldContract,
)
from diffloc.tracing.executors import EXECUTORS
from diffloc.tracing.methods import TRACE_METHODS
from diffloc.tracing.metrics import METRICS
from diffloc.tracing.models import load_model
from diffloc.tracing.worlds import WORLDS


@pytest.mark.parametrize("registry, names", [(EXECUTORS, {"local", "ray"}), (TRACE_METHODS, {"exact", "atp", "ig", "crossattn-swap", "attn-contrib"}),
                                             (METRICS, {"clip", "gt"}), (WORLDS, {"sd", "toy"})])
def test_every_registered_name_has_its_contract_class_here(registry, names):
    assert set(registry.names()) == names


class TestLocalExecutor(ExecutorContract):
    executor_name = "local"

    def make_executor(self, **options):
        return EXECUTORS.get("local")(**options)


class TestRayExecutor(ExecutorContract):
    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _ray(cls):
        ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'diffloc[ray]'")
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        if started:
            ray.shutdown()

    executor_name = "ray"

    def make_executor(self, **options):
        return EXECUTORS.get("ray")(num_workers=2, **options)


TEXT = {"component": "text_encoder", "text_kinds": ("hidden",)}


class TestExactMethod(TraceMethodContract):
    method_name = "exact"
    config = TEXT


class TestAtpMethod(TraceMethodContract):
    method_name = "atp"
    config = TEXT


class TestIgMethod(TraceMethodContract):
    method_name = "ig"
    config = TEXT


class TestCrossattnSwapMethod(TraceMethodContract):
    method_name = "crossattn-swap"
    config = {"component": "denoiser"}


class TestAttnContribMethod(TraceMethodContract):
    method_name = "attn-contrib"
    config = {"component": "denoiser"}


class TestClipMetric(MetricContract):
    metric_name = "clip"


class TestGroundTruthMetric(MetricContract):
    metric_name = "gt"  # the tiny model is of the toy world, which has readers


class TestSDWorld(WorldContract):
    world_name = "sd"


class TestToyWorld(WorldContract):
    world_name = "toy"

    def render(self, caption: str):
        from diffloc_toy import world

        return world.render(world.parse_caption(caption), seed=0)


class TestQuickfixContract(EditorContract):
    editor_name = "quickfix"


class TestCrossattnContract(EditorContract):
    editor_name = "crossattn"


class TestRefactContract(EditorContract):
    editor_name = "refact"
    options = {"layer": 0, "corpus": ["a photo of a red circle", "two green squares at the top", "a blue triangle"] * 4,
               "contrastive": ["two green squares at the top"], "max_steps": 3}


class TestSD1Family(ArchitectureContract):
    def make_model(self):
        return load_model("tiny-sd1")


class TestSD2Family(ArchitectureContract):
    def make_model(self):
        return load_model("tiny-sd2")


class TestSDXLFamily(ArchitectureContract):
    def make_model(self):
        return load_model("tiny-sdxl")


class TestToyShapedFamily(ArchitectureContract):
    def make_model(self):
        from diffloc.tracing.testing import tiny_pixel_model

        return tiny_pixel_model(0)

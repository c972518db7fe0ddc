"""The contract batteries of tests/contracts.py applied to every built-in executor, editor and family."""
from __future__ import annotations

import pytest

from contracts import ArchitectureContract, EditorContract, ExecutorContract
from diffloc.tracing.executors import EXECUTORS
from diffloc.tracing.models import load_model


class TestLocalExecutor(ExecutorContract):
    def make_executor(self):
        return EXECUTORS.get("local")()


class TestRayExecutor(ExecutorContract):
    @pytest.fixture(autouse=True, scope="class")
    def _ray(self):
        ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'diffloc[ray]'")
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        if started:
            ray.shutdown()

    def make_executor(self):
        return EXECUTORS.get("ray")(num_workers=2)


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

"""Shared fixtures: small random models with Stable Diffusion's module names; the ``slow`` marker.

The builders live in ``tracing.testing`` so that other processes (Ray workers) can import them
and rebuild the same weights.

``slow`` (registered in pyproject's ``[tool.pytest.ini_options]``): tests that take more than a
few seconds on 2 CPU cores. ``make test`` runs them all; ``pytest -m "not slow"`` is the quick
loop while editing. A test is slow when it carries ``@pytest.mark.slow`` itself or its node id
starts with an entry of :data:`SLOW` (whole modules whose every test starts Ray, trains a model,
renders in a browser or runs several sweeps; the list is kept here so that no other file changes
to mark them; the durations of ``pytest --durations=30`` decide what belongs in it).
"""
from __future__ import annotations

import pytest
import torch

from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer  # noqa: F401  (re-exported for tests)

SLOW = (
    "tests/test_ray.py",                              # a local Ray cluster per test, workers rebuilding models
    "tests/test_toy_train.py",                        # trains tiny toy models, twice for reproducibility
    "tests/test_report.py",                           # sweeps, then headless Chromium
    "tests/test_stable.py",                           # several rounds of sweeps until stable
    "tests/test_contracts.py::TestRayExecutor",       # a local Ray cluster
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pixel_model():
    return tiny_pixel_model()


@pytest.fixture(scope="session")
def scorer():
    return tiny_scorer()


# Tiny models are overhead-bound: one thread avoids oversubscription when the machine is busy.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray():
    """A Ray runtime of two CPUs for the executor tests of one module."""
    ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'diffloc[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

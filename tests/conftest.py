"""Shared fixtures: small random models with Stable Diffusion's module names.

The builders live in ``tracing.testing`` so that other processes (Ray workers) can import them
and rebuild the same weights.
"""
from __future__ import annotations

import pytest
import torch

from diffloc.tracing.testing import tiny_pixel_model, tiny_scorer  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session")
def pixel_model():
    return tiny_pixel_model()


@pytest.fixture(scope="session")
def scorer():
    return tiny_scorer()


# Tiny models are overhead-bound: one thread avoids oversubscription when the machine is busy.
torch.set_num_threads(1)

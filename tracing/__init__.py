"""diffloc's tracing package: sites, hooks, model loading, the patched sampler and sweeps.

Usage::

    from diffloc.tracing import load_model, Site
    model = load_model("toy")
"""
from .sites import Site, SiteError, SiteTable  # noqa: F401


def load_model(spec, dtype="float32", device="cpu"):
    """Load a model spec (``toy``, replica, folder, file or hub id); see :mod:`tracing.models`."""
    from .models import load_model as _load

    return _load(spec, dtype=dtype, device=device)




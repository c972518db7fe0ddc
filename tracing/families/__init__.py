"""Architecture families as objects: what differs between SD 1.x, SDXL, the toy world and a DiT.

Usage::

    family = FAMILIES.get("sdxl")              # a registered Family object
    family.denoiser                            # the denoiser's component name, as the family's pipeline folder spells it
    fam = detect(denoiser_config, {"text_encoder": cfg})   # the family whose structure matches
    table = fam.site_table(denoiser_config, text_configs)
    cond = fam.encode(model, ids, hook_fns)    # Conditioning: embeds [B, T, D] (+ pooled, mask)
    eps = fam.denoise(model, x, t, cond)       # one denoiser call

A family owns, for its architecture: the denoiser's component name, how prompts become
conditioning (which encoders, concatenation, pooled vectors, masks, the unconditional
input), the denoiser call, the scheduler's initial noise and guidance policy, and the site
table from the configs. The sampler, sweeps, screens, swaps, editors and plots ask the family;
none of them names a denoiser. A new architecture is one new :class:`Family` object registered
here plus its site table and contract tests (``tests/contracts.py::FamilyContract``).

Detection is by structure, never by width, so tiny replicas fall in with their family.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..registry import Registry
from .base import Conditioning, Family, PromptReader, cfg_get  # noqa: F401  (the family API)


def _builtin(reg: Registry) -> None:
    from .dit import SD3, TOY_DIT
    from .flux import FLUX
    from .pixart import PIXART
    from .unet import UNET_FAMILIES

    for fam in (*UNET_FAMILIES, SD3, TOY_DIT, FLUX, PIXART):
        reg.register(fam.name, fam)


FAMILIES: Registry[Family] = Registry("architecture family", loader=_builtin)


def detect(denoiser_config: Any, text_configs: Mapping[str, Any]) -> Family:
    """The registered family whose structure matches; the toy family is the fallback for small
    unmatched UNets (its ``matches`` says so). Raises ValueError naming the nearest family."""
    candidates = [FAMILIES.get(n) for n in FAMILIES.names()]
    for fam in sorted(candidates, key=lambda f: getattr(f, "fallback", False)):
        if fam.matches(denoiser_config, text_configs):
            return fam
    explain = [getattr(f, "mismatch", lambda *a: None)(denoiser_config, text_configs) for f in candidates]
    raise ValueError(f"unknown architecture: {'; '.join(e for e in explain if e) or 'no family matches its configs'}")


def denoiser_slots() -> tuple[str, ...]:
    """The pipeline component names that registered families denoise with (``unet``, ``transformer``)."""
    return tuple(dict.fromkeys(FAMILIES.get(n).denoiser for n in FAMILIES.names()))

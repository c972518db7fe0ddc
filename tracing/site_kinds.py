"""The kinds of DiT and T5 sites, from their module paths alone (core; imports nothing of diffloc).

Usage::

    dit_kind("transformer_blocks.3.attn.to_add_out")       # 'attn_text'
    t5_kind("encoder.block.2.layer.1.DenseReluDense.wo")   # 'mlp'

:func:`diffloc.tracing.sites.site_kind` asks these for DiT and T5 paths; the site tables that
list such sites live in :mod:`diffloc.tracing.families.dit_sites`.
"""
from __future__ import annotations

import re

HEAD = r"\.heads\.(\d+)"            # a head site's suffix
T5_LAYER = r"encoder\.block\.(\d+)"  # one T5 encoder block


def t5_kind(p: str) -> str:
    for kind, tail in (("hidden", ""), ("attn", r"\.layer\.0\.SelfAttention\.o"), ("mlp", r"\.layer\.1\.DenseReluDense\.wo"),
                       ("attn_head", r"\.layer\.0\.SelfAttention" + HEAD)):
        if re.fullmatch(T5_LAYER + tail, p):
            return kind
    return "other"


def dit_kind(p: str) -> str | None:
    """Kinds of MM-DiT / FLUX sites (PixArt's attn1/attn2/ff fall through to the UNet rules)."""
    rules = ((r"transformer_blocks\.\d+\.attn" + HEAD, "joint_head"), (r"single_transformer_blocks\.\d+\.attn" + HEAD, "single_head"),
             (r"transformer_blocks\.\d+\.attn\.to_out\.0", "attn_image"), (r"transformer_blocks\.\d+\.attn\.to_add_out", "attn_text"),
             (r"transformer_blocks\.\d+\.ff_context", "ff_context"), (r"single_transformer_blocks\.\d+\.attn", "attn_single"),
             (r"transformer_blocks\.\d+\.attn\.txt2img", "txt2img"), (r"time_text_embed", "pooled"))
    for pattern, kind in rules:
        if re.fullmatch(pattern, p):
            return kind
    return None

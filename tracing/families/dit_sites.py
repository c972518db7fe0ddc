"""Site tables of diffusion transformers (SD3 / toy-dit MM-DiT, FLUX, PixArt) and their text encoders.

Usage::

    table = dit_site_table("sd3", transformer.config, {"text_encoder": c1, "text_encoder_2": c2,
                           "text_encoder_3": t5}, walk=mmdit_walk, prefixes={"text_encoder": "text_model."})
    table.denoiser[:6]   # transformer_blocks.0.attn.to_out.0, .attn.to_add_out, .ff, .ff_context, @text, @image

Sites come from the configs alone, in execution order (checked against a hooked forward pass in
``tests/test_dit_families.py``). SD3 and FLUX start with ``time_text_embed`` (kind ``pooled``:
timestep + pooled text, the adaLN input of every block; restoring it restores the pooled path).
Per joint block ``N`` (SD3 ``JointTransformerBlock``, FLUX
``FluxTransformerBlock``): ``attn.to_out.0`` (image-stream attention output) and
``attn.to_add_out`` (text stream; absent in SD3's last block, ``context_pre_only``) in the order
the processors run them (SD3: text first; FLUX: image first), then ``ff``,
``ff_context``, then the block's two output streams ``transformer_blocks.N@text`` and
``@image`` (one hook call, tuple order). FLUX single-stream block ``N``: ``attn`` then
``@text``, ``@image``. PixArt block ``N``: ``attn1``, ``attn2``, ``ff``. Stream sites are
spelled and hooked as :mod:`tracing.sites` describes.

Kinds: ``pooled``, ``attn_image`` (``attn.to_out.0``), ``attn_text`` (``attn.to_add_out``), ``ff``,
``ff_context``, ``out_image`` / ``out_text`` (stream sites), ``attn_single`` (FLUX single-stream
``attn``: text + image tokens before ``proj_out``), PixArt ``attn1`` / ``attn2`` / ``ff``. Heads:
joint ``transformer_blocks.N.attn.heads.H`` (``joint_head``, slices of ``to_out.0``'s input, the
image queries); single-stream ``single_transformer_blocks.N.attn.heads.H`` (``single_head``,
slices of ``proj_out``'s input, whose first heads * head_dim columns are the attention output);
T5 ``encoder.block.N.layer.0.SelfAttention.heads.H`` (``attn_head``, input of ``SelfAttention.o``).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

from ..site_kinds import dit_kind, t5_kind  # noqa: F401  (re-exported: the kinds of these sites)
from ..sites import Site, SiteTable
from .base import cfg_get

Walk = Callable[[Any, str], list[tuple[Site, int]]]


def t5_layer_sites(component: str, layer: int) -> dict[str, Site]:
    """The three traced sites of one T5 encoder block (``SiteTable.text_paths`` for T5 components)."""
    base = f"encoder.block.{layer}"
    return {"hidden": Site(component, base), "attn": Site(component, f"{base}.layer.0.SelfAttention.o"),
            "mlp": Site(component, f"{base}.layer.1.DenseReluDense.wo")}


def is_t5(config: Any) -> bool:
    """A T5 encoder config (``d_model``/``num_heads``), not a CLIP text config."""
    return cfg_get(config, "d_model") is not None and cfg_get(config, "num_heads") is not None


def clip_layer_sites(component: str, prefix: str, layer: int) -> dict[str, Site]:
    """hidden / attn / mlp sites of one CLIP layer under ``prefix`` ('' or 'text_model.')."""
    base = f"{prefix}encoder.layers.{layer}"
    return {"hidden": Site(component, base), "attn": Site(component, f"{base}.self_attn.out_proj"),
            "mlp": Site(component, f"{base}.mlp.fc2")}


def _heads(config: Any) -> int:
    return int(cfg_get(config, "num_attention_heads"))


def mmdit_walk(config: Any, comp: str) -> list[tuple[Site, int]]:
    """(site, heads) of an SD3Transformer2DModel in execution order (heads 0: not an attention)."""
    n, heads, out = int(cfg_get(config, "num_layers")), _heads(config), [(Site(comp, "time_text_embed"), 0)]
    for b in range(n):
        last = b == n - 1  # context_pre_only: no text-stream output projection, ff_context or text stream
        out.append((Site(comp, f"transformer_blocks.{b}.attn"), heads))
        if not last:  # diffusers' JointAttnProcessor2_0 projects the text stream first
            out += [(Site(comp, f"transformer_blocks.{b}.attn.to_add_out"), 0)]
        out.append((Site(comp, f"transformer_blocks.{b}.attn.to_out.0"), 0))
        out.append((Site(comp, f"transformer_blocks.{b}.ff"), 0))
        if not last:
            out += [(Site(comp, f"transformer_blocks.{b}.ff_context"), 0), (Site(comp, f"transformer_blocks.{b}@text"), 0)]
        out.append((Site(comp, f"transformer_blocks.{b}@image"), 0))
    return out


def flux_walk(config: Any, comp: str) -> list[tuple[Site, int]]:
    """(site, heads) of a FluxTransformer2DModel: 19 double- then 38 single-stream blocks (published)."""
    heads, out = _heads(config), [(Site(comp, "time_text_embed"), 0)]
    for b in range(int(cfg_get(config, "num_layers"))):
        p = f"transformer_blocks.{b}"
        out.append((Site(comp, f"{p}.attn"), heads))
        out += [(Site(comp, f"{p}.{s}"), 0) for s in ("attn.to_out.0", "attn.to_add_out", "ff", "ff_context")]
        out += [(Site(comp, f"{p}@text"), 0), (Site(comp, f"{p}@image"), 0)]
    for b in range(int(cfg_get(config, "num_single_layers"))):
        p = f"single_transformer_blocks.{b}"
        out += [(Site(comp, f"{p}.attn"), heads), (Site(comp, f"{p}@text"), 0), (Site(comp, f"{p}@image"), 0)]
    return out


def pixart_walk(config: Any, comp: str) -> list[tuple[Site, int]]:
    """(site, heads) of a PixArtTransformer2DModel: per block attn1, attn2, ff."""
    heads = _heads(config)
    return [(Site(comp, f"transformer_blocks.{b}.{k}"), 0 if k == "ff" else heads)
            for b in range(int(cfg_get(config, "num_layers"))) for k in ("attn1", "attn2", "ff")]


def dit_site_table(arch: str, denoiser_config: Any, text_configs: Mapping[str, Any], walk: Walk,
                   prefixes: Mapping[str, str] | None = None, denoiser: str = "transformer",
                   extra: tuple[str, ...] = ()) -> SiteTable:
    """The SiteTable of a DiT: text layers (CLIP under ``prefixes[component]``, or T5), denoiser sites
    from ``walk`` (joint-attention modules ``...attn`` carry the heads but are not sites themselves:
    their outputs are tuples; ``to_out.0`` / ``to_add_out`` are), and ``extra`` denoiser paths."""
    layers, heads, paths = {}, {}, {}
    for comp, cfg in sorted(text_configs.items()):
        if is_t5(cfg):
            layers[comp], heads[comp], paths[comp] = int(cfg_get(cfg, "num_layers")), int(cfg_get(cfg, "num_heads")), partial(t5_layer_sites, comp)
        else:
            layers[comp], heads[comp] = int(cfg_get(cfg, "num_hidden_layers")), _heads(cfg)
            paths[comp] = partial(clip_layer_sites, comp, (prefixes or {}).get(comp, ""))
    walked = walk(denoiser_config, denoiser)
    joint = {s for s, h in walked if h and s.path.endswith(".attn") and s.path.startswith("transformer_blocks")}
    sites = tuple(s for s, _ in walked if s not in joint)
    return SiteTable(arch=arch, text_layers=layers, denoiser=sites, extra=tuple(Site(denoiser, p) for p in extra),
                     text_heads=heads, denoiser_heads={s: h for s, h in walked if h}, denoiser_component=denoiser,
                     text_paths=paths)

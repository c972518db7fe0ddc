"""Sites: one spelling for every place in a model.

Usage::

    site = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")
    str(site)            # 'text_encoder:encoder.layers.0.self_attn.out_proj'
    table = site_table(unet.config, text_encoder.config)
    table.unet           # UNet sites in execution order
    table.text_layer(0)  # {'hidden': Site, 'attn': Site, 'mlp': Site}

A site's string form is ``<component>:<named_modules path>``. The same string is used in
configs, result rows, figures and edit records. Text-encoder sites per layer ``N``:

- ``hidden``: ``encoder.layers.N`` (the residual stream after layer N),
- ``attn``:   ``encoder.layers.N.self_attn.out_proj`` (self-attention output; also the
  weight that Diff-QuickFix edits),
- ``mlp``:    ``encoder.layers.N.mlp.fc2`` (MLP output; also the weight ReFACT edits).

(SDXL's ``text_encoder_2`` is a CLIPTextModelWithProjection: its paths start ``text_model.``.)

T5 encoders have the same kinds per block N (``SiteTable.text_paths``; see ``families/dit_sites.py``).

So a causal state found by tracing *is* the site an editor writes: no translation step.
UNet sites are every ResNet, self-attention (``attn1``), cross-attention (``attn2``) and
feed-forward (``ff``) block, in execution order, derived from the UNet config.

Diffusion transformers. A DiT block returns two streams, ``(encoder_hidden_states,
hidden_states)``; a *stream site* names one element of that tuple output with a suffix,
``<block path>@text`` (element 0) or ``<block path>@image`` (element 1)::

    transformer:transformer_blocks.3@image          # image stream after joint block 3 (SD3, FLUX)
    transformer:single_transformer_blocks.0@text    # FLUX single-stream block 0, text tokens

Hooks there see and may replace that one tensor ``[B, T, D]``; ``site.stream`` is 'text' /
'image' / None. Other DiT sites, kinds and heads: :mod:`tracing.families.dit_sites`.

Head sites: ``<attention module path>.heads.H`` names head ``H`` of one attention layer::

    text_encoder:encoder.layers.0.self_attn.heads.3
    unet:down_blocks.1.attentions.0.transformer_blocks.0.attn2.heads.2
    table.heads()        # every head site: text self-attention per layer, then UNet attn1/attn2

A head's activation is its slice of the *input* of the attention's output projection
(``self_attn.out_proj`` in CLIP, ``attn1/attn2.to_out.0`` in diffusers), ``[B, T, head_dim]``
(T: tokens in the text encoder, spatial positions in the UNet): the per-head attention output
before the heads are mixed. ``site.head`` is H (None for other sites), ``site.attn_path`` the
attention module's path, and ``site.module_path`` the path of the module that holds the
activation (the output projection for a head site; the path itself otherwise). Kinds of head
sites: ``attn_head`` (text encoder), ``attn1_head`` / ``attn2_head`` (UNet); the kinds of other
sites are unchanged. Head counts come from the configs exactly as the libraries build the
modules: CLIP's ``num_attention_heads``; in diffusers' UNet the number of heads per block is
``num_attention_heads or attention_head_dim`` (the config key is misnamed: for SD 1.x, 2.x and
XL alike it holds the number of heads, e.g. 8 for SD 1.x, [5, 10, 20, 20] for SD 2.x, i.e. 64
channels per head there), the mid block takes the last block's, the up blocks the reversed list;
head_dim = the block's channels / heads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# Where the CLIP text transformer sits inside each text component. Pipelines hold
# ``text_encoder_2`` as a CLIPTextModelWithProjection, which (transformers 5 too) wraps its
# CLIPTextModel as ``.text_model``; CLIPTextModel itself has no such prefix any more.
TEXT_PREFIX = {"text_encoder": "", "text_encoder_2": "text_model."}
_TEXT_LAYER = r"(?:text_model\.)?encoder\.layers\.(\d+)"
TEXT_KINDS = ("hidden", "attn", "mlp")
UNET_KINDS = ("resnet", "attn1", "attn2", "ff")
HEAD_KINDS = ("attn_head", "attn1_head", "attn2_head")
from .site_kinds import HEAD as _HEAD  # noqa: E402
from .site_kinds import T5_LAYER as _T5_LAYER  # noqa: E402
from .site_kinds import dit_kind, t5_kind  # noqa: E402

_STREAM = r"@(text|image)"
# The tuple index of each stream in a DiT block's output (encoder_hidden_states, hidden_states).
STREAMS = {"text": 0, "image": 1}
DIT_KINDS = ("pooled", "attn_image", "attn_text", "ff", "ff_context", "out_image", "out_text", "attn_single")
# The module whose input holds the heads, relative to the attention module.
_HEAD_INPUT = {"text": "out_proj", "denoiser": "to_out.0"}


class SiteError(LookupError):
    """A site string that is malformed or names no module of the model."""


@dataclass(frozen=True, order=True)
class Site:
    """A named place in a model: a component and its ``named_modules()`` path."""

    component: str
    path: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.component):  # a pipeline component name; the model checks it exists
            raise SiteError(f"bad component {self.component!r} in site {self.component}:{self.path}; "
                            "expected a pipeline component name such as text_encoder")
        if not self.path or not re.fullmatch(r"[A-Za-z0-9_.]+(" + _STREAM + ")?", self.path):
            raise SiteError(f"bad module path {self.path!r}; expected a dotted named_modules() path, "
                            "optionally ending in @text or @image (one stream of a DiT block)")

    @classmethod
    def parse(cls, text: str) -> "Site":
        """Parse ``component:path``; raises :class:`SiteError` with the allowed form."""
        if isinstance(text, Site):
            return text
        if ":" not in text:
            raise SiteError(f"bad site {text!r}; expected '<component>:<module path>', "
                            f"e.g. 'text_encoder:encoder.layers.0.self_attn.out_proj'")
        component, path = text.split(":", 1)
        return cls(component.strip(), path.strip())

    def __str__(self) -> str:
        return f"{self.component}:{self.path}"

    @property
    def is_text(self) -> bool:
        """A text-encoder site (restored at token positions); otherwise a denoiser site (at steps)."""
        return self.component.startswith("text_encoder")

    @property
    def kind(self) -> str:
        """hidden/attn/mlp/attn_head (text encoder), resnet/attn1/attn2/ff/attn1_head/attn2_head (UNet), a DiT kind, or 'other'."""
        return site_kind(self)

    @property
    def layer(self) -> int | None:
        """Text-encoder layer index, or None for UNet and other sites."""
        m = re.match(_TEXT_LAYER + r"(\.|$)", self.path) or re.match(_T5_LAYER + r"(\.|$)", self.path)
        return int(m.group(1)) if m and self.component.startswith("text_encoder") else None

    @property
    def stream(self) -> str | None:
        """'text' or 'image' for a DiT block's stream site (``...@text``), else None."""
        return (re.findall(_STREAM + "$", self.path) or [None])[0]

    @property
    def head(self) -> int | None:
        """Head index of a head site (``...heads.H``), else None."""
        m = re.search(_HEAD + "$", self.path)
        return int(m.group(1)) if m else None

    @property
    def attn_path(self) -> str:
        """A head site's attention module path (the path without ``.heads.H``); else the path."""
        return re.sub(_HEAD + "$", "", self.path)

    @property
    def module_path(self) -> str:
        """The module that holds the site's activation: a head site's output projection, else the path."""
        if self.head is None:
            return re.sub(_STREAM + "$", "", self.path)
        if self.attn_path.endswith(".SelfAttention"):  # T5
            return f"{self.attn_path}.o"
        if re.fullmatch(r"single_transformer_blocks\.\d+\.attn", self.attn_path):  # FLUX: no to_out
            return self.attn_path.removesuffix(".attn") + ".proj_out"
        return f"{self.attn_path}.{_HEAD_INPUT['text' if self.is_text else 'denoiser']}"

    @property
    def block(self) -> str:
        """The UNet block a site sits in (``down_blocks.1``, ``mid_block``, ``up_blocks.2``)."""
        m = re.match(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block|(?:single_)?transformer_blocks\.\d+)", self.path)
        return m.group(1) if m else self.path.split(".")[0]


def site_kind(site: Site) -> str:

    p = site.path
    if site.component.startswith("text_encoder"):
        if re.fullmatch(_TEXT_LAYER + r"\.self_attn" + _HEAD, p):
            return "attn_head"
        if re.fullmatch(_TEXT_LAYER, p):
            return "hidden"
        if re.fullmatch(_TEXT_LAYER + r"\.self_attn\.out_proj", p):
            return "attn"
        if re.fullmatch(_TEXT_LAYER + r"\.mlp\.fc2", p):
            return "mlp"
        return t5_kind(p)
    if site.stream is not None:
        return "out_" + site.stream
    dit = dit_kind(p)
    if dit:
        return dit
    if re.search(r"\.attn[12]" + _HEAD + "$", p):
        return p.rsplit(".", 3)[1] + "_head"
    for kind in ("attn1", "attn2", "ff"):
        if p.endswith("." + kind):
            return kind
    if re.search(r"\.resnets\.\d+$", p):
        return "resnet"
    return "other"


def text_layer_sites(component: str, layer: int) -> dict[str, Site]:
    """The three traced sites of one text-encoder layer."""
    base = f"{TEXT_PREFIX[component]}encoder.layers.{layer}"
    return {
        "hidden": Site(component, base),
        "attn": Site(component, f"{base}.self_attn.out_proj"),
        "mlp": Site(component, f"{base}.mlp.fc2"),
    }


def _per_block(value: Any, n_blocks: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n_blocks
    return list(value)


def unet_sites(config: Mapping[str, Any], component: str) -> list[Site]:
    """Every ResNet, attn1, attn2 and ff block of a UNet2DConditionModel, in execution order.

    Derived from the config alone (block types, ``layers_per_block``,
    ``transformer_layers_per_block``), so a table can be checked against a module tree.
    """
    return [site for site, _ in _unet_walk(config, component)]


def unet_heads(config: Mapping[str, Any], component: str) -> dict[Site, int]:
    """Number of heads of every UNet attn1 / attn2 site, in execution order (see the module docstring)."""
    return {site: n for site, n in _unet_walk(config, component) if n}


def _unet_walk(config: Mapping[str, Any], component: str) -> list[tuple[Site, int]]:
    """(site, heads) in execution order; heads is 0 for sites that are not attention."""
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    n = len(down_types)
    layers = _per_block(config.get("layers_per_block", 2), n)
    depth = _per_block(config.get("transformer_layers_per_block", 1) or 1, n)
    # diffusers: num_attention_heads = num_attention_heads or attention_head_dim (a misnamed key)
    heads = _per_block(config.get("num_attention_heads") or config.get("attention_head_dim", 8), n)
    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    sites: list[tuple[Site, int]] = []

    def transformer(prefix: str, n_layers: int, n_heads: int) -> None:
        for t in range(n_layers):
            for kind in ("attn1", "attn2", "ff"):
                sites.append((Site(component, f"{prefix}.transformer_blocks.{t}.{kind}"), 0 if kind == "ff" else int(n_heads)))

    def depth_at(d: Any, i: int) -> int:
        return d if isinstance(d, int) else int(d[i])

    for b, kind in enumerate(down_types):
        for i in range(layers[b]):
            sites.append((Site(component, f"down_blocks.{b}.resnets.{i}"), 0))
            if "CrossAttn" in kind:
                transformer(f"down_blocks.{b}.attentions.{i}", depth_at(depth[b], i), heads[b])
    if mid_type is not None:
        sites.append((Site(component, "mid_block.resnets.0"), 0))
        if "CrossAttn" in mid_type:
            transformer("mid_block.attentions.0", depth_at(depth[-1], -1), heads[-1])
        sites.append((Site(component, "mid_block.resnets.1"), 0))
    rev_layers = list(reversed(layers))
    rev = config.get("reverse_transformer_layers_per_block")
    rev_depth = list(rev) if rev else list(reversed(depth))
    rev_heads = list(reversed(heads))
    for b, kind in enumerate(up_types):
        for i in range(rev_layers[b] + 1):
            sites.append((Site(component, f"up_blocks.{b}.resnets.{i}"), 0))
            if "CrossAttn" in kind:
                transformer(f"up_blocks.{b}.attentions.{i}", depth_at(rev_depth[b], i), rev_heads[b])
    return sites


def head_sites(site: Site, n_heads: int) -> list[Site]:
    """The head sites of one attention site: a text ``attn`` site (``...self_attn.out_proj``),
    a ``...self_attn`` path, or a UNet attn1 / attn2 site."""
    base = re.sub(r"\.(out_proj|o)$", "", site.path)
    return [Site(site.component, f"{base}.heads.{h}") for h in range(n_heads)]


@dataclass(frozen=True)
class SiteTable:
    """The sites tracing sweeps over, for one model.

    ``text_layers[component]`` counts layers of {hidden, attn, mlp}; ``denoiser`` lists the
    denoiser's sites (UNet or DiT blocks) in execution order, under ``denoiser_component``.
    """

    arch: str
    text_layers: Mapping[str, int]
    denoiser: tuple[Site, ...]
    extra: tuple[Site, ...] = field(default=())
    text_heads: Mapping[str, int] = field(default_factory=dict)       # component -> heads per layer
    denoiser_heads: Mapping[Site, int] = field(default_factory=dict)  # attention site -> heads
    denoiser_component: str = ""
    text_paths: Mapping[str, Any] = field(default_factory=dict)       # component -> layer sites fn (T5 etc.)

    @property
    def text_components(self) -> tuple[str, ...]:
        return tuple(self.text_layers)

    def text_layer(self, layer: int, component: str = "text_encoder") -> dict[str, Site]:
        n = self.text_layers.get(component)
        if n is None:
            raise SiteError(f"no text component {component!r}; this model has {', '.join(self.text_layers)}")
        if not 0 <= layer < n:
            raise SiteError(f"text-encoder layer {layer} out of range; allowed 0..{n - 1}")
        return self.text_paths[component](layer) if component in self.text_paths else text_layer_sites(component, layer)

    def text_sites(self, component: str = "text_encoder") -> list[Site]:
        n = self.text_layers.get(component, 0)
        return [s for layer in range(n) for s in self.text_layer(layer, component).values()]

    def heads_of(self, site: Site) -> list[Site]:
        """Head sites of a text ``attn`` site, a denoiser attention or the projection whose input holds its heads; [] if none."""
        if not site.is_text:  # a DiT joint attention is no site itself: its ...attn.to_out.0, which holds the heads, is
            held = [a for a in self.denoiser_heads if a == site or head_sites(a, 1)[0].module_path == site.path]
            return head_sites(held[0], self.denoiser_heads[held[0]]) if held else []
        if site.kind != "attn" or site.component not in self.text_heads:
            return []
        return head_sites(site, self.text_heads[site.component])

    def heads(self, component: str | None = None) -> list[Site]:
        """Every head site (of one component, or all: text encoders by layer, then the denoiser in execution order)."""
        out: list[Site] = []
        for comp, n in self.text_layers.items():
            if component in (None, comp):
                out += [h for layer in range(n) for h in self.heads_of(self.text_layer(layer, comp)["attn"])]
        if component in (None, self.denoiser_component):
            out += [h for s in self.denoiser_heads for h in self.heads_of(s)]
        return out

    def all_sites(self) -> list[Site]:
        out: list[Site] = []
        for comp in self.text_layers:
            out += self.text_sites(comp)
        return out + list(self.denoiser) + list(self.extra)

    def __contains__(self, site: object) -> bool:
        return site in set(self.all_sites()) or site in set(self.heads())

    def rows(self) -> Iterable[tuple[str, str, str]]:
        """(site, component, kind) triples, for printing."""
        for s in self.all_sites():
            yield str(s), s.component, s.kind


def build_site_table(arch: str, unet_config: Mapping[str, Any], text_configs: Mapping[str, Any],
                     denoiser: str) -> SiteTable:
    """Site table of a CLIP-conditioned UNet from configs: ``text_configs`` maps component name
    to its CLIPTextConfig; ``denoiser`` is the UNet's component name."""
    layers = {name: int(cfg.num_hidden_layers) for name, cfg in text_configs.items()}
    extra = tuple(Site(name, f"{TEXT_PREFIX[name]}final_layer_norm") for name in text_configs) + (
        Site(denoiser, "conv_in"), Site(denoiser, "conv_out"))
    heads = {name: int(cfg.num_attention_heads) for name, cfg in text_configs.items()}
    return SiteTable(arch=arch, text_layers=layers, denoiser=tuple(unet_sites(unet_config, denoiser)), extra=extra,
                     text_heads=heads, denoiser_heads=unet_heads(unet_config, denoiser), denoiser_component=denoiser)


def resolve(site: Site | str, modules: Mapping[str, Any]) -> Any:
    """The module a site names (a head site: the module whose input holds the heads; a stream
    site: its block) in ``modules`` (component -> nn.Module); else :class:`SiteError` with near spellings."""
    site, named = _lookup(site, modules)
    if site.head is not None:
        return _head_module(site, named)[0]
    module = _named(site, site.module_path, named)
    if site.stream == "text" and getattr(module, "context_pre_only", False):
        raise SiteError(f"unknown site {site}: {site.module_path} is the last joint block and outputs no text stream "
                        "(context_pre_only); use @image")
    return module


def head_slice(site: Site | str, modules: Mapping[str, Any]) -> tuple[Any, slice]:
    """(module whose input holds the heads, slice of that input's last dimension that is head ``site.head``)."""
    site, named = _lookup(site, modules)
    if site.head is None:
        raise SiteError(f"site {site} is not a head site; head sites end in '.heads.<h>'")
    module, n_heads = _head_module(site, named)
    width = (getattr(named[site.attn_path], "inner_dim", None) or module.in_features) // n_heads
    return module, slice(site.head * width, (site.head + 1) * width)


def _lookup(site: Site | str, modules: Mapping[str, Any]) -> tuple[Site, dict]:
    site = Site.parse(site) if isinstance(site, str) else site
    root = modules.get(site.component)
    if root is None:
        raise SiteError(f"site {site}: this model has no component {site.component!r}; it has {', '.join(modules)}")
    return site, dict(root.named_modules())


def _head_module(site: Site, named: Mapping[str, Any]) -> tuple[Any, int]:
    attn = _named(site, site.attn_path, named)
    n_heads = getattr(attn, "heads", None) or getattr(attn, "num_heads", None) or getattr(attn, "n_heads", None)
    if not n_heads:
        raise SiteError(f"unknown site {site}: {site.attn_path!r} is not an attention module with heads")
    if not 0 <= site.head < n_heads:
        raise SiteError(f"unknown site {site}: head {site.head} out of range; {site.attn_path} has heads 0..{n_heads - 1}")
    return _named(site, site.module_path, named), int(n_heads)


def _named(site: Site, path: str, named: Mapping[str, Any]) -> Any:
    if path not in named and re.match(_T5_LAYER, path) and "encoder.block.0" not in named:
        raise SiteError(f"unknown site {site}: a T5 encoder site, but {site.component} is not a T5 encoder")
    if path not in named:
        stem = path.rsplit(".", 1)[0]
        near = sorted(n for n in named if n.startswith(stem))[:5]
        hint = f"; nearby: {', '.join(near)}" if near else ""
        raise SiteError(f"unknown site {site}: no module {path!r} in {site.component}{hint}")
    return named[path]

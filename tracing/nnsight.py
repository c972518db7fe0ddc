"""The nnsight bridge: write interventions in nnsight's syntax over diffloc's sampler and sites.

Usage::

    from diffloc.tracing.nnsight import wrap
    bridge = wrap(model)                                   # a loaded diffloc Model
    site = Site.parse("text_encoder:encoder.layers.0.self_attn.out_proj")

    def restore_token(bridge, call):                       # runs inside one nnsight trace
        if call.index == 0:                                # the prompt's encoding (call 1: CFG's empty prompt)
            out = bridge.site_envoy(site).output           # [R, 77, D]: row 0 clean, rows 1.. corrupted
            out[1, 5] = out[0, 5]                          # restore token 5 of row 1 from the clean row

    with bridge.intervene(text_encoder=restore_token):
        images = patched_generate(bridge.model, prompt, [Restore()], corruption, generator, cfg)

``bridge.model`` is the same model (same weights, same site table) whose components run each
forward pass as one ``with envoy.trace(...)`` of nnsight 0.8, calling your function inside the
trace with ``call.index`` (how many times this component ran since ``intervene`` began) and
``call.batch``. diffloc's own hooks (the corruption, any ``Restore`` rows) still apply, because
they sit on the same modules. Under classifier-free guidance a UNet call's batch is
``[uncond rows, cond rows]`` (2R): restoring row r means rows r and R + r, as diffloc does.

``site_envoy(site)`` maps any diffloc :class:`~tracing.sites.Site` to its envoy (a head site
``...heads.H`` maps to the envoy of the module whose input holds the heads, with
``head_slice(site)`` giving the slice of the last dimension; a DiT stream site ``<block>@text``
maps to the block's envoy). ``site_output(site)`` is the activation a site names, inside a trace:
the envoy's output, or for a stream site the one tensor of the block's ``(text, image)`` output
that diffloc's hooks restore. Writing into it in place is a restoration::

    def restore_text_stream(bridge, call):                 # transformer:transformer_blocks.1@text
        R = call.batch // 2                                # CFG: [uncond rows, cond rows]
        out = bridge.site_output(site)                     # [2R, T, D]
        out[[2, R + 2]] = out[[0, R]]

nnsight's rules apply: access sites in execution order inside one call, and write the trace
body in a file (nnsight compiles the ``with`` block from source). Measured cost and limits:
docs/hooks.md.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from torch import nn

from .errors import DifflocInputError
from .sites import STREAMS, Site, resolve


@dataclass(frozen=True)
class Call:
    """One forward pass of a component under the bridge."""

    component: str
    index: int
    batch: int


class _Traced(nn.Module):
    """Stands in for a component: every forward is one nnsight trace of the real module.

    Its ``named_modules`` are the real module's, so diffloc sites resolve (and diffloc hooks
    register) on the real submodules; config, dtype and device are the real module's too.
    """

    def __init__(self, bridge: "Bridge", component: str):
        super().__init__()
        object.__setattr__(self, "_bridge", bridge)  # not submodules: keep named_modules the real one's
        object.__setattr__(self, "_component", component)

    @property
    def _real(self) -> nn.Module:
        return self._bridge.real[self._component]

    def named_modules(self, *args, **kw):
        return self._real.named_modules(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattr__(name)
        return getattr(self._real, name)  # config, dtype, device, get_input_embeddings, ...

    def forward(self, *args, **kw):
        bridge, comp = self._bridge, self._component
        fn = bridge.interventions.get(comp)
        first = args[0] if args else next(iter(kw.values()))
        call = Call(comp, bridge.calls.get(comp, 0), int(first.shape[0]))
        envoy = bridge.envoys[comp]
        with envoy.trace(*args, **kw):
            if fn is not None:
                fn(bridge, call)
            out = envoy.output.save()
        bridge.calls[comp] = call.index + 1
        return out


class Bridge:
    """A diffloc Model opened under nnsight (see the module docstring)."""

    def __init__(self, model):
        from nnsight import NNsight

        self.real = dict(model.modules)
        self.envoys = {name: NNsight(module) for name, module in self.real.items()}
        self.interventions: dict[str, Callable] = {}
        self.calls: dict[str, int] = {}
        swaps = {name: _Traced(self, name) for name in self.real}
        self.model = dataclasses.replace(model, modules=swaps)  # same parts, traced components

    def site_envoy(self, site: Site | str):
        """The nnsight envoy of a site's module (for a head site: the module holding the heads)."""
        site = Site.parse(site) if isinstance(site, str) else site
        resolve(site, self.real)  # one clear SiteError for a bad site
        envoy = self.envoys[site.component]
        path = getattr(site, "module_path", site.path)
        for part in path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def site_output(self, site: Site | str):
        """Inside a trace: the site's activation (a stream site: its element of the block's output tuple)."""
        site = Site.parse(site) if isinstance(site, str) else site
        out = self.site_envoy(site).output
        return out[STREAMS[site.stream]] if site.stream is not None else out

    def head_slice(self, site: Site | str) -> slice:
        """The slice of the hooked module's input that is head ``site.head``."""
        site = Site.parse(site) if isinstance(site, str) else site
        if getattr(site, "head", None) is None:
            raise DifflocInputError(f"site {site} is not a head site; head sites end in '.heads.<h>'")
        module = resolve(site, self.real)
        width = module.in_features // _n_heads(self.real[site.component], site)
        return slice(site.head * width, (site.head + 1) * width)

    @contextmanager
    def intervene(self, **fns: Callable) -> Iterator["Bridge"]:
        """Run ``fns[component](bridge, call)`` inside every traced forward of that component."""
        bad = [c for c in fns if c not in self.real]
        if bad:
            raise DifflocInputError(f"no component {bad[0]!r} to intervene on; this model has {', '.join(self.real)}")
        self.interventions, self.calls = dict(fns), {}
        try:
            yield self
        finally:
            self.interventions, self.calls = {}, {}


def _n_heads(root: nn.Module, site: Site) -> int:
    attn_path = site.path.rsplit(".heads.", 1)[0]
    attn = dict(root.named_modules())[attn_path]
    return int(getattr(attn, "heads", None) or getattr(attn, "num_heads"))


def wrap(model) -> Bridge:
    """Open a loaded diffloc ``Model`` under nnsight; see :class:`Bridge`."""
    return Bridge(model)

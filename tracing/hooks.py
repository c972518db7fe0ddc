"""One mechanism to read and overwrite activations at sites. Tracing and editing both use it.

Usage::

    with hooks(model.modules, {site: fn}):          # fn(module, inputs, output) -> new output | None
        model.text_encoder(ids)

    with Recorder(model.modules, [site], inputs=True) as rec:
        model.text_encoder(ids)
    rec.inputs[site], rec.outputs[site]             # tensors seen at the site

Hooks are plain torch forward hooks, registered inside a context manager and always removed on
exit, also when the body raises. ``docs/hooks.md`` records why raw hooks sit under this API
rather than nnsight (measured cost of per-row patching inside a batched sampling loop).

A hook function gets the module's output with tuples unwrapped to their first element (the
activation) and may return a replacement tensor of the same shape, or ``None`` to keep it. At a
DiT stream site (``transformer_blocks.3@image``; see :mod:`tracing.sites`) it gets the tuple
element of that stream instead (``@text`` element 0, ``@image`` element 1), and a replacement
goes back into that element; the other stream is passed on unchanged.

A head site (``...self_attn.heads.3``, ``...attn2.heads.2``; see :mod:`tracing.sites`) is a
forward *pre*-hook on the attention's output projection: the function gets that head's slice
of the projection's input, ``[B, T, head_dim]``, as its ``output`` argument (``inputs`` are the
projection's inputs), and a replacement of the same shape is spliced back into the input before
the projection runs. So every hook body (recording, row restoration, gradient probes) works on
head sites unchanged. Several functions at one head site see each other's replacements, in order.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .sites import STREAMS, Site, head_slice, resolve

HookFn = Callable[[nn.Module, tuple, torch.Tensor], "torch.Tensor | None"]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _wrap(fn: HookFn, index: int = 0):
    """Forward hook calling ``fn`` on tuple element ``index`` of the output (the output itself if not a tuple)."""

    def hook(module, inputs, output):
        new = fn(module, inputs, output[index] if isinstance(output, tuple) else output)  # e.g. [B, T, D]
        if new is None:
            return None
        if isinstance(output, tuple):
            return output[:index] + (new,) + output[index + 1:]
        return new

    return hook


def _wrap_head(fn: HookFn, cols: slice):
    def pre_hook(module, inputs):
        x = inputs[0]  # [B, T, heads * head_dim]
        new = fn(module, inputs, x[..., cols])
        if new is None:
            return None
        x = torch.cat([x[..., : cols.start], new, x[..., cols.stop :]], dim=-1)  # out of place: autograd sees it
        return (x,) + tuple(inputs[1:])

    return pre_hook


@contextmanager
def hooks(modules: Mapping[str, nn.Module], fns: Mapping[Site | str, HookFn | Sequence[HookFn]]) -> Iterator[None]:
    """Register forward hooks at sites (pre-hooks at head sites) for the duration of the block; always detaches.

    Every site is resolved before any hook is registered, so a bad site raises
    :class:`~tracing.sites.SiteError` and leaves the model untouched.
    """
    targets = []
    for site, fn in fns.items():
        site = Site.parse(site) if isinstance(site, str) else site
        if site.head is not None:
            module, cols = head_slice(site, modules)
        else:
            module, cols = resolve(site, modules), None
        index = STREAMS[site.stream] if site.stream else 0
        for f in fn if isinstance(fn, (list, tuple)) else [fn]:
            targets.append((module, f, cols, index))
    handles = []
    try:
        for module, f, cols, index in targets:
            if cols is None:
                handles.append(module.register_forward_hook(_wrap(f, index)))
            else:
                handles.append(module.register_forward_pre_hook(_wrap_head(f, cols)))
        yield
    finally:
        for h in handles:
            h.remove()


InputHookFn = Callable[[nn.Module, tuple, dict], "tuple[tuple, dict] | None"]


@contextmanager
def input_hooks(modules: Mapping[str, nn.Module], fns: Mapping[Site | str, InputHookFn | Sequence[InputHookFn]]) -> Iterator[None]:
    """Forward pre-hooks with keyword arguments at sites, for the duration of the block; always detaches.

    ``fn(module, args, kwargs)`` may return new ``(args, kwargs)`` (or None to keep them): for
    inputs that no module outputs, such as the attention mask a PixArt block hands ``attn2``.
    Sites resolve before any hook is registered, as in :func:`hooks`.
    """
    targets = [(resolve(Site.parse(site) if isinstance(site, str) else site, modules), fn) for site, fn in fns.items()]
    handles = []
    try:
        for module, fn in targets:
            for f in fn if isinstance(fn, (list, tuple)) else [fn]:
                handles.append(module.register_forward_pre_hook(f, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


class Recorder:
    """Record the (first) input and the output of modules at sites during a forward pass.

    ``detach=True`` (default) stores detached tensors; set ``detach=False`` to keep the graph
    (ReFACT optimises through recorded values).
    """

    def __init__(self, modules: Mapping[str, nn.Module], sites: Sequence[Site | str], inputs: bool = False, detach: bool = True):
        self.sites = [Site.parse(s) if isinstance(s, str) else s for s in sites]
        self.modules = modules
        self.want_inputs = inputs
        self.detach = detach
        self.inputs: dict[Site, torch.Tensor] = {}
        self.outputs: dict[Site, torch.Tensor] = {}
        self._ctx = None

    def _fn(self, site: Site) -> HookFn:
        def fn(module, inputs, output):
            keep = (lambda t: t.detach()) if self.detach else (lambda t: t)
            if self.want_inputs:
                self.inputs[site] = keep(inputs[0])
            self.outputs[site] = keep(output)
            return None

        return fn

    def __enter__(self) -> "Recorder":
        self._ctx = hooks(self.modules, {s: self._fn(s) for s in self.sites})
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def hook_count(modules: Mapping[str, nn.Module]) -> int:
    """Number of forward hooks attached anywhere in the model (0 after every diffloc call)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for root in modules.values() for m in root.modules())

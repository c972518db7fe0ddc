"""What every editor declares: the trace state it reads, its options and how it finds its site.

Usage::

    EDITOR = Editor("quickfix", TraceState(text=True, kind="attn"), QuickfixOptions, _run, _run_many,
                    site_option="site", site_of=_site_of)     # in the editor's own module
    editor.reads.components()        # ('text_encoder',); a denoiser state: the families' denoisers
    editor.from_trace(hits)          # {'site': 'text_encoder:encoder.layers.0.self_attn.out_proj'}
    editor.from_site("text_encoder:encoder.layers.3.mlp.fc2")   # {'layer': 3} for a layer-keyed editor
    editor.site_of(model, opts)      # the (first) site an edit with ``opts`` changes

An editor module defines a frozen options dataclass validated in ``__post_init__`` (one-line
:class:`~editing.records.EditError` on a bad value; its fields are the options the CLI accepts
for it), the functions that edit, and one :class:`Editor` object; ``editing/editors.py``
registers it. Nothing outside the editor's module names it: the CLI, the trace launcher and
the evaluation ask the object.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from diffloc.tracing.families import denoiser_slots
from diffloc.tracing.sites import Site, SiteError

from .records import EditError

#: The text encoder editors read by default (the first one; SDXL's second is ``text_encoder_2``).
TEXT_COMPONENT = "text_encoder"


def as_tuple(obj, name: str) -> None:
    """Store a list option as a tuple (frozen dataclasses hold hashable values)."""
    value = getattr(obj, name)
    if value is not None and not isinstance(value, tuple):
        if isinstance(value, str):
            raise EditError(f"{name} must be a list of strings, got the string {value!r}")
        object.__setattr__(obj, name, tuple(value))


def check_prompts(templates, targets) -> None:
    if templates is not None:
        if not templates:
            raise EditError("templates is empty; give at least one edit prompt with a '{}' slot")
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise EditError(f"template {bad[0]!r} needs exactly one '{{}}' where the concept goes")
    if targets is not None:
        n = len(templates) if templates is not None else None
        if n is None or len(targets) != n:
            raise EditError(f"{len(targets)} target prompts for {n or 0} templates; give one target prompt per template")


def check_lam(lam: float) -> None:
    if not float(lam) > 0:
        raise EditError(f"lambda must be > 0, got {lam}")


def parse_site(text: str) -> Site:
    """A site option, its syntax errors as :class:`EditError`."""
    try:
        return Site.parse(text)
    except SiteError as e:
        raise EditError(str(e)) from None


def option_kwargs(options) -> dict:
    """Options as keyword arguments, the defaults of the editing function left to it."""
    out = {f.name: getattr(options, f.name) for f in fields(options)}
    return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class TraceState:
    """The trace state an editor reads and edits: sites of one kind, in the text encoder
    (``text=True``: the first text encoder) or in the denoiser (whatever its family calls it)."""

    text: bool
    kind: str

    def components(self, model=None) -> tuple[str, ...]:
        """Component names that hold this state: of ``model``, or of every registered family."""
        if self.text:
            return (TEXT_COMPONENT,)
        return (model.family.denoiser,) if model is not None else denoiser_slots()

    def matches(self, site: Site) -> bool:
        return site.is_text == self.text and site.kind == self.kind and (not self.text or site.component == TEXT_COMPONENT)

    def __str__(self) -> str:
        return f"{'text encoder' if self.text else 'denoiser'}/{self.kind}"


@dataclass(frozen=True)
class Editor:
    """One editing method: its name, the trace state it reads, its options type and functions.

    ``site_option`` is the option that holds its site: ``site`` (one site string), ``sites``
    (a list: every causal state of its kind) or ``layer`` (a text-encoder layer index);
    ``site_of(model, options dict)`` is the (first) site an edit with those options changes.
    """

    name: str
    reads: TraceState
    options_type: type
    run: Callable                    # (model, source, target, options) -> list[EditRecord]
    run_many: Callable | None = None  # (model, [(source, target, options)], options) -> one solve
    preserve_by_default: bool = False  # UCE's preservation is part of the method
    site_option: str = "site"
    site_of: Callable | None = None   # (model, opts: dict) -> str
    site_help: str = ""               # what --site must name, for one-line errors
    archs: tuple[str, ...] | None = None  # families it edits (None: any whose modules hold its state)

    def applies_to(self, model) -> bool:
        """Whether this editor can edit ``model`` (evaluation's default methods are those that can)."""
        return self.archs is None or model.arch in self.archs

    @property
    def state(self) -> str:
        """``component/kind`` of the state it reads, for display (denoiser: the first family's name)."""
        return f"{self.reads.components()[0]}/{self.reads.kind}"

    @property
    def takes(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.options_type))

    @property
    def takes_preserve(self) -> bool:
        return "preserve" in self.takes

    @property
    def takes_targets(self) -> bool:
        return "targets" in self.takes

    def from_trace(self, hits: list[dict], model=None) -> dict:
        """Options that put the edit at the strongest causal state of its kind (``hits``: the
        trace's ``causal_sites.json`` entries of that state, strongest first; ``model``: the model
        edited, for editors whose pick depends on its layout); {} for none."""
        if not hits:
            return {}
        if self.site_option == "layer":
            return {"layer": hits[0]["layer"]}
        if self.site_option == "sites":
            return {"sites": [h["site"] for h in hits]}
        return {"site": hits[0]["site"]}

    def from_site(self, text: str) -> dict:
        """Options for a ``--site``; the options dataclass checks a site string, a layer-keyed
        editor checks the kind here."""
        if self.site_option == "layer":
            site = Site.parse(text)
            if site.kind != self.reads.kind:
                raise EditError(f"{self.name} edits {self.site_help}; got {text}")
            return {"layer": site.layer}
        return {"sites": [text]} if self.site_option == "sites" else {"site": text}

    def make_options(self, options: Any = None, **overrides) -> Any:
        """A validated options object from an options object or a dict, with ``overrides`` on top."""
        if isinstance(options, self.options_type):
            base = options
        elif options is None or isinstance(options, dict):
            overrides = {**(options or {}), **overrides}
            base = None
        else:
            raise EditError(f"{self.name} options must be a {self.options_type.__name__} or a dict, got {type(options).__name__}")
        bad = sorted(set(overrides) - set(self.takes))
        if bad:
            raise EditError(f"{self.name} takes no option {bad[0]!r}; allowed: {', '.join(self.takes)}")
        return replace(base, **overrides) if base is not None else self.options_type(**overrides)

    def apply(self, model, source: str, target: str, options: Any = None, **overrides) -> list:
        """Edit ``model`` in place so ``source`` reads like ``target``; returns the edit records."""
        return self.run(model, source, target, self.make_options(options, **overrides))

"""The editor registry: every editing method is one object reached by name.

Usage::

    editor = EDITORS.get("quickfix")
    opts = editor.make_options(preserve=["a green square"], lam=0.01)      # a frozen QuickfixOptions
    records = editor.apply(model, "red", "blue", opts)                     # edits in place
    method = Method("quickfix", preserve=True)   # its label, quickfix+preserve, names it in tables
    records = edit_case(method, model, case, overrides={"quickfix": {"lam": 0.01}})

An :class:`Editor` carries its name, the kind of trace state it edits (``text_encoder/attn``,
``text_encoder/mlp``, ``unet/attn2``), a frozen options dataclass validated in
``__post_init__`` (one-line :class:`~editing.records.EditError` on a bad value), ``run(model,
source, target, options) -> list[EditRecord]`` and, for closed forms that stack many edits into
one solve, ``run_many(model, edits, options)``. A new editor is one ``EDITORS.register`` call
plus the contract battery in ``tests/contracts.py``.

A :class:`Method` is what an evaluation compares: an editor plus its ``preserve`` option (the
case's preserve captions, UCE's term). Its label is ``<editor>`` or ``<editor>+preserve``; the
label is only a name in result tables, parsed once by :func:`as_method`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence

from diffloc.tracing.registry import Registry
from diffloc.tracing.sites import Site, SiteError

from .records import EditError


def _tuple(obj, name: str) -> None:
    """Store a list option as a tuple (frozen dataclasses hold hashable values)."""
    value = getattr(obj, name)
    if value is not None and not isinstance(value, tuple):
        if isinstance(value, str):
            raise EditError(f"{name} must be a list of strings, got the string {value!r}")
        object.__setattr__(obj, name, tuple(value))


def _check_prompts(templates, targets) -> None:
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


def _check_lam(lam: float) -> None:
    if not float(lam) > 0:
        raise EditError(f"lambda must be > 0, got {lam}")


@dataclass(frozen=True)
class QuickfixOptions:
    """Diff-QuickFix: the edited ``self_attn.out_proj`` site (None: layer 0), λ, edit prompts, preserve captions."""

    site: str | None = None
    lam: float = 0.01
    templates: tuple[str, ...] | None = None    # None: the paper's templates
    targets: tuple[str, ...] | None = None      # one marked target prompt per template
    preserve: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("templates", "targets", "preserve"):
            _tuple(self, name)
        _check_lam(self.lam)
        _check_prompts(self.templates, self.targets)
        if self.site is not None:
            try:
                site = Site.parse(self.site)
            except SiteError as e:
                raise EditError(str(e)) from None
            if not site.component.startswith("text_encoder") or not site.path.endswith("self_attn.out_proj"):
                raise EditError(f"quickfix edits an attention output projection (...self_attn.out_proj); got {self.site}")
            object.__setattr__(self, "site", str(site))


@dataclass(frozen=True)
class CrossattnOptions:
    """UNet cross-attention (TIME / UCE): attn2 sites (empty: all), λ, edit prompts, preserve captions."""

    sites: tuple[str, ...] = ()
    lam: float = 0.1
    templates: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    preserve: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("sites", "templates", "targets", "preserve"):
            _tuple(self, name)
        _check_lam(self.lam)
        _check_prompts(self.templates, self.targets)
        for s in self.sites:
            try:
                site = Site.parse(s)
            except SiteError as e:
                raise EditError(str(e)) from None
            if site.component != "unet" or site.kind != "attn2":
                raise EditError(f"crossattn edits UNet cross-attention blocks (...attn2); got {s}")


@dataclass(frozen=True)
class RefactOptions:
    """ReFACT: the fc2 layer (None: scaled layer 7 of 12, never the last), corpus, prompts, optimiser.

    ``templates`` are the context templates (None: ReFACT's nine) and ``targets`` one marked target
    prompt per template (the cases' grammatical ones, as quickfix gets them); ``contrastive`` adds
    captions to the candidates (ReFACT's KL prompts; none in its best configuration);
    ``cov_positions`` ``all`` (the 77 positions the UNet reads) or ``tokens`` (BOS..EOS: leaks).
    """

    layer: int | None = None
    component: str = "text_encoder"
    corpus: tuple[str, ...] = ()
    contrastive: tuple[str, ...] = ()
    templates: tuple[str, ...] | None = None    # None: ReFACT's templates
    targets: tuple[str, ...] | None = None      # one marked target prompt per template
    lr: float = 0.05
    max_steps: int = 100
    weight_decay: float = 0.01
    cov_positions: str = "all"

    def __post_init__(self) -> None:
        for name in ("corpus", "contrastive", "templates", "targets"):
            _tuple(self, name)
        _check_prompts(self.templates, self.targets)
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            raise EditError(f"ReFACT layer must be an integer >= 0, got {self.layer!r}")
        if not self.component.startswith("text_encoder"):
            raise EditError(f"ReFACT edits a text encoder; got component {self.component!r}")
        if not self.lr > 0 or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise EditError(f"ReFACT needs lr > 0 and max_steps >= 1, got lr={self.lr}, max_steps={self.max_steps}")
        if not self.weight_decay >= 0:
            raise EditError(f"ReFACT's weight decay must be >= 0, got {self.weight_decay}")
        if self.cov_positions not in ("all", "tokens"):
            raise EditError(f"cov_positions {self.cov_positions!r} unknown; allowed: all, tokens")


@dataclass(frozen=True)
class Editor:
    """One editing method: name, trace state kind, options type and its functions."""

    name: str
    state: str                       # the trace state it edits: component/kind
    options_type: type
    run: Callable                    # (model, source, target, options) -> list[EditRecord]
    run_many: Callable | None = None  # (model, [(source, target, options)], options) -> one solve
    preserve_by_default: bool = False  # crossattn: UCE's preservation is part of the method

    @property
    def takes(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.options_type))

    @property
    def takes_preserve(self) -> bool:
        return "preserve" in self.takes

    @property
    def takes_targets(self) -> bool:
        return "targets" in self.takes

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


def _kw(options) -> dict:
    """Options as keyword arguments, the defaults of the editing function left to it."""
    out = {f.name: getattr(options, f.name) for f in fields(options)}
    return {k: v for k, v in out.items() if v is not None}


def _quickfix(model, source, target, options: QuickfixOptions):
    from .quickfix import quickfix

    return quickfix(model, source, target, **_kw(options))


def _quickfix_many(model, edits, options: QuickfixOptions):
    from .quickfix import quickfix_many

    return quickfix_many(model, [(s, t, o.templates, o.targets) for s, t, o in edits], site=options.site, lam=options.lam,
                         preserve=options.preserve)


def _crossattn(model, source, target, options: CrossattnOptions):
    from .crossattn import crossattn

    return crossattn(model, source, target, **_kw(options))


def _crossattn_many(model, edits, options: CrossattnOptions):
    from .crossattn import crossattn_many

    return crossattn_many(model, [(s, t, o.templates, o.targets) for s, t, o in edits], sites=options.sites, lam=options.lam,
                          preserve=options.preserve)


def _refact(model, source, target, options: RefactOptions):
    from .refact import refact

    return refact(model, source, target, **_kw(options))


EDITORS: Registry[Editor] = Registry("method")
EDITORS.register("quickfix", Editor("quickfix", "text_encoder/attn", QuickfixOptions, _quickfix, _quickfix_many))
EDITORS.register("refact", Editor("refact", "text_encoder/mlp", RefactOptions, _refact))
EDITORS.register("crossattn", Editor("crossattn", "unet/attn2", CrossattnOptions, _crossattn, _crossattn_many,
                                     preserve_by_default=True))


@dataclass(frozen=True)
class Method:
    """What an evaluation compares: an editor, and whether it gets the cases' preserve captions."""

    editor: str
    preserve: bool = False

    def __post_init__(self) -> None:
        editor = EDITORS.get(self.editor)
        if self.preserve and not editor.takes_preserve:
            raise EditError(f"{self.editor} takes no preserve captions; allowed with +preserve: "
                            + ", ".join(n for n in EDITORS.names() if EDITORS.get(n).takes_preserve))

    @property
    def label(self) -> str:
        return self.editor + ("+preserve" if self.preserve else "")

    @property
    def uses_preserve(self) -> bool:
        return self.preserve or EDITORS.get(self.editor).preserve_by_default


def as_method(label: "str | Method") -> Method:
    """A method label: an editor's name, optionally ``+preserve`` (e.g. ``crossattn+preserve``)."""
    if isinstance(label, Method):
        return label
    name, plus, flag = label.partition("+")
    if plus and flag != "preserve":
        raise EditError(f"unknown method option {flag!r} in {label!r}; allowed: <editor> or <editor>+preserve")
    return Method(name, bool(plus))


def parse_method(label: "str | Method") -> tuple[Editor, bool]:
    """(editor, preserve option) of a method label."""
    method = as_method(label)
    return EDITORS.get(method.editor), method.preserve


def method_labels() -> tuple[str, ...]:
    """Every label evaluation accepts: each editor, and ``<editor>+preserve`` where it applies."""
    out = []
    for name in EDITORS.names():
        out.append(name)
        if EDITORS.get(name).takes_preserve:
            out.append(Method(name, True).label)
    return tuple(out)


def case_options(method: "str | Method", case: dict, overrides: dict | None = None) -> Any:
    """The options of ``method``'s editor for ``case``: ``overrides[editor name]`` (or
    ``overrides[label]``) plus what the case carries: ``templates``, ``targets`` (editors that
    read values from target prompts) and ``preserve`` (with the preserve option, and always for
    editors whose method includes it: crossattn, as in UCE). Explicit options win over the
    case's; explicit templates drop the case's targets, which belong to the case's templates."""
    method = as_method(method)
    editor = EDITORS.get(method.editor)
    overrides = overrides or {}
    opts = dict(overrides.get(method.label, overrides.get(method.editor, {})))
    if case.get("templates") and "templates" not in opts:
        opts["templates"] = list(case["templates"])
        if case.get("targets") and editor.takes_targets and "targets" not in opts:
            opts["targets"] = list(case["targets"])
    if method.uses_preserve and case.get("preserve") and "preserve" not in opts:
        opts["preserve"] = list(case["preserve"])
    if method.preserve and not opts.get("preserve"):
        raise EditError(f"{method.label} needs preserve captions; case {case.get('id', case['source'])!r} has none")
    return editor.make_options(opts)


def edit_case(method: "str | Method", model, case: dict, overrides: dict | None = None) -> list:
    """Apply ``method``'s editor for ``case`` in place; returns its records."""
    method = as_method(method)
    return EDITORS.get(method.editor).run(model, case["source"], case["target"], case_options(method, case, overrides))


def edit_many(editor: Editor, model, edits: Sequence[tuple[str, str, Any]], options: Any) -> list:
    """One closed-form solve for many ``(source, target, options)`` edits; ``options`` holds the shared
    site, λ and preserve captions."""
    if editor.run_many is None:
        batched = ", ".join(n for n in EDITORS.names() if EDITORS.get(n).run_many is not None)
        raise EditError(f"{editor.name} has no batched solve; use --sequential, or a batched editor: {batched}")
    return editor.run_many(model, list(edits), editor.make_options(options))

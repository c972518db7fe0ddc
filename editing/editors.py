"""The editor registry: every editing method is one object reached by name.

Usage::

    editor = EDITORS.get("quickfix")
    opts = editor.make_options(preserve=["a green square"], lam=0.01)      # a frozen QuickfixOptions
    records = editor.apply(model, "red", "blue", opts)                     # edits in place
    method = Method("quickfix", preserve=True)   # its label, quickfix+preserve, names it in tables
    records = edit_case(method, model, case, overrides={"quickfix": {"lam": 0.01}})

An :class:`~editing.protocol.Editor` lives in its own module (``editing/quickfix.py``,
``refact.py``, ``crossattn.py``; the DiT and T5 editors ``dit-crossattn``, ``joint-attn``,
``context-embedder`` and ``t5-quickfix`` in ``dit_editors.py``) and declares its name, the trace state it reads
(:class:`~editing.protocol.TraceState`: text-encoder attn / mlp, denoiser attn2), a frozen
options dataclass validated in ``__post_init__`` (one-line :class:`~editing.records.EditError`
on a bad value), how it takes its site from a trace or a ``--site``, ``run(model, source,
target, options) -> list[EditRecord]`` and, for closed forms that stack many edits into one
solve, ``run_many(model, edits, options)``. A new editor is one module with its ``EDITOR``,
one line in :data:`BUILTIN` plus the contract battery in ``tests/contracts.py``.

A :class:`Method` is what an evaluation compares: an editor plus its ``preserve`` option (the
case's preserve captions, UCE's term). Its label is ``<editor>`` or ``<editor>+preserve``; the
label is only a name in result tables, parsed once by :func:`as_method`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from diffloc.tracing.registry import Registry

from . import crossattn, dit_editors, quickfix, refact
from .crossattn import CrossattnOptions  # noqa: F401  (re-exported: the options types)
from .protocol import Editor, TraceState  # noqa: F401  (the editor API)
from .quickfix import QuickfixOptions  # noqa: F401
from .records import EditError
from .refact import RefactOptions  # noqa: F401

#: The built-in editors, in the order their names are listed.
BUILTIN = (quickfix.EDITOR, refact.EDITOR, crossattn.EDITOR, *dit_editors.EDITORS)

EDITORS: Registry[Editor] = Registry("method")
for _editor in BUILTIN:
    EDITORS.register(_editor.name, _editor)


def takers(option: str) -> tuple[str, ...]:
    """Names of the editors whose options have the field ``option`` (e.g. ``lam``, ``preserve``)."""
    return tuple(n for n in EDITORS.names() if option in EDITORS.get(n).takes)


def default_options(model, methods: Sequence = (), layer: int | None = None) -> dict:
    """Per-editor options every evaluation gives: the model's world corpus to the editors whose
    options take one (ReFACT's best configuration: no extra contrastive captions; read only when
    one of ``methods`` needs it), and ``layer`` to the layer-keyed editors where given."""
    from .corpus import read_corpus

    names = takers("corpus")
    needed = [n for n in names if any(as_method(m).editor == n for m in methods)]
    corpus = read_corpus(None, model)[0] if needed else []
    out: dict = {n: {"corpus": corpus} for n in names}
    if layer is not None:
        for editor in layer_editors():
            editor.site_of(model, {"layer": layer})  # a clear error for a layer the encoder does not have
            out.setdefault(editor.name, {})["layer"] = layer
    return out


def layer_editors() -> tuple[Editor, ...]:
    """The editors whose site is a text-encoder layer (``site_option == "layer"``)."""
    return tuple(e for e in (EDITORS.get(n) for n in EDITORS.names()) if e.site_option == "layer")


@dataclass(frozen=True)
class Method:
    """What an evaluation compares: an editor, whether it gets the cases' preserve captions, and
    whether they are kept exactly (``nullspace``: ``preserve_mode="nullspace"``, label ``+nullspace``)."""

    editor: str
    preserve: bool = False
    nullspace: bool = False

    def __post_init__(self) -> None:
        editor = EDITORS.get(self.editor)
        if self.nullspace and "preserve_mode" not in editor.takes:
            raise EditError(f"{self.editor} has no null-space mode; allowed with +nullspace: " + ", ".join(takers("preserve_mode")))
        if self.preserve and not editor.takes_preserve:
            raise EditError(f"{self.editor} takes no preserve captions; allowed with +preserve: "
                            + ", ".join(n for n in EDITORS.names() if EDITORS.get(n).takes_preserve))
        if self.nullspace:
            object.__setattr__(self, "preserve", True)

    @property
    def label(self) -> str:
        return self.editor + ("+nullspace" if self.nullspace else "+preserve" if self.preserve else "")

    @property
    def uses_preserve(self) -> bool:
        return self.preserve or EDITORS.get(self.editor).preserve_by_default


def as_method(label: "str | Method") -> Method:
    """A method label: an editor's name, optionally ``+preserve`` (e.g. ``crossattn+preserve``) or
    ``+nullspace`` (the preserve captions kept exactly)."""
    if isinstance(label, Method):
        return label
    name, plus, flag = label.partition("+")
    if plus and flag not in ("preserve", "nullspace"):
        raise EditError(f"unknown method option {flag!r} in {label!r}; allowed: <editor>, <editor>+preserve or <editor>+nullspace")
    return Method(name, bool(plus), flag == "nullspace")


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
        if "preserve_mode" in EDITORS.get(name).takes:
            out.append(Method(name, True, True).label)
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
    if method.nullspace:
        opts.setdefault("preserve_mode", "nullspace")
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

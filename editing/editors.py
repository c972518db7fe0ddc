"""The editor registry: every editing method is one object reached by name.

Usage::

    editor = EDITORS.get("quickfix")
    records = editor.apply(model, "red", "blue", templates=[...], targets=[...], preserve=[...])
    records = edit_with("quickfix", model, case, options={"quickfix": {"lam": 0.01}})

An :class:`Editor` carries its name, the kind of trace state it edits (``text_encoder/attn``,
``text_encoder/mlp``, ``unet/attn2``), which case fields it takes (targets, preserve) and
``apply(model, source, target, **options) -> list[EditRecord]``. A new editor is one
``EDITORS.register`` call plus the contract battery in ``tests/contracts.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tracing.registry import Registry

from .records import EditError


@dataclass(frozen=True)
class Editor:
    """One editing method."""

    name: str
    state: str                      # the trace state it edits: component/kind
    apply: Callable                 # (model, source, target, **options) -> list[EditRecord]
    takes_targets: bool = False     # values read from marked target prompts
    takes_preserve: bool = False    # UCE's preservation term


def _quickfix(model, source, target, **opts):
    from .quickfix import quickfix

    return quickfix(model, source, target, **opts)


def _refact(model, source, target, **opts):
    from .refact import refact

    return refact(model, source, target, **opts)


def _crossattn(model, source, target, **opts):
    from .crossattn import crossattn

    return crossattn(model, source, target, **opts)


EDITORS: Registry[Editor] = Registry("method")
EDITORS.register("quickfix", Editor("quickfix", "text_encoder/attn", _quickfix, takes_targets=True, takes_preserve=True))
EDITORS.register("refact", Editor("refact", "text_encoder/mlp", _refact, takes_targets=True))
EDITORS.register("crossattn", Editor("crossattn", "unet/attn2", _crossattn, takes_targets=True, takes_preserve=True))


def parse_method(label: str) -> tuple[Editor, bool]:
    """An evaluation label: an editor's name, optionally ``+preserve`` (``quickfix+preserve``).

    ``+preserve`` turns on the case's preserve captions for any editor that takes them.
    """
    name, plus, flag = label.partition("+")
    editor = EDITORS.get(name)
    if plus and flag != "preserve":
        raise EditError(f"unknown method option {flag!r} in {label!r}; allowed: <editor> or <editor>+preserve")
    if plus and not editor.takes_preserve:
        raise EditError(f"{name} takes no preserve captions; allowed with +preserve: "
                        + ", ".join(n for n in EDITORS.names() if EDITORS.get(n).takes_preserve))
    return editor, bool(plus)


def method_labels() -> tuple[str, ...]:
    """Every label evaluation accepts: each editor, and ``<editor>+preserve`` where it applies."""
    out = []
    for name in EDITORS.names():
        out.append(name)
        if EDITORS.get(name).takes_preserve:
            out.append(f"{name}+preserve")
    return tuple(out)


def case_options(label: str, case: dict, options: dict) -> dict:
    """``options[label]`` plus what the case carries: ``templates`` (every editor), ``targets``
    (editors that read values from target prompts) and ``preserve`` (with ``+preserve``, and
    always for editors whose method includes it by default: crossattn, as in UCE). Explicit
    options win over the case's; explicit templates drop the case's targets, which belong to
    the case's templates."""
    editor, preserve = parse_method(label)
    opts = dict(options.get(label, {}))
    if case.get("templates") and "templates" not in opts:
        opts["templates"] = list(case["templates"])
        if case.get("targets") and editor.takes_targets and "targets" not in opts:
            opts["targets"] = list(case["targets"])
    wants_preserve = preserve or editor.name == "crossattn"
    if wants_preserve and case.get("preserve") and "preserve" not in opts:
        opts["preserve"] = list(case["preserve"])
    if preserve and not opts.get("preserve"):
        raise EditError(f"{label} needs preserve captions; case {case.get('id', case['source'])!r} has none")
    return opts


def edit_with(label: str, model, case: dict, options: dict) -> list:
    """Apply the editor of ``label`` for ``case`` in place; returns its records."""
    editor, _ = parse_method(label)
    return editor.apply(model, case["source"], case["target"], **case_options(label, case, options))

"""Worlds: where prompts, caption corpora, scorers and (optionally) exact readers come from.

Usage::

    world = get_world("toy")                 # registered by experiments/toy through an entry point
    world.attributes                         # ('object', 'colour', 'style', 'viewpoint', 'count')
    world.prompt_dir / "colour.txt"          # marked prompts for an attribute
    world.parse_caption("a photo of two red circles at the top")["colour"]   # 'red'
    world.read(image)["count"]               # exact reader (only worlds with has_readers)
    world_of(model)                          # the world a loaded Model belongs to

A world plugs in by implementing :class:`World` and registering it in the ``diffloc.worlds``
entry-point group (pyproject ``[project.entry-points."diffloc.worlds"]``); diffloc finds it on
the first lookup and never imports the plug-in's package by name. ``sd`` is built in: the
paper's prompt sets and a caption corpus for real Stable Diffusion models, with no readers.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from .errors import DifflocInputError
from .registry import Registry

DATA = Path(__file__).resolve().parent / "data"


@runtime_checkable
class World(Protocol):
    """What a world provides. Readers are optional (``has_readers``)."""

    name: str
    attributes: tuple[str, ...]
    prompt_dir: Path
    has_readers: bool
    has_scorer: bool

    def parse_caption(self, text: str) -> dict[str, str]:
        """Attribute values a caption asks for (only worlds with readers)."""

    def read(self, image: Any) -> dict[str, str | None]:
        """Attribute values an image shows, read exactly (only worlds with readers)."""

    # Optional: ``rewrite(marked_caption, {attribute: value}) -> str | None``, the caption with
    # other attribute values in its own grammar (used when many edits are made together,
    # editing.compose); worlds without it get whole-word substitution.

    def corpus(self) -> list[str]:
        """Captions in the world's own style (covariances, σ of token embeddings)."""

    def model_dir(self) -> Path | None:
        """A shipped model folder loadable by ``load_model(name)``, or None."""

    def scorer(self) -> tuple[Any, Any, str] | None:
        """(open_clip model, tokenizer, id) of the world's own scorer, or None."""

    def cli(self) -> Any:
        """A typer app mounted as ``diffloc <name> ...``, or None."""


@dataclass(frozen=True)
class PromptWorld:
    """A world with prompt sets and a corpus but no readers: the built-in ``sd`` world."""

    name: str
    attributes: tuple[str, ...]
    prompt_dir: Path
    corpus_file: Path
    has_readers: bool = False
    has_scorer: bool = False

    def parse_caption(self, text: str) -> dict[str, str]:
        raise DifflocInputError(f"world {self.name!r} has no caption parser (no exact readers); use a CLIP metric")

    def read(self, image: Any) -> dict[str, str | None]:
        raise DifflocInputError(f"world {self.name!r} has no exact readers; use a CLIP metric")

    def corpus(self) -> list[str]:
        lines = self.corpus_file.read_text().splitlines()
        return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]

    def model_dir(self) -> Path | None:
        return None

    def scorer(self) -> None:
        return None

    def cli(self) -> None:
        return None


SD = PromptWorld("sd", ("object", "colour", "style", "viewpoint", "count", "action"),
                 DATA / "prompts" / "sd", DATA / "corpora" / "sd_captions.txt")


def _load_plugins(reg: Registry) -> None:
    for ep in metadata.entry_points(group="diffloc.worlds"):
        obj = ep.load()
        world = obj() if isinstance(obj, type) else obj
        reg.register(ep.name, world, replace=True)


WORLDS: Registry[World] = Registry("world", loader=_load_plugins)
WORLDS.register("sd", SD)


def get_world(name: str) -> World:
    return WORLDS.get(name)


def world_of(model: Any) -> World:
    """The world of a loaded model (``model.world``; ``sd`` for Stable Diffusion families)."""
    return WORLDS.get(getattr(model, "world", "sd"))


def corpus_lines(path: Path) -> list[str]:
    """Captions from a file, one per line (blank lines and ``#`` comments skipped)."""
    from .errors import InputFileError

    if not Path(path).exists():
        raise InputFileError(f"corpus file {path} does not exist")
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise DifflocInputError(f"corpus file {path} holds no captions")
    return lines


def subsample(lines: Sequence[str], n: int = 20) -> list[str]:
    """Every k-th line, ``n`` at most: a fixed, seed-free subset."""
    return list(lines[:: max(1, len(lines) // n)][:n])

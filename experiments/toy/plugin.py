"""The toy world as a diffloc :class:`tracing.worlds.World`, registered through an entry point.

Usage::

    from diffloc.tracing.worlds import get_world
    toy = get_world("toy")        # this object; pyproject: [project.entry-points."diffloc.worlds"]
    toy.read(image)["colour"]     # exact readers (100 % on renders)

diffloc itself never imports this package: the world registry finds it through the
``diffloc.worlds`` entry point, and everything the library needs from the toy world (prompt
folder, caption parser, readers, corpus, shipped model and scorer, its CLI) goes through here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .paths import DIT_DIR, MODEL_DIR, PROMPT_DIR


class ToyWorld:
    """32×32 images of 1-3 objects: object, colour, style, viewpoint, count."""

    name = "toy"
    attributes = ("object", "colour", "style", "viewpoint", "count")
    prompt_dir = PROMPT_DIR
    has_readers = True
    has_scorer = True

    def parse_caption(self, text: str) -> dict[str, str]:
        from . import world

        return world.parse_caption(text)

    def rewrite(self, text: str, changes: dict[str, str]) -> str | None:
        """A marked caption with other attribute values, in its own template and grammar."""
        from . import world

        return world.rewrite(text, changes)

    def counterfactuals(self, marked: str, attribute: str) -> list[tuple[str, str]]:
        """(value, marked caption) for every other value of the marked ``attribute``, in the
        caption's own template and grammar ('[one] circle' -> '[two] circles'); [] for a caption
        that is no template's."""
        from . import world

        plain, words = world.unmark(marked)
        attrs = world.parse_caption(plain)
        if len(words) != 1 or set(attrs) != set(world.ATTRIBUTES):
            return []
        template = next((i for i in range(len(world.TEMPLATES)) if world.mark(attrs, attribute, i) == marked), None)
        if template is None:
            return []
        return [(v, world.mark({**attrs, attribute: v}, attribute, template))
                for v in world.ATTRIBUTES[attribute] if v != attrs[attribute]]

    def read(self, image: Any) -> dict[str, str | None]:
        from . import world

        return world.read(image)

    def corpus(self) -> list[str]:
        """All 432 attribute combinations in every template."""
        from . import world

        return [world.caption(a, t) for a in world.all_attrs() for t in range(len(world.TEMPLATES))]

    def sigma_corpus(self) -> list[str]:
        """Captions whose tokens define σ of the token embeddings: one per combination."""
        from . import world

        return [world.caption(a) for a in world.all_attrs()]

    def model_dir(self) -> Path:
        return MODEL_DIR

    def dit_model_dir(self) -> Path:
        """The shipped toy-dit (``load_model("toy-dit")``): transformer/, scheduler/, diffloc.json."""
        return DIT_DIR

    def scorer(self) -> tuple[Any, Any, str]:
        from .scorer import load_toy_scorer

        model, _, tokenizer = load_toy_scorer()
        return model, tokenizer, "diffloc-toy-openclip"

    def cli(self) -> Any:
        from .cli import toy_app

        return toy_app


TOY = ToyWorld()

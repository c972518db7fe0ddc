"""Prompts with marked attribute words, and the token positions those words occupy.

Usage::

    p = MarkedPrompt.parse("a painting in the style of [Van Gogh]")
    p.text                      # 'a painting in the style of Van Gogh'
    p.subject                   # 'Van Gogh'
    p.positions(tokenizer)      # (7, 8): token indices of the marked words (BOS is index 0)
    q = MarkedPrompt.parse("a painting in the style of [Van Gogh|Monet|Picasso]")
    q.subject, q.alternatives   # 'Van Gogh', ('Van Gogh', 'Monet', 'Picasso'): counterfactuals for --corrupt replace
    q.with_subject("Monet").text  # 'a painting in the style of Monet'
    prompts = load_prompt_file("experiments/prompts/toy/colour.txt")
    prompts = attribute_prompts("toy", "colour")   # a world's shipped set (tracing.worlds)

A prompt file has one marked prompt per line; blank lines and ``#`` comments are skipped.
Exactly one ``[...]`` span per prompt; ``[a|b|c]`` names the values a counterfactual
corruption may put in its place (the first is the prompt's own). The last marked token is the *last subject token*,
where the seed paper finds the text encoder's one causal state.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DifflocInputError, InputFileError

_MARK = re.compile(r"\[([^\[\]]+)\]")


class PromptError(DifflocInputError):
    """A prompt whose attribute words are missing, doubled or tokenise to nothing."""


@dataclass(frozen=True)
class MarkedPrompt:
    """A caption and the character span of its attribute words."""

    text: str
    start: int
    end: int
    alternatives: tuple[str, ...] = ()  # the marked word's values ([a|b|c]); empty: none given

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= len(self.text):
            raise PromptError(f"attribute span ({self.start}, {self.end}) outside prompt {self.text!r}")

    @classmethod
    def parse(cls, marked: str) -> "MarkedPrompt":
        spans = list(_MARK.finditer(marked))
        if len(spans) != 1:
            raise PromptError(
                f"prompt {marked!r} has {len(spans)} marked spans; mark exactly one attribute, e.g. 'a photo of a [red] circle'"
            )
        m = spans[0]
        values = tuple(v.strip() for v in m.group(1).split("|"))
        word = values[0]
        if not all(values) or len(set(values)) != len(values):
            raise PromptError(f"prompt {marked!r} marks an empty or repeated attribute value; expected '[word]' or '[word|other|...]'")
        text = marked[: m.start()] + word + marked[m.end() :]
        return cls(text=text, start=m.start(), end=m.start() + len(word), alternatives=values if len(values) > 1 else ())

    def with_subject(self, value: str) -> "MarkedPrompt":
        """The same prompt with ``value`` in place of the marked words (alternatives kept)."""
        text = self.text[: self.start] + value + self.text[self.end :]
        return MarkedPrompt(text, self.start, self.start + len(value), self.alternatives)

    @property
    def subject(self) -> str:
        return self.text[self.start : self.end]

    @property
    def marked(self) -> str:
        inner = "|".join([self.subject] + [v for v in self.alternatives if v != self.subject])
        return f"{self.text[: self.start]}[{inner}]{self.text[self.end :]}"

    def positions(self, tokenizer, max_length: int | None = None) -> tuple[int, ...]:
        """Token indices (in the padded id sequence) covered by the marked words.

        ``max_length``: the tokens the encoder reads (default: the tokenizer's ``model_max_length``;
        a DiT family may pad T5 shorter, see :func:`diffloc.tracing.encoders.word_positions`)."""
        n = max_length or tokenizer.model_max_length
        enc = tokenizer(self.text, return_offsets_mapping=True, truncation=True, max_length=n)
        pos = tuple(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < self.end and b > self.start)
        if not pos:
            raise PromptError(f"attribute {self.subject!r} in {self.text!r} tokenises to nothing (or lies past the {n}-token limit)")
        return pos

    def tokens(self, tokenizer, max_length: int | None = None) -> list[str]:
        """Readable tokens from the first (CLIP: BOS) to EOS inclusive (``</w>`` stripped)."""
        ids = tokenizer(self.text, truncation=True, max_length=max_length or tokenizer.model_max_length).input_ids
        return [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(ids)]


def load_prompt_file(path: str | Path) -> list[MarkedPrompt]:
    """Marked prompts from a file; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"prompt file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(MarkedPrompt.parse(line))
        except PromptError as err:
            raise PromptError(f"{path}:{n}: {err}") from None
    if not out:
        raise PromptError(f"prompt file {path} holds no prompts")
    return out


ATTRIBUTES = ("object", "colour", "style", "viewpoint", "count", "action")


def attribute_prompts(world: str, attribute: str) -> list[MarkedPrompt]:
    """The shipped prompt set of ``world`` (``toy``, ``sd``, any registered world) for ``attribute``."""
    from .worlds import get_world

    folder = get_world(world).prompt_dir
    path = folder / f"{attribute}.txt"
    if not path.exists():
        have = sorted(p.stem for p in folder.glob("*.txt"))
        raise PromptError(f"no {world} prompt set for attribute {attribute!r}; allowed: {', '.join(have)}")
    return load_prompt_file(path)

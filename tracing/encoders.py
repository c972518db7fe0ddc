"""A marked word in each text encoder: its own token positions, tokens and roles; which encoders a trace corrupts.

Usage::

    model = load_model("tiny-sd3")
    p = MarkedPrompt.parse("a photo of a [crimson] circle")
    corrupted_encoders(model, None)              # ('text_encoder', 'text_encoder_2', 'text_encoder_3'): all of them
    corrupted_encoders(model, "text_encoder_3")  # ('text_encoder_3',): SD3's T5 only
    word_positions(model, p)                     # {'text_encoder': (5,), 'text_encoder_2': (5,), 'text_encoder_3': (4, ..., 10)}
    w = encoder_words(model, p, "text_encoder_3")
    w.tokens[:5], w.bos, w.role(4)              # ('▁a', '▁photo', '▁of', '▁a', '▁c'), False, 'subject'
    text_length(model, "text_encoder_3")         # 256: the tokens SD3's pipeline pads T5 prompts to

Each text encoder reads the prompt through its own tokenizer, and tokenizers split words their
own way: CLIP's BPE puts BOS first and reads "crimson" as one token, the T5 SentencePiece
tokenizer has no BOS and may split the word in pieces. A word's positions are therefore
computed per encoder, from that encoder's tokenizer (character offsets of the marked span),
truncated at the length the family feeds that encoder. Corruption (noise or a counterfactual
word) lands on each encoder's own positions, and a text-encoder row's token labels and roles
(``bos``, ``before``, ``subject``, ``last_subject``, ``after``, ``eos``) come from its own
encoder. An encoder whose first token is not a special token (T5) has no ``bos`` role.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .prompts import MarkedPrompt


def text_length(model, component: str) -> int:
    """Tokens per prompt the family feeds ``component`` (77 for CLIP; a DiT pads T5 to its own length, e.g. SD3's 256)."""
    return model.family.text_length(model, component)


def corrupted_encoders(model, text_encoder: str | None = None) -> tuple[str, ...]:
    """The text encoders a trace corrupts and restores: all that feed the denoiser (None), or the one named."""
    comps = model.text_components
    if text_encoder is None:
        return comps
    if text_encoder not in comps:
        raise ConfigError(f"unknown --text-encoder {text_encoder!r} for {model.name}; allowed: {', '.join(comps)}")
    return (text_encoder,)


def word_positions(model, prompt: MarkedPrompt, components: tuple[str, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """{component: token positions of the marked words in that encoder's padded ids} (default: every text encoder)."""
    comps = model.text_components if components is None else components
    return {c: prompt.positions(model.tokenizer_for(c), max_length=text_length(model, c)) for c in comps}


def role_of(tok: int, positions: tuple[int, ...], n_tokens: int, bos: bool = True) -> str:
    """Token role of a position: bos, before, subject, last_subject, after, eos ('' for no token).

    ``n_tokens``: the prompt's tokens up to and with EOS; ``bos``: position 0 is a BOS token (CLIP; T5 has none).
    """
    if tok < 0:
        return ""
    if bos and tok == 0:
        return "bos"
    if tok == n_tokens - 1:
        return "eos"
    if tok == positions[-1]:
        return "last_subject"
    if tok in positions:
        return "subject"
    return "before" if tok < positions[0] else "after"


@dataclass(frozen=True)
class EncoderWords:
    """One prompt as one text encoder reads it: readable tokens (first .. EOS), the marked word's positions,
    whether position 0 is BOS, and the padded length the encoder reads."""

    component: str
    tokens: tuple[str, ...]
    positions: tuple[int, ...]
    bos: bool
    length: int

    def role(self, tok: int) -> str:
        return role_of(tok, self.positions, len(self.tokens), self.bos)


def encoder_words(model, prompt: MarkedPrompt, component: str) -> EncoderWords:
    """:class:`EncoderWords` of ``prompt`` in text encoder ``component``."""
    tok, n = model.tokenizer_for(component), text_length(model, component)
    ids = tok(prompt.text, truncation=True, max_length=n).input_ids
    bos = bool(ids) and ids[0] in set(tok.all_special_ids)
    return EncoderWords(component, tuple(prompt.tokens(tok, max_length=n)), prompt.positions(tok, max_length=n), bos, n)

"""The real CLIP BPE tokenizer, built offline from the vocabulary open_clip ships.

Usage::

    tok = clip_tokenizer()                       # transformers CLIPTokenizer, 49408 ids
    ids = tok("a red circle", padding="max_length", max_length=77).input_ids
    from open_clip.tokenizer import basic_clean, whitespace_clean
    ids = tok(whitespace_clean(basic_clean("“Crème” &amp; ﬁsh"))).input_ids   # CLIP's ids, any text

Stable Diffusion's tokenizer folder is used when a model has one; when it does not (the toy
world, replicas, bare folders), this builds the identical tokenizer from open_clip's
``bpe_simple_vocab_16e6.txt.gz``. transformers 5 takes ``vocab=`` (dict) and ``merges=``
(list); its old ``vocab_file=`` is silently ignored.

The BPE is CLIP's, id for id; the text cleaning before it is not. transformers 5's
``CLIPTokenizer`` runs on the ``tokenizers`` backend, whose normalizer is NFC, whitespace and
lower case only, while CLIP's own tokenizer (open_clip's ``tokenize``) first runs
``ftfy.fix_text`` and a double ``html.unescape`` (``open_clip.tokenizer.basic_clean``). Text
that this cleaning changes (curly quotes, ligatures such as ``ﬁ``, full-width letters, HTML
entities, mojibake) gets other ids. The tokenizer deliberately stays without it: a Stable
Diffusion tokenizer folder (``vocab.json`` + ``merges.txt``) loads into the same class and
backend, so these are the ids SD's pipeline feeds its text encoder under transformers 5, and
the class saves into a stock diffusers folder. Clean the prompt first, as in the usage above,
for CLIP's exact ids. ``tests/test_tokenizer.py`` checks all of this against
``open_clip.tokenize`` on 200 captions with mixed case, punctuation and unicode, at all 77
positions (padding aside: open_clip pads with id 0, SD v1 and this tokenizer with
``<|endoftext|>``).
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2  # as in CLIP: 48894 merges, 49408 ids in all


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode table (GPT-2 scheme)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def bpe_vocab_path() -> Path:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"open_clip ships no BPE vocabulary at {path}; reinstall open_clip_torch")
    return path


@lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id) and merge list, from open_clip's BPE file."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer with CLIP's exact ids, built without any download."""
    vocab, merges = vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], model_max_length=model_max_length)


# ---------------------------------------------------------------- T5 (SentencePiece unigram)
_T5_WORDS = ("a an the of in on with and to at by for from is are this that photo picture painting drawing image style "
             "red green blue yellow orange purple pink black white brown grey gray gold silver small large big tiny "
             "cat dog car house tree circle square triangle star man woman person city sky sea forest mountain "
             "one two three four five left right top bottom front side view Van Gogh Picasso Monet").split()
_T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()[]&/"


@lru_cache(maxsize=1)
def t5_vocab() -> tuple[tuple[str, float], ...]:
    """(piece, log-probability) pairs of the offline unigram vocabulary, T5's special ids first."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -5.0 - 0.01 * i) for i, w in enumerate(_T5_WORDS)]
    pieces += [(c, -10.0) for c in _T5_CHARS] + [("\u2581" + c, -9.0) for c in _T5_CHARS]
    return tuple(dict(reversed(pieces)).items())[::-1]  # one entry per piece, the first (best) score kept


def t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer built offline: transformers' ``T5Tokenizer`` (tokenizers backend: Metaspace
    pre-tokenizer, Unigram model, ``</s>`` appended) over a small unigram vocabulary made here.

    Usage::

        tok = t5_tokenizer(256)
        tok(["a red car"], padding="max_length", max_length=256).input_ids   # [[..., 1, 0, 0, ...]]

    The special ids are T5's (pad 0, eos 1, unk 2) and words are split the SentencePiece way
    (``▁`` marks a word start), but the vocabulary is ~230 pieces made up here (common prompt
    words, then single characters so every ASCII text tokenizes), not T5's 32 000: ids differ
    from the real ``t5-v1_1`` tokenizer. Replicas have random weights, so only the mechanics
    matter; real folders bring their own ``tokenizer_3``/``tokenizer_2`` and load it.
    """
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(t5_vocab()), extra_ids=0, model_max_length=model_max_length)

"""The real CLIP BPE tokenizer, built offline from the vocabulary open_clip ships.

Usage::

    tok = clip_tokenizer()                       # transformers CLIPTokenizer, 49408 ids
    ids = tok("a red circle", padding="max_length", max_length=77).input_ids

Stable Diffusion's tokenizer folder is used when a model has one; when it does not (the toy
world, replicas, bare folders), this builds the identical tokenizer from open_clip's
``bpe_simple_vocab_16e6.txt.gz``. transformers 5 takes ``vocab=`` (dict) and ``merges=``
(list); its old ``vocab_file=`` is silently ignored, so ids are tested against open_clip's own
tokenizer in ``tests/test_tokenizer.py``.
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

"""Tokenizers, built with the `tokenizers` library and saved as tokenizer.json.

char: one token per character seen in the *training* split, plus `<unk>` (the last id).
      A character that never occurs in training (in val/test or a prompt) becomes `<unk>`,
      so it counts as one token whose probability the model had to learn from nothing.
bpe:  byte-level BPE (GPT-2's scheme) trained on the training split, with `<|endoftext|>`.
      Every byte is in the alphabet, so nothing is ever unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

UNK = "<unk>"
END_OF_TEXT = "<|endoftext|>"
KINDS = ("char", "bpe")


def train_tokenizer(kind: str, train_text: str, vocab_size: int = 1024) -> Tokenizer:
    if kind == "char":
        vocab = {ch: i for i, ch in enumerate(sorted(set(train_text)))}
        vocab[UNK] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char
        tok.decoder = decoders.Fuse()  # join without spaces
        return tok
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_lines(train_text), trainer=trainer)
        return tok
    raise ValueError(f"unknown tokenizer {kind!r}; use one of {', '.join(KINDS)}")


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def encode(tok: Tokenizer, text: str) -> np.ndarray:
    """Token ids of a long text. Encodes line by line (in parallel): for char level this is
    exact; for byte-level BPE, tokens never span a newline anyway (GPT-2's pre-tokenizer
    splits there), so only runs of blank lines may tokenize differently than in one pass."""
    ids = [i for enc in tok.encode_batch(_lines(text)) for i in enc.ids]
    dtype = np.uint16 if tok.get_vocab_size() < 2**16 else np.int32
    return np.asarray(ids, dtype=dtype)


def encode_prompt(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text).ids


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def end_of_text_id(tok: Tokenizer) -> int | None:
    return tok.token_to_id(END_OF_TEXT)


def load(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def kind_of(tok: Tokenizer) -> str:
    return "char" if tok.token_to_id(UNK) is not None and tok.token_to_id(END_OF_TEXT) is None else "bpe"


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """(V,) the UTF-8 bytes each token id stands for in the decoded text (bits per byte divides
    by their sum): byte-level BPE tokens are strings over GPT-2's byte alphabet, one character
    per byte; a character-level token is its character's UTF-8 length (`<unk>`: 1); special
    tokens such as end-of-text stand for no text (0)."""
    vocab = tok.get_vocab()
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    byte_level = kind_of(tok) == "bpe"
    for text, index in vocab.items():
        if text in special:
            lengths[index] = 0
        elif text == UNK:
            lengths[index] = 1
        else:
            lengths[index] = len(text) if byte_level else len(text.encode("utf-8"))
    return lengths

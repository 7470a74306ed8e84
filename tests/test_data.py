import numpy as np
import pytest

import conftest
from conftest import needs_wikitext
from dropsample import data, tokenizer
from dropsample.errors import DataError
from dropsample.schema import DataConfig


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = tokenizer.train_tokenizer("char", "hello world\nhow are you?")
    text = "who are you?\nhello"
    ids = tokenizer.encode(tok, text)
    assert tokenizer.decode(tok, ids) == text
    assert len(ids) == len(text), "one token per character"
    unk = tok.token_to_id(tokenizer.UNK)
    assert unk == tok.get_vocab_size() - 1
    ids = tokenizer.encode(tok, "hé!")
    assert ids.tolist() == [tok.token_to_id("h"), unk, unk]  # never-seen characters become <unk>
    assert tokenizer.kind_of(tok) == "char"


def test_bpe_tokenizer_round_trip():
    text = (conftest.DATA_DIR / "tinyshakespeare" / "input.txt").read_text()[:20000]
    tok = tokenizer.train_tokenizer("bpe", text, vocab_size=300)
    assert tok.get_vocab_size() == 300
    sample = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n  Zebra ünïcode ✓\n"
    ids = tokenizer.encode(tok, sample)
    assert tokenizer.decode(tok, ids) == sample  # byte level: nothing is unknown
    assert len(ids) < len(sample.encode())
    assert tokenizer.end_of_text_id(tok) is not None
    assert tokenizer.kind_of(tok) == "bpe"


def test_split_is_first_90_last_10():
    cfg = {"name": "tiny_shakespeare", "path": None, "url": "unused", "val_fraction": 0.1, "test_fraction": 0.0}
    corpus = data.load_corpus(DataConfig(**cfg))
    full = (conftest.DATA_DIR / "tinyshakespeare" / "input.txt").read_text()
    n_val = int(len(full) * 0.1)
    assert corpus.texts["train"] == full[: len(full) - n_val]
    assert corpus.texts["val"] == full[len(full) - n_val :]
    assert "test" not in corpus.texts
    three = data._split_fractions("abcdefghij", 0.2, 0.1, "x")[0]
    assert three == {"train": "abcdefg", "test": "h", "val": "ij"}


def test_tokenized_data_is_cached(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    cfg = {"name": "text", "path": str(src), "tokenizer": "char", "vocab_size": 0, "val_fraction": 0.1,
           "test_fraction": 0.0, "cache_dir": str(tmp_path / "cache")}
    messages = []
    first = data.prepare(DataConfig(**cfg), log=messages.append)
    second = data.prepare(DataConfig(**cfg), log=messages.append)
    assert "into cache" in messages[0] and "from cache" in messages[1]
    assert np.array_equal(first.splits["train"], second.splits["train"])
    src.write_text("different text entirely\n" * 50)
    third = data.prepare(DataConfig(**cfg), log=messages.append)
    assert third.cache_key != first.cache_key and "into cache" in messages[2]
    bpe = data.prepare(DataConfig(**{**cfg, "tokenizer": "bpe", "vocab_size": 260}), log=messages.append)
    assert bpe.cache_key != third.cache_key


def test_offline_without_local_copy_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("DROPSAMPLE_DATA_DIR")
    cfg = {"name": "tiny_shakespeare", "path": None, "url": "https://example.invalid/x", "val_fraction": 0.1}
    with pytest.raises(DataError, match="data.path="):
        data.load_corpus(DataConfig(**cfg))
    with pytest.raises(DataError, match="DROPSAMPLE_DATA_DIR"):
        data.load_corpus(DataConfig(**{"name": "wikitext2", "path": None, "splits": {"train": "train", "val": "validation"}}))


@needs_wikitext()
def test_wikitext_local_splits_are_labelled():
    cfg = {"name": "wikitext2", "path": None, "splits": {"train": "validation", "val": "test", "test": None}}
    corpus = data.load_corpus(DataConfig(**cfg))
    assert corpus.sources == {"train": "wikitext-2/valid.txt (validation)", "val": "wikitext-2/test.txt (test)"}
    assert corpus.texts["train"] == (conftest.DATA_DIR / "wikitext-2" / "valid.txt").read_text()
    assert corpus.texts["train"].startswith(" \n = Homarus gammarus = \n")
    with pytest.raises(DataError, match="no train file"):
        data.load_corpus(DataConfig(**{**cfg, "splits": {"train": "train", "val": "validation"}}))

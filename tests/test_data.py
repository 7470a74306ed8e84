"""Tokenizers, splits, end-of-text joins, bytes per token and the tokenized-data cache."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import conftest
from conftest import needs_wikitext
from dropsample import data, tokenizer
from dropsample.data import corpus as corpus_mod
from dropsample.data import sources
from dropsample.errors import DataError
from dropsample.schema import DataConfig


def text_cfg(path, tmp_path, **over) -> DataConfig:
    """`data=text data.path=PATH` with a private cache."""
    values = {"name": "text", "path": str(path), "tokenizer": "char", "cache_dir": str(tmp_path / "cache"), **over}
    return DataConfig(**values)


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
    assert tokenizer.end_of_text_id(tok) is None, "a single text keeps exactly its characters"


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


def test_long_texts_encode_exactly_as_one_pass():
    """Pieces are encoded in parallel, yet the ids equal one pass over the whole text, also
    around whitespace runs before a newline (where cutting at every newline would differ)."""
    text = (conftest.DATA_DIR / "tinyshakespeare" / "input.txt").read_text()[:30000]
    text += "end \nnext\n\n\nX  \n \tY\n\nZ\nW \nQ\n"
    bpe = tokenizer.train_tokenizer("bpe", text + "a \nb \n" * 300, vocab_size=400)  # learns " \n" as one token
    assert tokenizer.encode(bpe, text).tolist() == bpe.encode(text).ids
    lines = [i for e in bpe.encode_batch(text.splitlines(keepends=True)) for i in e.ids]
    assert lines != bpe.encode(text).ids, "the case a newline split gets wrong is in the text"
    char = tokenizer.train_tokenizer("char", text)
    assert tokenizer.encode(char, text).tolist() == char.encode(text).ids


def test_tiny_shakespeare_split_is_first_90_last_10():
    cfg = conftest.compose([]).data
    corpus = data.load_corpus(cfg, log=lambda *a: None)
    full = (conftest.DATA_DIR / "tinyshakespeare" / "input.txt").read_text()
    n_val = int(len(full) * 0.1)
    assert corpus.docs["train"] == [full[: len(full) - n_val]]
    assert corpus.docs["val"] == [full[len(full) - n_val :]]
    assert "test" not in corpus.docs
    assert corpus.carved == {"from": "train", "by": "characters", "val_fraction": 0.1, "test_fraction": None}
    assert corpus.sources == {"train": f"input.txt[0:{len(full) - n_val}]", "val": f"input.txt[{len(full) - n_val}:{len(full)}]"}


def test_carving_takes_train_then_test_then_val():
    parts, labels, by = corpus_mod.carve(["abcdefghij"], 0.2, 0.1, "x")
    assert by == "characters" and parts == {"train": ["abcdefg"], "test": ["h"], "val": ["ij"]}
    assert labels == {"train": "x[0:7]", "test": "x[7:8]", "val": "x[8:10]"}
    # enough documents: whole documents, none cut
    docs = [f"doc{i}" for i in range(10)]
    parts, labels, by = corpus_mod.carve(docs, 0.2, 0.1, "train")
    assert by == "documents"
    assert parts == {"train": docs[:7], "test": docs[7:8], "val": docs[8:]}
    assert labels["val"] == "train[documents 8:10]"
    # too few documents for a 10% carve: characters, cut across the document boundary
    parts, _, by = corpus_mod.carve(["aaaa", "bbbbbb"], 0.3, 0.0, "t")
    assert by == "characters" and parts == {"train": ["aaaa", "bbb"], "val": ["bbb"]}
    assert corpus_mod.char_slice(["ab", "cd", "ef"], 1, 5) == ["b", "cd", "e"]


def test_tokenized_data_is_cached_and_keyed_by_file_and_settings(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    messages = []
    first = data.prepare(text_cfg(src, tmp_path), log=messages.append)
    second = data.prepare(text_cfg(src, tmp_path), log=messages.append)
    assert any("into cache" in m for m in messages) and "from cache" in messages[-1]
    assert np.array_equal(first.splits["train"], second.splits["train"]) and first.cache_key == second.cache_key
    assert second.describe() == first.describe()
    src.write_text("different text entirely\n" * 50)
    third = data.prepare(text_cfg(src, tmp_path), log=messages.append)
    assert third.cache_key != first.cache_key and "into cache" in messages[-1]
    assert tokenizer.decode(third.tokenizer, third.splits["train"]).startswith("different text")
    bpe = data.prepare(text_cfg(src, tmp_path, tokenizer="bpe", vocab_size=260), log=messages.append)
    capped = data.prepare(text_cfg(src, tmp_path, max_chars=600), log=messages.append)
    keys = {third.cache_key, bpe.cache_key, capped.cache_key}
    assert len(keys) == 3
    assert capped.describe()["splits"]["train"]["characters"] + capped.describe()["splits"]["val"]["characters"] == 600


def test_documents_are_joined_by_end_of_text_in_both_tokenizers(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = ["First story.\nIt ends here.\n", "Second <|endoftext|> is text here.\n", "Third, ünïcode ✓.\n"]
    for i, t in enumerate(texts):
        (folder / f"part{i}.txt").write_text(t)
    for kind in ("char", "bpe"):
        cfg = text_cfg(folder, tmp_path, tokenizer=kind, vocab_size=300, val_fraction=0.34)
        d = data.prepare(cfg, log=lambda *a: None)
        eot = tokenizer.end_of_text_id(d.tokenizer)
        assert eot is not None
        train = d.splits["train"].tolist()
        # three documents, 34% carved by documents: two train, one val; one join in train
        assert d.describe()["carved"]["by"] == "documents"
        assert train.count(eot) == 1 and d.splits["val"].tolist().count(eot) == 0
        cut = train.index(eot)
        assert tokenizer.decode(d.tokenizer, train[:cut]) == texts[0]
        # the literal string inside a document stays text: it is not the special id
        assert tokenizer.decode(d.tokenizer, train[cut + 1 :]) == texts[1]
        val_text = tokenizer.decode(d.tokenizer, d.splits["val"])
        # characters never seen in training are <unk> at char level; byte-level BPE knows every byte
        seen = set(texts[0] + texts[1])
        as_char = "".join(c if c in seen else tokenizer.UNK for c in texts[2])
        assert val_text == (texts[2] if kind == "bpe" else as_char) and "<unk>" in as_char
        stats = d.describe()["splits"]
        assert stats["train"]["documents"] == 2 and stats["val"]["documents"] == 1
        assert stats["val"]["bytes"] == len(texts[2].encode()) and stats["val"]["characters"] == len(texts[2])
        assert d.bytes == {"train": len((texts[0] + texts[1]).encode()), "val": len(texts[2].encode())}
    # char level: <|endoftext|> is one vocabulary entry, just before <unk>
    char = data.prepare(text_cfg(folder, tmp_path, val_fraction=0.34), log=lambda *a: None).tokenizer
    assert char.token_to_id(tokenizer.END_OF_TEXT) == char.get_vocab_size() - 2
    assert char.token_to_id(tokenizer.UNK) == char.get_vocab_size() - 1


def test_token_byte_lengths_by_hand():
    tok = tokenizer.train_tokenizer("char", ["aé✓\n", "b"], end_of_text=True)
    lengths = tokenizer.token_byte_lengths(tok)
    by_token = {t: int(lengths[i]) for t, i in tok.get_vocab().items()}
    assert by_token == {"\n": 1, "a": 1, "b": 1, "é": 2, "✓": 3, tokenizer.END_OF_TEXT: 0, tokenizer.UNK: 1}
    known = "ab✓é\na"
    assert lengths[tokenizer.encode(tok, known)].sum() == len(known.encode("utf-8")) == 9
    text = "Zebras ünïcode ✓ 日本語 and emoji 🦓!\n"
    bpe = tokenizer.train_tokenizer("bpe", text * 5 + "the theme then", vocab_size=300)
    lengths = tokenizer.token_byte_lengths(bpe)
    assert lengths.shape == (bpe.get_vocab_size(),)
    assert lengths[tokenizer.end_of_text_id(bpe)] == 0
    ids = tokenizer.encode(bpe, text)
    assert lengths[ids].sum() == len(text.encode("utf-8"))
    # single bytes of a 4-byte character are tokens of one byte each
    for ch, n in (("Ġ", 1), ("ð", 1)):  # 'Ġ' is the space byte, 'ð' is 0xF0 (the first byte of 🦓)
        assert lengths[bpe.token_to_id(ch)] == n
    joined = tokenizer.encode_documents(bpe, [text, text])
    assert lengths[joined].sum() == 2 * len(text.encode("utf-8"))


def gpt2_style_tokenizer(folder):
    """A tokenizer.json laid out like GPT-2's (byte-level BPE, <|endoftext|> special), trained
    here on a few lines: the tests never download GPT-2's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[tokenizer.END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog.\n"] * 20 + ["Once upon a time\n"] * 20,
                            trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return tok


def test_pretrained_tokenizer_from_a_local_tokenizer_json(tmp_path):
    ref = gpt2_style_tokenizer(tmp_path / "gpt2like")
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Once upon a time a fox.\n" * 20)
    (corpus / "b.txt").write_text("The lazy dog slept.\n" * 20)
    for where in (tmp_path / "gpt2like", tmp_path / "gpt2like" / "tokenizer.json"):
        d = data.prepare(text_cfg(corpus, tmp_path, tokenizer="gpt2", tokenizer_path=str(where)),
                         log=lambda *a: None)
        assert d.tokenizer.get_vocab() == ref.get_vocab()  # the given vocabulary, not one trained here
        eot = ref.token_to_id(tokenizer.END_OF_TEXT)
        expected = ref.encode("Once upon a time a fox.\n" * 20).ids
        assert d.splits["train"].tolist()[: len(expected) + 1] == expected + [eot]
        assert d.describe()["tokenizer"] == "gpt2" and d.describe()["tokenizer_source"] == str(where)
    # GPT-2's original layout: vocab.json + merges.txt
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    ref.model.save(str(legacy))
    loaded = tokenizer.load_pretrained(legacy)
    assert loaded.encode("The quick brown fox").ids == ref.encode("The quick brown fox").ids
    with pytest.raises(DataError, match=r"^data.tokenizer_path: .*missing.json does not exist"):
        tokenizer.load_pretrained(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"^model.init_from: .*bad.json is not a tokenizer.json"):
        tokenizer.load_pretrained(tmp_path / "bad.json", key="model.init_from")


def test_pretrained_tokenizer_from_the_hub_offline_is_one_line():
    with pytest.raises(DataError) as err:
        tokenizer.load_pretrained(None)
    message = str(err.value)
    assert message.startswith("data.tokenizer_path: ") and "'gpt2'" in message and "\n" not in message
    assert "data.tokenizer_path=/path/to/tokenizer.json" in message


def test_wikitext_lines_regroup_into_articles():
    rows = ["", " = Alpha = \n", "", " Text of alpha .\n", " = = Section = = \n", " More .\n", "", " = Beta = \n",
            " Beta text .\n"]
    articles = list(sources.wikitext_articles(rows))
    assert articles == ["\n = Alpha = \n\n Text of alpha .\n = = Section = = \n More .\n\n",
                        " = Beta = \n Beta text .\n"]
    whole_file = ["".join(r if r else "\n" for r in rows)]
    assert list(sources.wikitext_articles(whole_file)) == articles


def test_caps_stop_reading_and_cut_the_last_document():
    docs, cut = sources.take(iter(["aaaa", "bbbb", "cccc"]), None, 6)
    assert docs == ["aaaa", "bb"] and cut
    docs, cut = sources.take(iter(["aaaa", "bbbb", "cccc"]), 2, None)
    assert docs == ["aaaa", "bbbb"] and cut

    def endless():
        i = 0
        while True:  # a stream that never ends: the cap alone stops it
            yield f"doc{i}"
            i += 1

    assert sources.take(endless(), 3, None) == (["doc0", "doc1", "doc2"], True)
    assert sources.take(iter(["ab"]), 5, 100) == (["ab"], False)
    assert sources.take(iter(["", "ab", "", "cd"]), 2, None) == (["ab", "cd"], False)


@needs_wikitext()
def test_wikitext_local_splits_are_labelled_and_articles_joined(tmp_path):
    cfg = conftest.compose(["data=wikitext2", "data.splits.train=validation", "data.splits.val=test",
                            "data.splits.test=null", f"data.cache_dir={tmp_path}", "data.vocab_size=300"]).data
    corpus = data.load_corpus(cfg, log=lambda *a: None)
    assert corpus.sources == {"train": "valid.txt (validation)", "val": "test.txt (test)"}
    valid = (conftest.DATA_DIR / "wikitext-2" / "valid.txt").read_text()
    assert "".join(corpus.docs["train"]) == valid
    assert corpus.docs["train"][0].startswith(" \n = Homarus gammarus = \n")
    headings = sum(1 for line in valid.splitlines() if sources.HEADING.fullmatch(line))
    assert len(corpus.docs["train"]) == headings
    with pytest.raises(DataError, match=r"^data.splits.train: .* has no split 'train' \(it has: validation, test\)"):
        data.load_corpus(dataclasses.replace(cfg, splits={"train": "train"}), log=lambda *a: None)


def test_missing_split_same_split_twice_and_missing_column_are_one_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"body": f"row {i}"}) + "\n" for i in range(20)))
    cfg = dict(name=str(f), cache_dir=str(tmp_path / "c"), tokenizer="char")
    with pytest.raises(DataError, match=r"^data.text_column: no column 'text' in split 'train' .* it has body"):
        data.prepare(DataConfig(**cfg), log=lambda *a: None)
    ok = data.prepare(DataConfig(**cfg, text_column="body"), log=lambda *a: None)
    assert ok.describe()["splits"]["train"]["documents"] == 18 and ok.describe()["carved"]["by"] == "documents"
    with pytest.raises(DataError, match=r"^data.splits.val: .* has no split 'validation' \(it has: train\)"):
        data.prepare(DataConfig(**cfg, text_column="body", splits={"train": "train", "val": "validation"}))
    with pytest.raises(DataError, match=r"^data.splits.val: 'train' is already the train split"):
        data.prepare(DataConfig(**cfg, text_column="body", splits={"train": "train", "val": "train"}))
    f.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(5)))
    with pytest.raises(DataError, match=r"^data.text_column: column 'text' .* holds int values"):
        data.prepare(DataConfig(**cfg), log=lambda *a: None)


def test_offline_without_local_copy_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("DROPSAMPLE_DATA_DIR")
    cfg = conftest.compose([f"data.cache_dir={tmp_path}"]).data
    with pytest.raises(DataError, match=r"^data.url: .* no network; use a local copy instead: data.path=.*input.txt "
                                        r"or DROPSAMPLE_DATA_DIR"):
        data.prepare(cfg, log=lambda *a: None)
    for preset in ("tinystories", "wikitext2"):
        cfg = conftest.compose([f"data={preset}", f"data.cache_dir={tmp_path}"]).data
        with pytest.raises(DataError, match=r"^data.name: hub dataset .* is not available offline.*data.path="):
            data.prepare(cfg, log=lambda *a: None)
    assert not (tmp_path / "tokens").exists() and not list((tmp_path).glob("downloads/*"))


def test_folders_without_data_files_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^data.path: no data files in .*empty"):
        data.prepare(text_cfg(empty, tmp_path), log=lambda *a: None)
    (empty / "notes.md").write_text("not a data file\n")
    with pytest.raises(DataError, match=r"^data.path: no parquet, json/jsonl, csv or txt files in"):
        data.prepare(text_cfg(empty, tmp_path), log=lambda *a: None)
    (empty / "a.txt").write_text("text\n")
    (empty / "b.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match=r"^data.path: .* mixes json, text files; keep one format per folder"):
        data.prepare(text_cfg(empty, tmp_path), log=lambda *a: None)
    with pytest.raises(DataError, match=r"^data.path: .*nowhere does not exist"):
        data.prepare(text_cfg(tmp_path / "nowhere", tmp_path), log=lambda *a: None)


def test_a_local_text_file_reads_as_datasets_reads_it_without_importing_datasets(tmp_path):
    # CRLF, a lone CR, a byte-order mark mid-text, a blank last line: datasets' text builder
    # (sample_by=document) opens the file in text mode, UTF-8, universal newlines
    f = tmp_path / "mixed.txt"
    f.write_bytes(b"to be\r\nor not\rto be\n\xef\xbb\xbfthat is\r\n\r\n" * 40)
    cfg = text_cfg(f, tmp_path)
    plain = sources.resolve(cfg, tmp_path, log=lambda *a: None)
    through_datasets = sources.resolve(cfg, tmp_path, log=lambda *a: None)
    through_datasets._plain_text = lambda: False
    assert plain._plain_text()
    docs = plain.documents("train", cfg)
    assert docs == through_datasets.documents("train", cfg)
    assert docs == (["to be\nor not\nto be\n\ufeffthat is\n\n" * 40], False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe not UTF-8\n")
    source = sources.resolve(text_cfg(bad, tmp_path), tmp_path, log=lambda *a: None)
    with pytest.raises(DataError, match=r"^data.path: cannot read split 'train' of .*bad.txt \(UnicodeDecodeError"):
        source.documents("train", cfg)
    # tokenizing it afresh (a first run's token cache miss) never imports datasets (~0.7 s)
    code = ("import sys; from dropsample import data; from tests_text_cfg import cfg; "
            "data.prepare(cfg, log=lambda *a: None); print('datasets' in sys.modules)")
    (tmp_path / "tests_text_cfg.py").write_text(
        f"from dropsample.schema import DataConfig\ncfg = DataConfig(**{dataclasses.asdict(cfg)!r})\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"

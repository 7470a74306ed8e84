"""Corpora (through `datasets`), train/val/test splits, tokenization and its cache.

Flow: data config -> Corpus (texts by role) -> TokenizedData (tokenizer + id arrays).
Roles are what the trainer needs: `train`, `val` and optionally `test`. Which corpus
split fills which role is recorded in `Corpus.sources`, so a run that trains on
WikiText-2's validation split says so in its summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropsample import tokenizer as toks
from dropsample.errors import DataError

CACHE_VERSION = 1
# local file names tried for each WikiText split, in order
WIKITEXT_FILES = {
    "train": ("train.txt", "wiki.train.tokens", "wiki.train.raw"),
    "validation": ("valid.txt", "validation.txt", "wiki.valid.tokens", "wiki.valid.raw"),
    "test": ("test.txt", "wiki.test.tokens", "wiki.test.raw"),
}


@dataclass
class Corpus:
    name: str
    texts: dict[str, str]  # role (train/val/test) -> text
    sources: dict[str, str]  # role -> human-readable origin, e.g. "input.txt[0:90%]"


@dataclass
class TokenizedData:
    tokenizer: object  # tokenizers.Tokenizer
    splits: dict[str, np.ndarray]  # role -> token ids
    sources: dict[str, str]
    cache_key: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _data_dir() -> Path | None:
    value = os.environ.get("DROPSAMPLE_DATA_DIR")
    return Path(value).expanduser() if value else None


def _read_with_datasets(files: list[str] | str) -> str:
    """Whole documents through datasets' `text` builder (local paths or URLs, cached)."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("text", data_files={"train": files}, sample_by="document", split="train")
    return "".join(ds["text"])


def _split_fractions(text: str, val_fraction: float, test_fraction: float, label: str) -> tuple[dict, dict]:
    """First (1 - val - test) for training, then test, then the last `val_fraction` (nanoGPT's split)."""
    n = len(text)
    n_val = int(n * val_fraction)
    n_test = int(n * test_fraction)
    n_train = n - n_val - n_test
    texts = {"train": text[:n_train], "val": text[n - n_val :]}
    sources = {"train": f"{label}[0:{n_train}]", "val": f"{label}[{n - n_val}:{n}]"}
    if n_test:
        texts["test"] = text[n_train : n_train + n_test]
        sources["test"] = f"{label}[{n_train}:{n_train + n_test}]"
    return texts, sources


def _local_text_files(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(str(p) for p in path.glob("*.txt"))
        if not files:
            raise DataError(f"data.path: no *.txt files in {path}; point it at a text file or a folder of them")
        return files
    if not path.is_file():
        raise DataError(f"data.path: {path} does not exist; point it at a text file or a folder of .txt files")
    return [str(path)]


def load_corpus(cfg) -> Corpus:
    name = cfg.name
    if name == "tiny_shakespeare":
        return _load_tiny_shakespeare(cfg)
    if name == "wikitext2":
        return _load_wikitext2(cfg)
    if name == "text":
        path = Path(str(cfg.path)).expanduser()
        text = _read_with_datasets(_local_text_files(path))
        texts, sources = _split_fractions(text, cfg.val_fraction, cfg.test_fraction, path.name)
        return Corpus(name, texts, sources)
    raise DataError(f"data.name: unknown corpus {name!r}; use data=tiny_shakespeare, data=wikitext2 or data=text")


def _load_tiny_shakespeare(cfg) -> Corpus:
    path = cfg.path
    if path is None and _data_dir() is not None:
        path = _data_dir() / "tinyshakespeare" / "input.txt"
    if path is not None:
        files = _local_text_files(Path(str(path)).expanduser())
    elif offline():
        raise DataError(
            "Tiny Shakespeare is not available offline: set data.path=/path/to/input.txt "
            "or DROPSAMPLE_DATA_DIR to a folder holding tinyshakespeare/input.txt"
        )
    else:
        files = cfg.url
    text = _read_with_datasets(files)
    texts, sources = _split_fractions(text, cfg.val_fraction, cfg.test_fraction, "input.txt")
    return Corpus("tiny_shakespeare", texts, sources)


def _load_wikitext2(cfg) -> Corpus:
    roles = {role: split for role, split in (cfg.splits or {}).items() if split}
    if "train" not in roles or "val" not in roles:
        raise DataError("data.splits: wikitext2 needs a train and a val split, e.g. data.splits.train=train")
    folder = cfg.path
    if folder is None and _data_dir() is not None:
        folder = _data_dir() / "wikitext-2"
    texts, sources = {}, {}
    if folder is not None:
        folder = Path(str(folder)).expanduser()
        for role, split in roles.items():
            found = [folder / f for f in WIKITEXT_FILES.get(split, ()) if (folder / f).is_file()]
            if not found:
                have = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
                raise DataError(
                    f"data.splits.{role}: no {split} file in {folder} (found: {', '.join(have) or 'nothing'}); "
                    f"choose another split, e.g. data.splits.train=validation data.splits.val=test data.splits.test=null"
                )
            texts[role] = _read_with_datasets(str(found[0]))
            sources[role] = f"wikitext-2/{found[0].name} ({split})"
        return Corpus("wikitext2", texts, sources)
    if offline():
        raise DataError(
            "WikiText-2 is not available offline: set data.path to a folder with train.txt/valid.txt/test.txt "
            "or DROPSAMPLE_DATA_DIR to a folder holding wikitext-2/"
        )
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config)
    for role, split in roles.items():
        texts[role] = "".join(t if t.endswith("\n") else t + "\n" for t in ds[split]["text"])
        sources[role] = f"{cfg.hub_id}/{cfg.hub_config} ({split})"
    return Corpus("wikitext2", texts, sources)


def cache_root(cfg) -> Path:
    value = cfg.cache_dir or os.environ.get("DROPSAMPLE_CACHE_DIR") or "~/.cache/dropsample"
    return Path(str(value)).expanduser()


def _cache_key(corpus: Corpus, kind: str, vocab_size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "kind": kind, "vocab": vocab_size if kind == "bpe" else None}).encode())
    for role in sorted(corpus.texts):
        h.update(role.encode())
        h.update(hashlib.sha256(corpus.texts[role].encode()).digest())
    return h.hexdigest()[:24]


def prepare(cfg, log=print) -> TokenizedData:
    """Load, split and tokenize; reuse the cache when the texts and tokenizer settings match."""
    corpus = load_corpus(cfg)
    kind, vocab_size = cfg.tokenizer, int(cfg.vocab_size or 0)
    key = _cache_key(corpus, kind, vocab_size)
    folder = cache_root(cfg) / "tokens" / key
    if (folder / "meta.json").is_file():
        splits = {role: np.load(folder / f"{role}.npy") for role in corpus.texts}
        log(f"tokenized data from cache {folder}")
        return TokenizedData(toks.load(folder / "tokenizer.json"), splits, corpus.sources, key)
    tok = toks.train_tokenizer(kind, corpus.texts["train"], vocab_size)
    splits = {role: toks.encode(tok, text) for role, text in corpus.texts.items()}
    _write_cache(folder, tok, splits, corpus)
    log(f"tokenized {corpus.name} ({kind}, vocab {tok.get_vocab_size()}) into cache {folder}")
    return TokenizedData(tok, splits, corpus.sources, key)


def _write_cache(folder: Path, tok, splits: dict, corpus: Corpus) -> None:
    """Write to a temporary sibling, then rename: a killed run never leaves a half cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        tok.save(str(tmp / "tokenizer.json"))
        for role, ids in splits.items():
            np.save(tmp / f"{role}.npy", ids)
        meta = {"corpus": corpus.name, "sources": corpus.sources, "tokens": {r: int(len(a)) for r, a in splits.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, folder)
    except OSError:
        # another process finished the same cache first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").is_file():
            raise

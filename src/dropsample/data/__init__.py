"""Corpora in, token ids out: `prepare(cfg.data)` -> TokenizedData, through a cache.

    sources.py   where the text comes from (local files, a download, the hub) and its identity
    download.py  one file over HTTP(S), checksum-verified, into the cache atomically
    corpus.py    which split plays train/val/test; carving the missing ones from train
    here         tokenizing (documents joined by end-of-text) and the tokenized-data cache

The cache folder `<cache>/tokens/<key>/` holds tokenizer.json, one .npy per role and
meta.json (what was read). The key hashes the source's identity (file stats, download
checksum or hub commit: never the text itself), the split, column, document and cap
settings and the tokenizer settings, so a second run with the same settings reads no text
and touches no network beyond the hub's commit lookup, and any change to the data or
settings tokenizes afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dropsample import tokenizer as toks
from dropsample.data import corpus as corpus_mod
from dropsample.data import sources
from dropsample.data.corpus import Corpus

CACHE_VERSION = 2  # 2: documents joined by end-of-text, per-role byte counts in meta.json


@dataclass
class TokenizedData:
    tokenizer: object  # tokenizers.Tokenizer
    splits: dict[str, np.ndarray]  # role -> token ids
    sources: dict[str, str]  # role -> where its text came from
    cache_key: str
    info: dict = field(default_factory=dict)  # what was read (see `describe`)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def bytes(self) -> dict[str, int]:
        """role -> UTF-8 bytes of the role's text (end-of-text joins excluded): bits per byte's denominator."""
        return {role: s["bytes"] for role, s in self.info.get("splits", {}).items()}

    def describe(self) -> dict:
        """What was read, for summary.json's `data`: dataset, config, revision, carving, caps, and per
        role documents, characters, bytes and tokens."""
        splits = {role: {**self.info["splits"][role], "tokens": int(len(ids))} for role, ids in self.splits.items()}
        return {
            **{k: v for k, v in self.info.items() if k != "splits"},
            "vocab_size": self.vocab_size,
            "end_of_text_id": toks.end_of_text_id(self.tokenizer),
            "sources": self.sources,
            "splits": splits,
            "tokens": {role: s["tokens"] for role, s in splits.items()},
        }


def cache_root(cfg) -> Path:
    value = cfg.cache_dir or os.environ.get("DROPSAMPLE_CACHE_DIR") or "~/.cache/dropsample"
    return Path(str(value)).expanduser()


def load_corpus(cfg, log=print) -> Corpus:
    """The documents of each role (no tokenizing, no cache)."""
    root = cache_root(cfg)
    return corpus_mod.build(cfg, sources.resolve(cfg, root, log), log)


def _tokenizer_identity(cfg, pretrained) -> dict:
    if cfg.tokenizer == "gpt2":
        return {"kind": "gpt2", "sha256": hashlib.sha256(pretrained.to_str().encode()).hexdigest()}
    return {"kind": cfg.tokenizer, "vocab_size": int(cfg.vocab_size) if cfg.tokenizer == "bpe" else None}


def _tokenizer_source(cfg) -> str | None:
    return str(cfg.tokenizer_path or toks.GPT2_HUB_ID) if cfg.tokenizer == "gpt2" else None


def cache_key(cfg, source: sources.Source, tokenizer_identity: dict) -> str:
    parts = {
        "v": CACHE_VERSION, "source": source.identity, "config": cfg.config, "text_column": cfg.text_column,
        "documents": cfg.documents, "splits": dict(cfg.splits or {}), "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction, "max_docs": cfg.max_docs, "max_chars": cfg.max_chars,
        "tokenizer": tokenizer_identity,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def prepare(cfg, log=print) -> TokenizedData:
    """Load, split and tokenize; reuse the cache when the source and settings match."""
    root = cache_root(cfg)
    source = sources.resolve(cfg, root, log)
    pretrained = toks.load_pretrained(cfg.tokenizer_path) if cfg.tokenizer == "gpt2" else None
    key = cache_key(cfg, source, _tokenizer_identity(cfg, pretrained))
    folder = root / "tokens" / key
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        splits = {role: np.load(folder / f"{role}.npy") for role in meta["roles"]}
        log(f"tokenized data from cache {folder}")
        # the same tokenizer.json may come from another place than when the cache was written
        info = {**meta["info"], "tokenizer_source": _tokenizer_source(cfg)}
        return TokenizedData(toks.load(folder / "tokenizer.json"), splits, meta["sources"], key, info)
    corpus = corpus_mod.build(cfg, source, log)
    tok = pretrained or toks.train_tokenizer(cfg.tokenizer, corpus.docs["train"], int(cfg.vocab_size or 0),
                                             end_of_text=corpus.has_documents)
    splits = {role: toks.encode_documents(tok, docs) for role, docs in corpus.docs.items()}
    info = {
        "corpus": corpus.name, "dataset": source.dataset, "read_from": source.origin, "config": source.config,
        "revision": source.revision, "text_column": cfg.text_column if source.builder != "text" else None,
        "documents": cfg.documents, "tokenizer": cfg.tokenizer,
        "tokenizer_source": _tokenizer_source(cfg),
        "carved": corpus.carved, "caps": {"max_docs": cfg.max_docs, "max_chars": cfg.max_chars,
                                          "cut": corpus.capped},
        "splits": corpus.stats(),
    }
    _write_cache(folder, tok, splits, corpus.sources, info)
    log(f"tokenized {corpus.name} ({cfg.tokenizer}, vocab {tok.get_vocab_size()}) into cache {folder}")
    return TokenizedData(tok, splits, corpus.sources, key, info)


def _write_cache(folder: Path, tok, splits: dict, sources_: dict, info: dict) -> None:
    """Write to a temporary sibling, then rename: a killed run never leaves a half cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        tok.save(str(tmp / "tokenizer.json"))
        for role, ids in splits.items():
            np.save(tmp / f"{role}.npy", ids)
        meta = {"roles": list(splits), "sources": sources_, "info": info,
                "tokens": {r: int(len(a)) for r, a in splits.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, folder)
    except OSError:
        # another process finished the same cache first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").is_file():
            raise

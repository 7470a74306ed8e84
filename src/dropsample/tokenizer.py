"""Tokenizers, built with the `tokenizers` library and saved as tokenizer.json.

char: one token per character seen in the *training* split, plus `<unk>` (the last id).
      A character that never occurs in training (in val/test or a prompt) becomes `<unk>`,
      so it counts as one token whose probability the model had to learn from nothing.
      A corpus made of several documents adds `<|endoftext|>` (just before `<unk>`); a
      single text (Tiny Shakespeare) keeps exactly its characters.
bpe:  byte-level BPE (GPT-2's scheme) trained on the training split, with `<|endoftext|>`.
      Every byte is in the alphabet, so nothing is ever unknown.
gpt2: a pretrained byte-level BPE read from a tokenizer.json (`load_pretrained`): GPT-2's
      own, or any other model's when training starts from its weights.

Corpus text is encoded document by document and the documents are joined with the
end-of-text id (`encode_documents`). A document that happens to contain the literal string
`<|endoftext|>` gets it as plain text, as GPT-2's data preparation does: only the joins are
the special token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from dropsample.errors import DataError

UNK = "<unk>"
END_OF_TEXT = "<|endoftext|>"
KINDS = ("char", "bpe", "gpt2")
GPT2_HUB_ID = "gpt2"


def train_tokenizer(kind: str, text: str | Sequence[str], vocab_size: int = 1024, *,
                    end_of_text: bool = False) -> Tokenizer:
    """A tokenizer fitted to the training text (one string or its documents).

    `end_of_text` adds `<|endoftext|>` to a char vocabulary (byte-level BPE always has it)."""
    docs = [text] if isinstance(text, str) else list(text)
    if kind == "char":
        chars = sorted(set().union(*map(set, docs))) if docs else []
        vocab = {ch: i for i, ch in enumerate(chars)}
        if end_of_text:
            # a plain vocabulary entry, not an "added" token: text never produces it, only
            # encode_documents puts it between documents
            vocab[END_OF_TEXT] = len(vocab)
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
        tok.train_from_iterator((line for doc in docs for line in _lines(doc)), trainer=trainer)
        return tok
    raise ValueError(f"unknown tokenizer {kind!r}; use char or bpe (gpt2 is loaded, not trained)")


def load_pretrained(source: str | Path | None, *, key: str = "data.tokenizer_path") -> Tokenizer:
    """A pretrained tokenizer from a tokenizer.json file, a folder holding one (or GPT-2's
    older vocab.json + merges.txt pair), or a hub model id (default: GPT-2's).

    `key` names the setting in the one-line error (data.tokenizer_path, model.init_from, ...)."""
    source = str(source or GPT2_HUB_ID)
    path = Path(source).expanduser()
    if path.is_file():
        return _from_file(path, key)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _from_file(path / "tokenizer.json", key)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return _from_vocab_merges(path, key)
        raise DataError(f"{key}: {path} holds neither tokenizer.json nor vocab.json + merges.txt; "
                        "point it at a tokenizer.json")
    if source.startswith((".", "/", "~")) or source.endswith(".json"):
        raise DataError(f"{key}: {source} does not exist; give a tokenizer.json, a folder holding one, "
                        "or a hub model id")
    return _from_hub(source, key)


def _from_file(path: Path, key: str) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception on bad JSON
        raise DataError(f"{key}: {path} is not a tokenizer.json the tokenizers library reads "
                        f"({_first_line(exc)})") from None


def _from_vocab_merges(folder: Path, key: str) -> Tokenizer:
    """GPT-2's original files: vocab.json (with <|endoftext|> as an ordinary entry) + merges.txt."""
    try:
        tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    except Exception as exc:
        raise DataError(f"{key}: cannot read {folder}/vocab.json + merges.txt ({_first_line(exc)})") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id(END_OF_TEXT) is not None:
        tok.add_special_tokens([END_OF_TEXT])
    return tok


def _from_hub(repo_id: str, key: str) -> Tokenizer:
    """tokenizer.json of a hub model through huggingface_hub (its cache, offline flags and
    endpoint), as a one-line error when it cannot be had. A cached copy is used without
    asking the network; otherwise one quick metadata request tells "no such model" from "no
    network" before the download (whose retries would otherwise take half a minute)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    fix = f"download its tokenizer.json once and set {key}=/path/to/tokenizer.json"
    try:
        return _from_file(Path(hf_hub_download(repo_id, "tokenizer.json", local_files_only=True)), key)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        pass
    except DataError:
        raise
    except Exception as exc:  # e.g. a repo id the hub would refuse
        raise DataError(f"{key}: {repo_id!r} is neither a tokenizer.json, a folder nor a hub model id "
                        f"({_first_line(exc)}); {fix}") from None
    try:
        HfApi().model_info(repo_id)
        return _from_file(Path(hf_hub_download(repo_id, "tokenizer.json")), key)
    except DataError:
        raise
    except RepositoryNotFoundError:
        raise DataError(f"{key}: no model {repo_id!r} on the hub (or it is private); {fix}") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):  # before EntryNotFoundError: a subclass
        raise DataError(f"{key}: the tokenizer of {repo_id!r} is not in the local hub cache and the hub cannot "
                        f"be reached (offline); {fix}") from None
    except EntryNotFoundError:
        raise DataError(f"{key}: the hub model {repo_id!r} has no tokenizer.json; {fix}") from None
    except Exception as exc:  # no network, DNS, TLS, HTTP errors: all mean "not reachable"
        raise DataError(f"{key}: cannot get the tokenizer of {repo_id!r} from the hub "
                        f"({type(exc).__name__}: {_first_line(exc)}); {fix}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


# Between "<non-space>\n" and a non-space character no byte-level (GPT-2) pre-token can span:
# the newline is a pre-token of its own either way. Splitting only there makes encoding the
# pieces in parallel give exactly the ids of encoding the whole text in one pass (splitting at
# every newline would not: a chunk ending in " \n" pre-tokenizes that run as one piece).
SAFE_SPLIT = re.compile(r"(?<=\S\n)(?=\S)")


def _id_dtype(tok: Tokenizer):
    return np.uint16 if tok.get_vocab_size() < 2**16 else np.int32


def _splits_safely(tok: Tokenizer) -> bool:
    """Whether SAFE_SPLIT pieces encode exactly as the whole text (char level, GPT-2-style BPE)."""
    if isinstance(tok.model, models.WordLevel):
        return True
    pre = tok.pre_tokenizer
    return (tok.normalizer is None and isinstance(pre, pre_tokenizers.ByteLevel)
            and not getattr(pre, "add_prefix_space", True))


def encode(tok: Tokenizer, text: str) -> np.ndarray:
    """Token ids of a long text, exactly as one pass over it would give."""
    return encode_documents(tok, [text])


def encode_documents(tok: Tokenizer, docs: Sequence[str], batch_pieces: int = 65536) -> np.ndarray:
    """Ids of documents joined by the end-of-text id: d1 <eot> d2 <eot> ... dn (none after
    the last). Each document gets exactly the ids of encoding it alone; long documents are
    cut at SAFE_SPLIT points and the pieces encoded in parallel. A literal "<|endoftext|>"
    inside a document is encoded as text."""
    eot = end_of_text_id(tok)
    if len(docs) > 1 and eot is None:
        raise ValueError("this tokenizer has no <|endoftext|> to join documents with")
    split = SAFE_SPLIT.split if _splits_safely(tok) else (lambda doc: [doc])
    saved = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        pieces: list[np.ndarray] = []
        texts: list[str | None] = []  # None marks a join
        for i, doc in enumerate(docs):
            if i:
                texts.append(None)
            texts.extend(p for p in split(doc) if p)
        dtype = _id_dtype(tok)
        for start in range(0, len(texts), batch_pieces):  # bounded memory for large corpora
            chunk = texts[start : start + batch_pieces]
            encoded = iter(tok.encode_batch([t for t in chunk if t is not None]))
            for t in chunk:
                ids = [eot] if t is None else next(encoded).ids
                pieces.append(np.asarray(ids, dtype=dtype))
    finally:
        tok.encode_special_tokens = saved
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=_id_dtype(tok))


def encode_prompt(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text).ids


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def end_of_text_id(tok: Tokenizer) -> int | None:
    return tok.token_to_id(END_OF_TEXT)


def load(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def kind_of(tok: Tokenizer) -> str:
    """char (a WordLevel over characters) or bpe (byte-level BPE: trained here or pretrained)."""
    return "char" if isinstance(tok.model, models.WordLevel) else "bpe"


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """(V,) int64: the UTF-8 bytes each token id contributes to the decoded text.

    char level: the character's UTF-8 length; `<unk>` counts 1 (it stands for one unknown
    character). Byte-level BPE: every character of a token's string stands for exactly one
    byte (GPT-2's byte-to-unicode alphabet), so the count is exact even for tokens that hold
    part of a multi-byte character. Special tokens (end-of-text) contribute 0.
    Bits per byte = sum of token NLLs / ln 2 / sum of these lengths."""
    vocab = tok.get_vocab(with_added_tokens=True)
    out = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special} | {END_OF_TEXT}
    if kind_of(tok) == "char":
        for token, i in vocab.items():
            out[i] = 0 if token in special else 1 if token == UNK else len(token.encode("utf-8"))
        return out
    if not isinstance(tok.decoder, decoders.ByteLevel):
        raise ValueError("bytes per token are known for character and byte-level BPE tokenizers only")
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    for token, i in vocab.items():
        if token in special:
            continue
        if not set(token) <= alphabet:
            raise ValueError(f"token {token!r} (id {i}) is not in the byte-level alphabet")
        out[i] = len(token)
    return out

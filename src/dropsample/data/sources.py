"""Where a corpus's text comes from, what identifies that version of it, and reading its
documents split by split through `datasets`.

    resolve(cfg, root, log) -> Source   no text is read; the network is used only to
                                        download a file once or to ask the hub which
                                        commit `data.revision` names
    Source.split_names()                the splits the source has
    Source.documents(split, cfg)        that split's documents, capped, streamed

The first source that applies is read:

    data.path                               a local file or folder
    $DROPSAMPLE_DATA_DIR/<data.local_copy>  when both are set and it exists
    data.url                                downloaded once into the cache (download.py)
    data.name                               an existing local file or folder, else a hub id

All of them end in `datasets.load_dataset` (local uncompressed text files: in open(), as its
text builder would read them): local files through the builder their extension
names (text files are read whole, one document per file), a folder's files assigned to
splits by datasets' own file-name rules (train*, valid*/validation*/val*/dev*, test*), a hub
dataset by id, config and resolved commit. The identity (files: path, size and mtime, as
datasets itself keys local files; downloads: their sha256; hub: the commit) is what the
tokenized-data cache is keyed by, so changing the data never reads a stale cache and a cache
hit reads no text at all.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dropsample.data import download
from dropsample.errors import DataError

# file extension (compression suffix removed) -> datasets builder
BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
            ".csv": "csv", ".tsv": "csv"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def offline() -> bool:
    """HF_DATASETS_OFFLINE / HF_HUB_OFFLINE: dropsample then touches no network at all."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def local_fix(cfg, example: str = "file_or_folder") -> str:
    """How to read the corpus without the network, for the end of an error line."""
    also = f" or DROPSAMPLE_DATA_DIR=/folder/holding/{cfg.local_copy}" if cfg.local_copy else ""
    return f"use a local copy instead: data.path=/path/to/{example}{also}"


def data_dir() -> Path | None:
    value = os.environ.get("DROPSAMPLE_DATA_DIR")
    return Path(value).expanduser() if value else None


@dataclass
class Source:
    dataset: str  # what the summary calls it: a path, a URL or a hub id
    origin: str  # which setting chose it: data.path, DROPSAMPLE_DATA_DIR, data.url, data.name
    identity: dict  # what the tokenized cache is keyed by
    builder: str | None = None  # files: text, json, parquet or csv
    data_files: dict[str, list[str]] | None = None  # files: split -> files
    hub_id: str | None = None
    config: str | None = None
    revision: str | None = None  # hub: the commit read
    streaming: bool = True
    _splits: dict | None = field(default=None, repr=False)

    def split_names(self) -> list[str]:
        if self.data_files is not None:
            return list(self.data_files)
        return list(self._load())

    def split_label(self, split: str) -> str:
        """How sources name a split: its file when it is one file, else the split's name."""
        files = (self.data_files or {}).get(split, [])
        return Path(files[0]).name if len(files) == 1 else split

    def documents(self, split: str, cfg) -> tuple[list[str], bool]:
        """(documents, cut by a cap) of one split."""
        texts = self._texts(split, cfg.text_column)
        if cfg.documents == "wikitext":
            texts = wikitext_articles(texts)
        try:
            return take(texts, cfg.max_docs, cfg.max_chars)
        except DataError:
            raise
        except Exception as exc:  # datasets/pyarrow reading a damaged or mistyped file
            raise DataError(f"{self._key}: cannot read split {split!r} of {self.dataset} ({_why(exc)})") from None

    @property
    def _key(self) -> str:
        return {"data.name": "data.name", "data.url": "data.url",
                "DROPSAMPLE_DATA_DIR": "data.local_copy"}.get(self.origin, "data.path")

    def _load(self):
        """The datasets (streaming) dataset dict, opened once."""
        if self._splits is not None:
            return self._splits
        import datasets

        datasets.disable_progress_bars()
        # failures reach the user as one DataError line; datasets would log them a second time
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        try:
            if self.data_files is not None:
                kwargs = {"sample_by": "document"} if self.builder == "text" else {}
                if self.builder == "csv" and any(_stem_suffix(f) == ".tsv" for fs in self.data_files.values() for f in fs):
                    kwargs["delimiter"] = "\t"
                self._splits = datasets.load_dataset(self.builder, data_files=self.data_files,
                                                     streaming=self.streaming, **kwargs)
            else:
                self._splits = datasets.load_dataset(self.hub_id, self.config, revision=self.revision,
                                                     streaming=self.streaming)
        except Exception as exc:
            text = _first_line(exc)
            if self.hub_id and "config" in text.lower():  # a missing or unknown configuration
                raise DataError(f"data.config: {text}") from None
            hint = "" if self.data_files is not None else "; use a local copy instead: data.path=/path/to/folder"
            raise DataError(f"{self._key}: cannot open {self.dataset} ({_why(exc)}){hint}") from None
        return self._splits

    def _plain_text(self) -> bool:
        """Local uncompressed text files, streamed: read with open() exactly as datasets' text builder
        reads them (whole, UTF-8, universal newlines), without importing datasets (~0.7 s of start-up)."""
        return self.builder == "text" and self.streaming and self.data_files is not None and all(
            not f.lower().endswith(COMPRESSION) and Path(f).is_file() for fs in self.data_files.values() for f in fs)

    def _rows(self, split: str) -> Iterator[dict]:
        if not self._plain_text():
            return iter(self._load()[split])
        files = self.data_files[split]

        def read() -> Iterator[dict]:
            for name in files:
                # what datasets' text builder does with sample_by="document": one row per file
                with open(name, encoding="utf-8") as f:
                    yield {"text": f.read()}

        return read()

    def _texts(self, split: str, column: str) -> Iterator[str]:
        rows = self._rows(split)
        label = f"split {split!r} of {self.dataset}"
        try:
            first = next(rows)
        except StopIteration:
            return
        except Exception as exc:
            raise DataError(f"{self._key}: cannot read {label} ({_why(exc)})") from None
        if column not in first:
            raise DataError(f"data.text_column: no column {column!r} in {label}; it has "
                            f"{', '.join(map(str, first))}: set data.text_column to the one holding the text")
        for row in _chain(first, rows):
            value = row[column]
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"data.text_column: column {column!r} of {label} holds "
                                f"{type(value).__name__} values, not text; name a text column")
            yield value


def _chain(first, rest):
    yield first
    yield from rest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _why(exc: BaseException) -> str:
    """`Type: first line` of the root cause (datasets wraps parser errors in generic ones)."""
    seen = 0
    while exc.__cause__ is not None and seen < 10:
        exc, seen = exc.__cause__, seen + 1
    return f"{type(exc).__name__}: {_first_line(exc)}"


# ---------------------------------------------------------------------------
# Documents


HEADING = re.compile(r" = [^=](?:.*[^=])? = ?")  # " = Title = ", not " = = Section = = "


def wikitext_articles(rows: Iterable[str]) -> Iterator[str]:
    """WikiText's lines regrouped into articles: a top-level heading line ` = Title = `
    starts a new one; anything before the first heading belongs to the first article.
    Rows may be single lines (the hub's layout) or whole files (a local copy)."""
    current: list[str] = []
    seen_heading = False
    for text in rows:
        for line in text.splitlines(keepends=True) or ["\n"]:
            if not line.endswith("\n"):
                line += "\n"
            if HEADING.fullmatch(line[:-1]):
                if seen_heading and current:
                    yield "".join(current)
                    current = []
                seen_heading = True
            current.append(line)
    if current:
        yield "".join(current)


def take(texts: Iterable[str], max_docs: int | None, max_chars: int | None) -> tuple[list[str], bool]:
    """The first max_docs documents, and at most max_chars characters: documents are kept
    whole except the last, which is cut at the cap. Stops reading at the cap (streaming).
    Empty documents are skipped (they would only add a second end-of-text in a row)."""
    docs: list[str] = []
    chars = 0
    for text in texts:
        if not text:
            continue
        if max_docs is not None and len(docs) >= max_docs:
            return docs, True
        if max_chars is not None and chars + len(text) > max_chars:
            if max_chars > chars:
                docs.append(text[: max_chars - chars])
            return docs, True
        docs.append(text)
        chars += len(text)
    return docs, False


# ---------------------------------------------------------------------------
# Resolving the settings to a source


def resolve(cfg, root: Path, log=print) -> Source:
    """The Source the data settings point at (see the module docstring for the order)."""
    if cfg.path:
        return _local(Path(str(cfg.path)).expanduser(), "data.path", cfg)
    folder = data_dir()
    if folder is not None and cfg.local_copy:
        candidate = folder / str(cfg.local_copy)
        if candidate.exists():
            return _local(candidate, "DROPSAMPLE_DATA_DIR", cfg)
        log(f"no local copy at {candidate}; looking further")
    if cfg.url:
        fix = local_fix(cfg, download.file_name(cfg.url))
        path = download.fetch(str(cfg.url), root / "downloads", sha256=cfg.sha256, fix=fix, offline=offline(), log=log)
        return Source(
            dataset=str(cfg.url), origin="data.url", builder=_builder_of(path),
            data_files={"train": [str(path)]}, streaming=cfg.streaming,
            identity={"url": str(cfg.url), "sha256": download.checksum_of(path)},
        )
    name = str(cfg.name)
    path = Path(name).expanduser()
    if path.exists():
        return _local(path, "data.name", cfg)
    if name.startswith((".", "/", "~")) or path.suffix.lower() in BUILDERS:
        raise DataError(f"data.name: {name} does not exist; give an existing file or folder, or a hub dataset id")
    return _hub(cfg, root, log)


def _stem_suffix(path: str) -> str:
    p = Path(path.lower())
    if p.suffix in COMPRESSION:
        p = p.with_suffix("")
    return p.suffix


def _builder_of(path: Path | str) -> str:
    """A single file's builder; files with another extension are read as text."""
    return BUILDERS.get(_stem_suffix(str(path)), "text")


def _local(path: Path, origin: str, cfg) -> Source:
    key = "data.name" if origin == "data.name" else "data.path"
    if not path.exists():
        where = f"{key}: {path}"
        raise DataError(f"{where} does not exist; point it at a file or folder (parquet, json/jsonl, csv or text)")
    if path.is_file():
        files = {"train": [str(path.resolve())]}
        builder = _builder_of(path)
    else:
        files, builder = _folder_files(path, key)
    identity = {"builder": builder, "files": {split: [_stat(f) for f in fs] for split, fs in files.items()}}
    return Source(dataset=str(path), origin=origin, identity=identity, builder=builder, data_files=files,
                  streaming=cfg.streaming)


def _folder_files(folder: Path, key: str) -> tuple[dict[str, list[str]], str]:
    """Split -> files of a folder, by datasets' own split naming, and the one format they share."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(folder))
        found = DataFilesDict.from_patterns(patterns, str(folder))
    except Exception as exc:
        raise DataError(f"{key}: no data files in {folder} ({_first_line(exc)}); put parquet, json/jsonl, csv or "
                        "txt files there") from None
    builders = {BUILDERS[_stem_suffix(f)] for fs in found.values() for f in fs if _stem_suffix(f) in BUILDERS}
    if not builders:
        raise DataError(f"{key}: no parquet, json/jsonl, csv or txt files in {folder}")
    if len(builders) > 1:
        raise DataError(f"{key}: {folder} mixes {', '.join(sorted(builders))} files; keep one format per folder")
    builder = builders.pop()
    files = {}
    for split, fs in found.items():
        keep = sorted(str(f) for f in fs if BUILDERS.get(_stem_suffix(str(f))) == builder)
        if keep:
            files[str(split)] = keep
    return files, builder


def _stat(path: str) -> list:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _hub(cfg, root: Path, log) -> Source:
    """A hub dataset at the commit `data.revision` names (the last one seen, offline)."""
    name, asked = str(cfg.name), cfg.revision
    index = root / "hub-revisions.json"
    entry = f"{name}@{asked or 'main'}"
    if offline():
        sha = _read_index(index).get(entry)
        if sha is None:
            raise DataError(f"data.name: hub dataset {name!r} is not available offline (HF_DATASETS_OFFLINE/"
                            f"HF_HUB_OFFLINE set, never read here); run once online, or {local_fix(cfg)}")
        log(f"offline: using {name} at commit {sha[:12]}, the last one read for revision {asked or 'main'}")
    else:
        sha = _hub_commit(name, asked, local_fix(cfg))
        _write_index(index, {**_read_index(index), entry: sha})
    return Source(dataset=name, origin="data.name", hub_id=name, config=cfg.config, revision=sha,
                  streaming=cfg.streaming, identity={"hub": name, "config": cfg.config, "commit": sha})


def _hub_commit(name: str, revision: str | None, fix: str) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return HfApi().dataset_info(name, revision=revision).sha
    except GatedRepoError:
        raise DataError(f"data.name: the hub dataset {name!r} is gated: accept its terms on the hub and log in "
                        "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise DataError(f"data.name: no dataset {name!r} on the hub (or it is private) and no such local file or "
                        "folder; check the id or the path") from None
    except RevisionNotFoundError:
        raise DataError(f"data.revision: the hub dataset {name!r} has no revision {revision!r}; give a branch, "
                        "tag or commit it has") from None
    except HFValidationError:
        raise DataError(f"data.name: {name!r} is neither an existing file or folder nor a hub dataset id "
                        "(owner/name)") from None
    except Exception as exc:  # no network, DNS, TLS, HTTP 5xx
        raise DataError(f"data.name: cannot reach the hub for {name!r} ({type(exc).__name__}: {_first_line(exc)}); "
                        f"{fix}") from None


def _read_index(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_index(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)

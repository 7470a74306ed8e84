"""Roles from splits: which split trains, validates and tests, and carving the missing ones
from the training split.

    build(cfg, source) -> Corpus (documents per role, where each came from, what was carved)

`data.splits.<role>` names a split, which must exist. `null` means: val -> the source's
validation split (validation, valid, val or dev) when it has one not used by another role,
else the last `val_fraction` of train; test -> its test split (test, testing) likewise, else
carved only when `test_fraction` > 0. Carving takes, in order, train, then test, then val
(nanoGPT's 90/10 for one text): whole documents when there are enough of them for every
carved role to get at least one (n x fraction >= 1), else characters of the documents laid
end to end (a single text, such as Tiny Shakespeare, is cut at a character position).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dropsample.errors import DataError

ROLES = ("train", "val", "test")
ALIASES = {"val": ("validation", "valid", "val", "dev"), "test": ("test", "testing")}


@dataclass
class Corpus:
    name: str
    docs: dict[str, list[str]]  # role (train/val/test) -> documents
    sources: dict[str, str]  # role -> human-readable origin, e.g. "input.txt[0:1003854]"
    carved: dict | None = None  # {"from", "by", "val_fraction", "test_fraction"} when roles were carved
    capped: list[str] = field(default_factory=list)  # roles whose split a cap cut short

    @property
    def has_documents(self) -> bool:
        """More than one document somewhere: the joins need an end-of-text token."""
        return any(len(d) > 1 for d in self.docs.values())

    def stats(self) -> dict[str, dict[str, int]]:
        return {role: {"documents": len(d), "characters": sum(map(len, d)),
                       "bytes": sum(len(t.encode("utf-8")) for t in d)} for role, d in self.docs.items()}


def choose_splits(asked: dict | None, names: list[str], dataset: str) -> dict[str, str | None]:
    """role -> split name (None: carve or leave out), checked against the splits that exist."""
    asked = dict(asked or {})
    have = ", ".join(names) or "none"
    train = asked.get("train") or "train"
    chosen: dict[str, str | None] = {}
    for role in ROLES:
        split = train if role == "train" else asked.get(role)
        if split is None:
            continue
        if split not in names:
            raise DataError(f"data.splits.{role}: {dataset} has no split {split!r} (it has: {have}); name one of "
                            f"those{'' if role == 'train' else f', or null to carve {role} from train'}")
        for other, taken in chosen.items():
            if taken == split:
                raise DataError(f"data.splits.{role}: {split!r} is already the {other} split; give each role its "
                                f"own split{'' if role == 'train' else f' (null carves {role} from train)'}")
        chosen[role] = split
    for role in ("val", "test"):
        if role not in chosen:
            used = set(chosen.values())
            chosen[role] = next((n for n in ALIASES[role] if n in names and n not in used), None)
    return chosen


def build(cfg, source, log=print) -> Corpus:
    chosen = choose_splits(cfg.splits, source.split_names(), source.dataset)
    docs, sources, capped = {}, {}, []
    for role, split in chosen.items():
        if split is None:
            continue
        docs[role], cut = source.documents(split, cfg)
        sources[role] = source.split_label(split) + (f" ({split})" if source.split_label(split) != split else "")
        if cut:
            capped.append(role)
        if not docs[role] or not any(docs[role]):
            raise DataError(f"data.splits.{role}: split {split!r} of {source.dataset} has no text"
                            f"{' in column ' + repr(cfg.text_column) if source.builder != 'text' else ''}")
    carve_val = chosen["val"] is None
    carve_test = chosen["test"] is None and cfg.test_fraction > 0
    carved = None
    if carve_val or carve_test:
        val_f = cfg.val_fraction if carve_val else 0.0
        test_f = cfg.test_fraction if carve_test else 0.0
        label = source.split_label(chosen["train"])
        parts, labels, by = carve(docs["train"], val_f, test_f, label)
        if carve_val and "val" not in parts:
            raise DataError(f"data.val_fraction: {cfg.val_fraction} of the train split is no text at all; "
                            "use more data or a larger fraction")
        docs.update(parts)
        sources.update(labels)
        carved = {"from": chosen["train"], "by": by, "val_fraction": val_f if carve_val else None,
                  "test_fraction": test_f if carve_test else None}
        log(f"carved {', '.join(r for r in ('val', 'test') if r in parts)} from the train split by {by}")
    return Corpus(str(cfg.name), {r: docs[r] for r in ROLES if r in docs}, sources, carved, capped)


def carve(docs: list[str], val_fraction: float, test_fraction: float, label: str):
    """Split one role's documents into train, test and val (in that order, val last).

    Returns ({role: documents}, {role: source label}, "documents" or "characters")."""
    n = len(docs)
    fractions = [f for f in (val_fraction, test_fraction) if f > 0]
    if n > 1 and all(int(n * f) >= 1 for f in fractions) and n - sum(int(n * f) for f in fractions) >= 1:
        n_val, n_test = int(n * val_fraction), int(n * test_fraction)
        return _cut(docs, n, n_val, n_test, label, "documents", lambda a, b: docs[a:b])
    total = sum(map(len, docs))
    n_val, n_test = int(total * val_fraction), int(total * test_fraction)
    return _cut(docs, total, n_val, n_test, label, "characters", lambda a, b: char_slice(docs, a, b))


def _cut(docs, total, n_val, n_test, label, by, piece):
    n_train = total - n_val - n_test
    unit = "" if by == "characters" else "documents "
    bounds = {"train": (0, n_train), "test": (n_train, n_train + n_test), "val": (total - n_val, total)}
    parts, labels = {}, {}
    for role, (a, b) in bounds.items():
        if role != "train" and b == a:
            continue
        parts[role] = piece(a, b)
        labels[role] = f"{label}[{unit}{a}:{b}]"
    return parts, labels, by


def char_slice(docs: list[str], start: int, end: int) -> list[str]:
    """Characters [start, end) of the documents laid end to end, still split at the
    document boundaries inside the range."""
    out, offset = [], 0
    for doc in docs:
        a, b = max(start - offset, 0), min(end - offset, len(doc))
        if a < b:
            out.append(doc[a:b])
        offset += len(doc)
        if offset >= end:
            break
    return out

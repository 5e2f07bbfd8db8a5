"""Images left out of both splits (DataSpec.exclude): a file naming them, such as the audit's own CSVs
after review. No torch here.

The file is a CSV or TSV (by its suffix) with a `path` column, read through featcache.read_csv (a cell
behind featcache's spreadsheet apostrophe, such as `'=x.png`, is read back as `=x.png`; row by row, the
path alone kept), or any other
text file of one path per line (blank lines skipped). A path is an image's id: its path relative to the
data folder, with `/` (what the audit writes; `train/17` for CIFAR-10), or an image file's absolute
path. Every entry must name an image of the data, so that a typo is an error and not an image silently
kept. Exclusions apply after featcache makes a test split, so every other image keeps its side, and
before `per_class`, which keeps the first N of what is left.

What is recorded, in the cache key (cache/key.cache_provenance) and in every run's data record: how
many images left each split and a sha256 of their sorted ids, so that the same images excluded by
another file give the same cache, and a cache made with exclusions is never one made without them.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

from ..errors import FeatcacheError
from .layouts import LABEL_FILE_SUFFIXES, table_rows

MAX_EXCLUDE_FILE_BYTES = 64 << 20  # a million paths of 60 characters
SHOWN = 3  # unmatched entries named in the error, each cut to SHOWN_CHARACTERS
SHOWN_CHARACTERS = 100


def read_exclusions(path: str | Path) -> list[str]:
    """The entries of an exclude file, as written (CSV escapes undone)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise FeatcacheError(f"exclude file {path} " + ("is not a file" if path.exists() else "does not exist"))
        if path.stat().st_size > MAX_EXCLUDE_FILE_BYTES:
            raise FeatcacheError(f"exclude file {path} is over {MAX_EXCLUDE_FILE_BYTES:,} bytes")
        if path.suffix.lower() in LABEL_FILE_SUFFIXES:
            entries = []
            for row in table_rows(path, "exclude file"):
                if "path" not in row:
                    raise FeatcacheError(f"exclude file {path} needs a `path` column (a CSV's header row names "
                                         "its columns); or give a text file of one path per line")
                entries.append((row["path"] or "").strip())  # the path alone is kept
        else:
            try:
                entries = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
            except UnicodeDecodeError:
                raise FeatcacheError(f"exclude file {path} is not UTF-8 text") from None
    except OSError as error:
        raise FeatcacheError(f"cannot read exclude file {path}: {error.strerror}") from None
    return [entry for entry in entries if entry]


def excluded_ids(entries: list[str], samples: list[tuple[str, str]], where: str) -> set[str]:
    """The ids of `samples` ((id, file path or None)) that `entries` name, by id or by absolute path;
    an entry naming none of them is a FeatcacheError (the first SHOWN named)."""
    by_id = {identity for identity, _ in samples}
    by_file = {os.path.normpath(os.path.abspath(file)): identity for identity, file in samples if file is not None}
    chosen, unknown = set(), []
    for entry in entries:
        if os.path.isabs(entry):
            identity = by_file.get(os.path.normpath(entry))
        else:
            identity = posixpath.normpath(Path(entry).as_posix())
            identity = identity if identity in by_id else None
        if identity is None:
            unknown.append(entry)
        else:
            chosen.add(identity)
    if unknown:
        shown = ", ".join(repr(entry[:SHOWN_CHARACTERS]) + ("..." if len(entry) > SHOWN_CHARACTERS else "")
                          for entry in unknown[:SHOWN]) + (", ..." if len(unknown) > SHOWN else "")
        raise FeatcacheError(f"{len(unknown)} of the {len(entries)} excluded paths are not images of {where}: "
                             f"{shown} (paths are relative to the data folder, with /, or absolute)")
    return chosen


def leave_out(exclude: str | Path, samples: dict[str, list[tuple]], classes, where: str) -> tuple[dict, dict]:
    """(samples without the images the file `exclude` names, the record): `samples` per split are (id,
    class name, file path or None); excluding every training image of a class in `classes` (every class
    where None) is a FeatcacheError, since the class and its test images would vanish without a word."""
    chosen = excluded_ids(read_exclusions(exclude),
                          [(identity, path) for split in samples.values() for identity, _, path in split], where)
    removed = {name: [sample[0] for sample in samples.get(name, []) if sample[0] in chosen] for name in ("train", "test")}
    kept = {name: [sample for sample in split if sample[0] not in chosen] for name, split in samples.items()}
    before = {name for _, name, _ in samples["train"]}
    emptied = sorted((before - {name for _, name, _ in kept["train"]}) & set(classes or before))
    if emptied:
        raise FeatcacheError(f"{exclude} excludes every training image of {', '.join(emptied)}: leave the class "
                             "out with `classes` instead, or keep some of its images")
    return kept, exclusion_record(exclude, removed)


def exclusion_record(path: str | Path, removed: dict[str, list[str]]) -> dict:
    """What the cache key and every run record of the exclusions: the file (not in the key), the images
    removed from each split and a sha256 of their sorted ids (in the key)."""
    ids = sorted(identity for names in removed.values() for identity in names)
    digest = hashlib.sha256("\0".join(ids).encode()).hexdigest()
    return {"file": str(Path(path).resolve()), "images": {split: len(names) for split, names in removed.items()},
            "ids_sha256": digest}

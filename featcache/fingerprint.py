"""Content hashes of image files, remembered under their stat so that a repeated command re-reads only
the files that changed.

The table lives beside the caches (`<cache_dir>/file-hashes.npz`, plain numpy arrays: it loads in a
fraction of a second for a million files, where JSON would not). A file's remembered sha256 is used
only when its (size, mtime_ns, ctime_ns, inode) are those recorded and it was last changed more than
RACY_NS before it was hashed: git's "racily clean" rule, since a file written in the same timestamp
tick as its hashing could change again without its mtime moving. ctime catches a rewrite whose mtime
was put back. No torch here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import numpy as np

TABLE = "file-hashes.npz"
RACY_NS = 2_000_000_000  # changed less than 2 s before hashing: not trusted, hashed again next time


def file_sha256(path: str) -> bytes:
    """The file's sha256 as 64 hex digits (bytes): the form the table stores and the fingerprint hashes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().encode()


class FileHashes:
    """path -> sha256 of its bytes (hex), from the table when the file's stat says it has not changed.
    Lean on purpose: at a million files every microsecond per file is a second per command."""

    def __init__(self, folder: Path | None = None, rehash: bool = False):
        self.path = Path(folder) / TABLE if folder is not None else None
        self.entries: dict[str, tuple] = {}
        self.hashed = 0  # files read in this run
        if self.path is not None and self.path.is_file() and not rehash:
            self.entries = _load(self.path)
        self.changed = False

    def digest(self, path: str) -> bytes:
        stat = os.stat(path)
        known = self.entries.get(path)
        current = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        if known is not None and known[:4] == current and known[5] - RACY_NS > current[1] and known[5] - RACY_NS > current[2]:
            return known[4]
        digest = file_sha256(path)
        self.entries[path] = (*current, digest, time.time_ns())
        self.hashed += 1
        self.changed = True
        return digest

    def save(self) -> None:
        """Write the table (temporary name, then rename) if this run hashed anything; a folder that
        cannot be written only means the next run hashes again."""
        if self.path is None or not self.changed:
            return
        keys = list(self.entries)
        columns = list(zip(*self.entries.values()))
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp.npz")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(partial, paths=np.array([os.fsencode(key) for key in keys], dtype=bytes), size=np.array(columns[0], dtype=np.int64),
                     mtime_ns=np.array(columns[1], dtype=np.int64), ctime_ns=np.array(columns[2], dtype=np.int64),
                     inode=np.array(columns[3], dtype=np.uint64), sha256=np.array(columns[4], dtype="S64"),
                     hashed_ns=np.array(columns[5], dtype=np.int64))
            os.replace(partial, self.path)
        except OSError:  # a read-only or full disk: the table is a shortcut, the command's own writes report it
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)


def _load(path: Path) -> dict[str, tuple]:
    try:
        with np.load(path, allow_pickle=False) as table:
            columns = [table[name].tolist() for name in ("size", "mtime_ns", "ctime_ns", "inode", "sha256", "hashed_ns")]
            paths = [os.fsdecode(name) for name in table["paths"].tolist()]
            return dict(zip(paths, zip(*columns)))
    except (OSError, ValueError, KeyError):  # a damaged table is only a lost shortcut
        return {}

"""Content hashes of image files, remembered under their stat so that a repeated command re-reads only
the files that changed.

A file's digest is the sha256 of its bytes, except for an image whose EXIF orientation tag is other than 1
(a phone photo taken sideways): featcache decodes it upright since 0.5 (datasets.read_image), so its digest
is sha256("featcache oriented <tag> " + the bytes' sha256) and a cache made from it sideways before is
never reused; every other image keeps its digest, and so its caches.

The table lives beside the caches (`<cache_dir>/file-hashes-2.npz`, plain numpy arrays: it loads in a
fraction of a second for a million files, where JSON would not). A file's remembered sha256 is used
only when its (size, mtime_ns, ctime_ns, inode) are those recorded and it was last changed more than
RACY_NS before it was hashed: git's "racily clean" rule, since a file written in the same timestamp
tick as its hashing could change again without its mtime moving. ctime catches a rewrite whose mtime
was put back.

The table keeps the files of the last lookup that read any first, in its order, so that a repeated lookup matches rows by
comparing one joined string and the stats as arrays: at a million files a Python loop beyond the one
os.stat per file would cost seconds. No torch here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError, warn
from ..files import write_file
from ..npz import read_npz
from ..ranks import is_main_process

TABLE = "file-hashes-2.npz"  # 2: digests with the EXIF orientation (file-hashes.npz's are the bytes' alone)
RACY_NS = 2_000_000_000  # changed less than 2 s before hashing: not trusted, hashed again next time
STAT = np.dtype([("size", "i8"), ("mtime_ns", "i8"), ("ctime_ns", "i8"), ("inode", "u8")])
COLUMNS = (*STAT.names, "sha256", "hashed_ns")


def file_sha256(path: str) -> bytes:
    """The file's sha256 as 64 hex digits (bytes): the form the table stores and the fingerprint hashes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().encode()


def exif_orientation(path: str) -> int:
    """The image's EXIF orientation tag as datasets.read_image reads it (1, upright, where it has none or
    it cannot be read: a file that cannot be decoded is refused by read_image, not here). Header only."""
    from PIL import Image

    from .datasets import FORMATS, orientation

    try:
        with warnings.catch_warnings():  # a huge image: read_image refuses it in its own line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as image:
                return orientation(image)
    except Exception:  # a damaged or foreign file: read_image names it when it decodes
        return 1


def file_digest(path: str) -> bytes:
    """What the fingerprint and the made split hash for an image file: its bytes' sha256 (64 hex digits), or
    for an image turned by its EXIF orientation, the sha256 of that and the tag (see the module's text)."""
    digest = file_sha256(path)
    orientation = exif_orientation(path)
    if orientation == 1:
        return digest
    return hashlib.sha256(b"featcache oriented %d %s" % (orientation, digest)).hexdigest().encode()


def stat_rows(paths: list[str]) -> np.ndarray:
    """(size, mtime_ns, ctime_ns, inode) of each path: the one per-file loop of a lookup. A path that is not
    a readable regular file (a folder named like an image, a broken link) raises FeatcacheError naming it."""
    try:
        rows = np.fromiter(((s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for s in map(os.stat, paths)),
                           dtype=[("mode", "u4"), *STAT.descr], count=len(paths))
    except OSError as error:
        raise FeatcacheError(f"cannot read image {error.filename}: {error.strerror}") from None
    irregular = np.flatnonzero((rows["mode"] & stat.S_IFMT(0o170000)) != stat.S_IFREG)
    if len(irregular):
        raise FeatcacheError(f"cannot read image {paths[irregular[0]]}: not a regular file")
    return rows[list(STAT.names)]


class FileHashes:
    """path -> file_digest (hex), from the table when the file's stat says it has not changed."""

    def __init__(self, folder: Path | None = None, rehash: bool = False):
        self.path = Path(folder) / TABLE if folder is not None else None
        self.paths: list[str] = []
        self.columns = _empty()
        if self.path is not None and self.path.is_file() and not rehash:
            self.paths, self.columns = _load(self.path)
        self.changed = False

    def digests(self, paths: list[str]) -> np.ndarray:
        """Each path's file_digest (S64 array, so `.tobytes()` is the digests joined), reading only files whose
        stat differs from the table's or that were racily clean when hashed."""
        current = stat_rows(paths)
        leads = self._leads_with(paths)
        rows = np.arange(len(paths)) if leads else self._rows_of(paths)
        known = rows >= 0
        old = {name: column[:len(paths)] if leads else column[np.where(known, rows, 0)] if len(column)
               else np.zeros(len(paths), column.dtype) for name, column in self.columns.items()}
        trusted = known & (old["hashed_ns"] - RACY_NS > current["mtime_ns"]) & (old["hashed_ns"] - RACY_NS > current["ctime_ns"])
        for name in STAT.names:
            trusted &= old[name] == current[name]
        stale = np.flatnonzero(~trusted)
        sha256, hashed_ns = (old["sha256"].copy(), old["hashed_ns"].copy()) if len(stale) else (old["sha256"], old["hashed_ns"])
        for index in stale:
            hashed_ns[index] = time.time_ns()  # before reading: a change during a long read stays racy
            sha256[index] = file_digest(paths[index])
        if len(stale):  # the table changes: these files first, then the rows of other lookups (a lookup
            # that changes nothing leaves the table as it is: one command's lookups in two orders, the made
            # split's and the fingerprint's, would otherwise rewrite it every run)
            rest = np.setdiff1d(np.arange(len(self.paths)), rows[known])
            self.columns = {**{name: np.concatenate([current[name], self.columns[name][rest]]) for name in STAT.names},
                            "sha256": np.concatenate([sha256, self.columns["sha256"][rest]]),
                            "hashed_ns": np.concatenate([hashed_ns, self.columns["hashed_ns"][rest]])}
            self.paths = list(paths) + [self.paths[index] for index in rest]
            self.changed = True
        return sha256

    def _leads_with(self, paths: list[str]) -> bool:
        return len(self.paths) >= len(paths) and self.paths[:len(paths)] == paths

    def _rows_of(self, paths: list[str]) -> np.ndarray:
        """The table row of each path, -1 where it has none."""
        index = {path: row for row, path in enumerate(self.paths)}
        return np.fromiter((index.get(path, -1) for path in paths), dtype=np.int64, count=len(paths))

    def save(self) -> None:
        """Write the table (temporary name, then rename) if this run changed it; a folder that cannot be
        written only means the next run hashes again."""
        if self.path is not None and self.changed:
            _save_table(self.path, paths=_joined(self.paths), **self.columns)


def _joined(strings) -> np.ndarray:
    """Strings as one NUL-separated byte array: a million paths load in a fraction of a second."""
    return np.frombuffer(os.fsencode("\0".join(strings)), dtype=np.uint8)


def _save_table(path: Path, **arrays) -> None:
    """np.savez through featcache.files (whole or not at all). A read-only or full disk only loses the
    shortcut: the next run hashes or lists again, and the command's own writes report the disk."""
    with contextlib.suppress(FeatcacheError):
        write_file(path, lambda handle: np.savez(handle, **arrays))


def _empty() -> dict[str, np.ndarray]:
    return {**{name: np.empty(0, dtype=STAT[name]) for name in STAT.names},
            "sha256": np.empty(0, dtype="S64"), "hashed_ns": np.empty(0, dtype=np.int64)}


def _load(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The table's paths and columns; a damaged or foreign table is only a lost shortcut."""
    try:
        table = read_npz(path, (*COLUMNS, "paths"))
        columns = {name: table[name] for name in COLUMNS}
        blob = table["paths"].tobytes()
        paths = os.fsdecode(blob).split("\0") if blob else []
        expected = _empty()
        if all(len(column) == len(paths) and column.dtype == expected[name].dtype for name, column in columns.items()):
            return paths, columns
        reason = "its columns differ in length or type"
    except (OSError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())[:120] or type(error).__name__
    if is_main_process():  # every torchrun rank reads the table: one says so
        warn(f"{path} is damaged ({reason}); every image's content hash is read again")
    return [], _empty()


LISTINGS = "folder-listings-3.npz"  # 3: skipped entries listed ("/<reason>/<name>"); 2 listed sub-folders


class FolderListings:
    """Each class folder's sorted image names, remembered beside the file hashes under the folder's
    (mtime_ns, ctime_ns): creating, removing or renaming an entry changes both, so the folder is listed
    again; so is one that changed within RACY_NS of being listed. At a million files this saves the
    listing's second (os.listdir, sort, filter) for one os.stat per folder."""

    def __init__(self, folder: Path | None = None, rehash: bool = False):
        self.path = Path(folder) / LISTINGS if folder is not None else None
        self.entries: dict[str, tuple[int, int, int, list[str]]] = {}
        self.changed = False
        if self.path is not None and self.path.is_file() and not rehash:
            self.entries = _load_listings(self.path)

    def names(self, folder: str, list_names) -> list[str]:
        """list_names(folder), or the remembered result when the folder has not changed since."""
        stat = os.stat(folder)
        known = self.entries.get(folder)
        if known is not None and known[:2] == (stat.st_mtime_ns, stat.st_ctime_ns) \
                and known[2] - RACY_NS > max(stat.st_mtime_ns, stat.st_ctime_ns):
            return known[3]
        listed_ns = time.time_ns()  # before listing: an entry added meanwhile makes the folder racy
        names = list_names(folder)
        self.entries[folder] = (stat.st_mtime_ns, stat.st_ctime_ns, listed_ns, names)
        self.changed = True
        return names

    def save(self) -> None:
        """Write the listings (temporary name, then rename) if this run listed a folder; a folder that
        cannot be written only means the next run lists again."""
        if self.path is None or not self.changed:
            return
        columns = list(zip(*self.entries.values()))
        _save_table(self.path, folders=_joined(self.entries), mtime_ns=np.array(columns[0], dtype=np.int64),
                    ctime_ns=np.array(columns[1], dtype=np.int64), listed_ns=np.array(columns[2], dtype=np.int64),
                    counts=np.array([len(names) for names in columns[3]], dtype=np.int64),
                    names=_joined(name for names in columns[3] for name in names))


def _load_listings(path: Path) -> dict[str, tuple[int, int, int, list[str]]]:
    """The remembered listings; a damaged table is only a lost shortcut."""
    try:
        table = read_npz(path, ("folders", "mtime_ns", "ctime_ns", "listed_ns", "counts", "names"))
        folders = os.fsdecode(table["folders"].tobytes()).split("\0")
        stats = zip(table["mtime_ns"].tolist(), table["ctime_ns"].tolist(), table["listed_ns"].tolist())
        counts = table["counts"].tolist()
        blob = table["names"].tobytes()
        names = os.fsdecode(blob).split("\0") if blob else []
        if len(folders) == len(counts) and sum(counts) == len(names):
            ends = np.cumsum([0, *counts]).tolist()
            return {folder: (*stat, names[start:stop])
                    for folder, stat, start, stop in zip(folders, stats, ends[:-1], ends[1:])}
        reason = "its counts do not match its names"
    except (OSError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())[:120] or type(error).__name__
    if is_main_process():
        warn(f"{path} is damaged ({reason}); every class folder is listed again")
    return {}

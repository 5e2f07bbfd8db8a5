"""Shards: extraction's unit of work and of durability, and the assembly of shards into the cache file.

A shard is a fixed range of consecutive rows of one split. It is written whole to a temporary file,
fsynced and atomically renamed, and carries its own record (key, row range, shard size, batch size,
sha256 of its feature bytes), so a shard on disk under its final name is done, and nothing else is:
no manifest, no progress counter that could reach the disk before the rows it counts. Any number of
processes can write shards of one cache side by side. When all are done they are verified and
copied in order into the single HDF5 cache file, which keeps each shard's checksum for `verify`.

No torch here: `featcache verify` and finding a finished cache must not pay for importing it.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import FeatcacheError
from ..files import FLAGS, new_file, same_file
from .layout import attributes_problem, dataset_problem
from .checksums import SPLITS, features_sha256, verify_file
from .key import shard_folder

SHARD_FORMAT = "featcache-shard"
CHUNK_ROWS = 256  # HDF5 chunk rows of the assembled file; one chunk holds one view of up to 256 rows


@dataclass(frozen=True)
class Shard:
    split: str
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.h5"

    def __len__(self) -> int:
        return self.stop - self.start

    def view_count(self, views: int) -> int:
        """Backbone views in this shard: every training row has 1 + `views`, every test row one."""
        return len(self) * (1 + views if self.split == "train" else 1)


def feature_bytes(shards: list[Shard], views: int, dim: int) -> int:
    """Bytes of float32 features the shards hold: on disk as shards, and again in the assembled file."""
    return sum(shard.view_count(views) for shard in shards) * dim * 4


def plan_shards(counts: dict[str, int], shard_size: int) -> list[Shard]:
    """Every shard of a cache, training split first, each split cut from row 0 in steps of shard_size
    (ExtractConfig's, at least 1)."""
    return [Shard(split, index, start, min(start + shard_size, counts[split]))
            for split in SPLITS for index, start in enumerate(range(0, counts[split], shard_size))]


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX: the directory entry needs its own fsync)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def environment_error(error: OSError, folder: Path, what: str, needed: int | None = None) -> FeatcacheError:
    """One line for a failed write: which folder, and for a full disk how much room there is."""
    code = getattr(error, "errno", None)
    if code == errno.ENOSPC or "No space left" in str(error) or "errno = 28" in str(error):
        free = free_bytes(folder)
        need = f"; the cache needs {megabytes(needed)} more and {megabytes(free)} is free" if needed is not None \
            else f"; {megabytes(free)} is free"
        return FeatcacheError(f"no room left in {folder} while {what}{need}. Finished shards are kept: make room "
                              "and re-run the same command to resume")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return FeatcacheError(f"cannot write to {folder} while {what}: {os.strerror(code)}")
    if code == errno.ENOENT:
        return FeatcacheError(f"folder {folder} disappeared while {what}; re-run the same command to start again")
    return FeatcacheError(f"{what} in {folder} failed: {error}")


def free_bytes(folder: Path) -> int:
    """Free space on the filesystem that holds `folder` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.2f} MB"


def write_shard(folder: Path, shard: Shard, features: np.ndarray, record: dict, room_needed: int) -> None:
    """Commit one shard: HDF5 built in memory, written with plain file I/O to a temporary name,
    fsynced, renamed into place, and the rename fsynced.

    Building in memory keeps HDF5's library state out of a failing write: a full disk is an ordinary
    OSError from os.write, and the temporary file is removed. `room_needed` is what this run still has
    to write (this shard, the ones after it, the assembled file), for the message of a full disk.
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset("features", data=features)
        handle.attrs.update({**record, "format": SHARD_FORMAT, "split": shard.split, "start": shard.start,
                             "stop": shard.stop, "sha256": features_sha256(features)})
    temporary = folder / (shard.name + f".{os.getpid()}.tmp")
    try:
        descriptor = os.open(temporary, FLAGS, 0o666)  # exclusive, never through a link, the umask's mode
        try:
            view = buffer.getbuffer()
            while len(view):
                view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, folder / shard.name)
        fsync_folder(folder)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise environment_error(error, folder, f"writing shard {shard.name}", room_needed) from None


class BadShard(Exception):
    """A shard file that must not be assembled: truncated, corrupt, or not this cut of this cache."""


def _read(path: Path, with_features: bool) -> tuple[dict, np.ndarray | None]:
    try:
        with h5py.File(path, "r") as handle:  # a shard folder may be shared as a cache is: checked as one
            problem = attributes_problem(handle)
            link = handle.get("features", getlink=True)
            if not problem and with_features:
                problem = ("features is not inside the file" if not isinstance(link, h5py.HardLink)
                           else dataset_problem("features", handle["features"]))
                if not problem and handle["features"].id.get_storage_size() > path.stat().st_size:
                    problem = "features declare more bytes than the file holds"
            if problem:
                raise BadShard(f"{path.name} is not a shard featcache can read safely: {problem}")
            record = {key: (value.item() if hasattr(value, "item") else value) for key, value in handle.attrs.items()}
            features = handle["features"][()] if with_features else None
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, KeyError) as error:
        raise BadShard(f"{path.name} is unreadable ({type(error).__name__})") from None
    if record.get("format") != SHARD_FORMAT:
        raise BadShard(f"{path.name} is not a featcache shard")
    return record, features


def shard_record(path: Path) -> dict:
    """The record of a shard file (attributes only, cheap); BadShard when it cannot be read."""
    return _read(path, with_features=False)[0]


def read_shard(path: Path, shard: Shard, expected: dict) -> tuple[np.ndarray, str]:
    """A shard's features and sha256, after checking its record against `expected` and its bytes against
    the sha256 it records. FileNotFoundError when it is not there."""
    record, features = _read(path, with_features=True)
    wanted = {**expected, "split": shard.split, "start": shard.start, "stop": shard.stop}
    differing = [key for key, value in wanted.items() if record.get(key) != value]
    if differing:
        raise BadShard(f"{path.name} records other {', '.join(differing)}")
    if features_sha256(features) != record.get("sha256"):
        raise BadShard(f"{path.name} fails its sha256")
    return features, record["sha256"]


def describe_threads(threads) -> str:
    """A shard record's `threads` in words: intra-op threads per process on a CPU, 0 on a GPU."""
    if threads is None:
        return "an unrecorded thread count (an earlier featcache)"
    return "a GPU" if threads == 0 else f"{threads} thread{'s' * (threads != 1)} per process"


def check_cut(folder: Path, expected: dict) -> None:
    """Refuse to resume shards cut with another shard size, batch size or thread count: their rows would
    round differently from this run's (batch shapes change the kernels everywhere; on Intel CPUs oneDNN
    also splits small batches by thread), and a cache promises every byte is what one setting computes."""
    def setting(record):
        return (f"`shard_size` {record.get('shard_size')} `batch_size` {record.get('batch_size')} and "
                f"{describe_threads(record.get('threads'))}")

    for path in sorted(folder.glob("*.h5")):
        try:
            record = shard_record(path)
        except BadShard:
            continue  # recomputed by the scan
        if any(record.get(name) != expected[name] for name in ("shard_size", "batch_size", "threads")):
            raise FeatcacheError(
                f"the unfinished extraction in {folder} was cut with {setting(record)}, this run with "
                f"{setting(expected)}, whose rows can round differently; resume it with the same settings "
                "(torchrun gives each rank 1 thread unless OMP_NUM_THREADS is set), or pass `force` to discard "
                "its shards and start again")


def scan_shards(folder: Path, shards: list[Shard], expected: dict) -> tuple[list[Shard], list[str]]:
    """(shards still to compute, what was wrong with the files that were removed). A shard file that is
    truncated, corrupt or another cut is removed, so it is recomputed and never assembled; leftover
    temporary files of killed writers are removed too. Call it while no process is writing."""
    for temporary in folder.glob("*.tmp"):
        temporary.unlink(missing_ok=True)
    todo, removed = [], []
    for shard in shards:
        path = folder / shard.name
        if not path.exists():
            todo.append(shard)
            continue
        try:
            read_shard(path, shard, expected)
        except (BadShard, FileNotFoundError) as problem:
            removed.append(str(problem))
            path.unlink(missing_ok=True)
            todo.append(shard)
    return todo, removed


def feature_shape(split: str, rows: int, views: int, dim: int) -> tuple[int, ...]:
    return (rows, 1 + views, dim) if split == "train" else (rows, dim)


def assemble(final: Path, shards: list[Shard], expected: dict, attrs: dict, splits: dict, views: int) -> list[str]:
    """Copy verified shards in order into `<final>.<pid>.partial` (created here, never through a link), fsync it, check the copy against the shards'
    checksums, rename it to `final`, then remove the shards. A failure leaves the shards in place, so
    the next run only assembles again.

    Returns what was wrong with the shards it found damaged and removed (nothing assembled then: the
    caller recomputes them and assembles again). `splits` maps split name to (labels, ids). Training
    features are chunked (rows, 1, D): one view of every row is read without touching the others.
    """
    folder = shard_folder(final)
    missing = [shard.name for shard in shards if not (folder / shard.name).exists()]
    if missing:
        raise FeatcacheError(f"every rank finished, but shard {missing[0]} is not in {folder} ({len(missing)} "
                             "missing): is `cache_dir` the same shared folder on every node?")
    partial = final.with_name(f"{final.name}.{os.getpid()}.partial")  # this process's own name
    dim = expected["feature_dim"]
    needed = feature_bytes(shards, views, dim)
    if free_bytes(final.parent) < needed:  # HDF5 copes badly with a full disk: do not start what cannot finish
        raise environment_error(OSError(errno.ENOSPC, "No space left"), final.parent, f"assembling {final.name}",
                                needed)
    checksums, damaged = {split: [] for split in SPLITS}, []
    try:
        identity = new_file(partial)
        with h5py.File(partial, "w") as handle:
            if not same_file(handle.id.get_vfd_handle(), identity):  # a link swapped in after new_file
                raise FeatcacheError(f"{partial} was replaced while it was opened: refusing to write through it")
            handle.attrs.update({**attrs, "complete": False})
            for split, (labels, ids) in splits.items():
                group = handle.create_group(split)
                shape = feature_shape(split, len(labels), views, dim)
                chunks = (min(CHUNK_ROWS, shape[0]), 1, dim) if split == "train" else (min(CHUNK_ROWS, shape[0]), dim)
                features = group.create_dataset("features", shape=shape, dtype="float32", chunks=chunks)
                group.create_dataset("labels", data=labels)
                group.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
                for shard in (s for s in shards if s.split == split):
                    try:
                        rows, digest = read_shard(folder / shard.name, shard, expected)
                    except BadShard as problem:
                        (folder / shard.name).unlink(missing_ok=True)
                        damaged.append(str(problem))
                        continue
                    features[shard.start:shard.stop] = rows
                    checksums[split].append([shard.start, shard.stop, digest])
            handle.attrs["checksums"] = json.dumps(checksums)
            handle.attrs["complete"] = not damaged
        if damaged:
            partial.unlink()
            return damaged
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        mismatches = verify_file(partial)
        if mismatches:
            raise FeatcacheError(f"the assembled copy {partial} does not match its shards ({'; '.join(mismatches)}); "
                                 "the shards are kept: re-run to assemble again")
        os.replace(partial, final)
        fsync_folder(final.parent)
    except (OSError, RuntimeError) as error:  # h5py reports a full disk as either
        partial.unlink(missing_ok=True)
        raise environment_error(error if isinstance(error, OSError) else OSError(str(error)), final.parent,
                                f"assembling {final.name}", needed) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    return []

"""Checksums of cached features: every committed range of rows has a sha256, checked when a cache is
loaded, streamed or verified, and reported in one message when one does not match (no torch)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import FeatcacheError

SPLITS = ("train", "test")


def features_sha256(features: np.ndarray) -> str:
    """sha256 of the float32 feature bytes in C order: the same in a shard and in the assembled file."""
    return hashlib.sha256(np.ascontiguousarray(features, dtype=np.float32)).hexdigest()


def checksum_mismatches(checksums: dict, rows_of) -> list[str]:
    """'split rows a-b fail their sha256' for every recorded range whose sha256 differs from
    `rows_of(split, a, b)`."""
    return [f"{split} rows {start}-{stop - 1} fail their sha256" for split in SPLITS
            for start, stop, digest in checksums.get(split, [])
            if features_sha256(rows_of(split, start, stop)) != digest]


def verify_file(path: Path) -> list[str]:
    """Recompute every recorded checksum of a cache file, one range at a time (a cache larger than memory
    is verified too); returns the ranges that do not match."""
    try:
        with h5py.File(path, "r") as handle:
            return verify_open(handle)
    except OSError as error:
        return [f"the file cannot be read ({type(error).__name__}: {' '.join(str(error).split())})"]


def verify_open(handle: h5py.File) -> list[str]:
    """verify_file on a file already open, so that what is checked is what is then read."""
    try:
        checksums = json.loads(handle.attrs["checksums"])
        counts = {split: handle[f"{split}/features"].shape[0] for split in SPLITS}
        covered = {split: sum(stop - start for start, stop, _ in checksums.get(split, [])) for split in SPLITS}
        missing = [f"{split} rows {covered[split]}-{counts[split] - 1} have no checksum"
                   for split in SPLITS if covered[split] != counts[split]]
        return missing + checksum_mismatches(checksums, lambda split, a, b: handle[f"{split}/features"][a:b])
    except (OSError, RuntimeError, KeyError) as error:  # h5py: unreadable chunks, truncated file
        return [f"the file cannot be read ({type(error).__name__}: {' '.join(str(error).split())})"]


def damaged_cache(path: Path, problems: list[str]) -> FeatcacheError:
    """The one message for a cache whose bytes are not those its checksums recorded, wherever found."""
    return FeatcacheError(f"cache {path} is damaged: {'; '.join(problems)}; recompute it with featcache extract "
                          "--force and the same options (in Python: featcache.extract(spec, force=True))")


def verify_cache(path: Path) -> tuple[int, float]:
    """(checksummed ranges, seconds) of a complete cache whose every checksum matches; else damaged_cache."""
    from .key import open_complete_cache

    with open_complete_cache(Path(path)) as handle:  # a foreign, other-version or incomplete file: one line
        ranges = sum(len(rows) for rows in json.loads(handle.attrs["checksums"]).values())
    started = time.perf_counter()
    problems = verify_file(Path(path))
    if problems:
        raise damaged_cache(path, problems)
    return ranges, time.perf_counter() - started

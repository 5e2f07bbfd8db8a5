"""Synthetic feature caches, for measuring heads at scales no image folder here reaches (a million
images would take 14 hours to extract on this machine's CPUs).

The file is a complete featcache cache (same layout, attributes and per-range sha256 as extraction
writes), so train-head, verify and inspect read it as they read a real one. Rows are sorted by class,
as an image folder's are; each class has a random mean in 512 dimensions (or `dim`) and every view adds its own
Gaussian noise, so a linear head learns it but not perfectly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .._version import __version__
from ..errors import FeatcacheError
from ..files import new_file, same_file
from .checksums import features_sha256
from .shards import CHUNK_ROWS
from .key import BACKBONE, FEATURE_DIM, FORMAT, FORMAT_VERSION

WRITE_ROWS = 16 * CHUNK_ROWS  # rows generated and written at a time; checksummed per 256 rows, as extraction's
# shards are, so that verifying never holds more than 256 rows


def synthetic_features(rng: np.random.Generator, means: np.ndarray, labels: np.ndarray, views: int,
                       noise: float) -> np.ndarray:
    """[n, views, D] float32 (D the means' width): each row's class mean plus fresh noise per view."""
    features = rng.standard_normal((len(labels), views, means.shape[1]), dtype=np.float32)
    features *= noise
    features += means[labels][:, None]
    return features


def write_synthetic_cache(path: str | Path, rows: int, views: int = 2, classes: int = 3, test_rows: int = 3000,
                          seed: int = 0, separation: float = 0.1, noise: float = 1.0, dim: int = FEATURE_DIM) -> Path:
    """Write a cache of `rows` training rows x (1 + views) and `test_rows` test rows of `dim` features to
    `path` (temporary name, then rename); returns the path."""
    if rows < classes or test_rows < classes or views < 1:
        raise FeatcacheError("a synthetic cache needs at least one row per class and one augmented view")
    path = Path(path)
    rng = np.random.default_rng(seed)
    means = (rng.standard_normal((classes, dim)) * separation).astype(np.float32)
    names = [f"class{index}" for index in range(classes)]
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    checksums = {"train": [], "test": []}
    try:
        identity = new_file(partial)
        with h5py.File(partial, "w") as handle:
            if not same_file(handle.id.get_vfd_handle(), identity):  # a link swapped in after new_file
                raise FeatcacheError(f"{partial} was replaced while it was opened: refusing to write through it")
            for split, count, columns in (("train", rows, 1 + views), ("test", test_rows, 1)):
                labels = np.arange(count) * classes // count  # sorted by class, as an image folder
                group = handle.create_group(split)
                shape = (count, columns, dim) if split == "train" else (count, dim)
                chunks = (min(CHUNK_ROWS, count), 1, dim) if split == "train" else (min(CHUNK_ROWS, count), dim)
                features = group.create_dataset("features", shape=shape, dtype="float32", chunks=chunks)
                group.create_dataset("labels", data=labels.astype(np.int64))
                group.create_dataset("ids", data=[f"{split}/{names[label]}/{row:08d}" for row, label in enumerate(labels)],
                                     dtype=h5py.string_dtype())
                for start in range(0, count, WRITE_ROWS):
                    stop = min(start + WRITE_ROWS, count)
                    block = synthetic_features(rng, means, labels[start:stop], columns, noise).reshape((stop - start, *shape[1:]))
                    features[start:stop] = block
                    checksums[split] += [[start + offset, min(start + offset + CHUNK_ROWS, stop),
                                          features_sha256(block[offset:offset + CHUNK_ROWS])]
                                         for offset in range(0, stop - start, CHUNK_ROWS)]
            handle.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "featcache_version": __version__,
                "key": f"synthetic-{rows}x{1 + views}-{classes}c-seed{seed}", "backbone": BACKBONE,
                "weights": "synthetic", "image_size": 0, "transform": json.dumps({"synthetic": True}), "views": views,
                "seed": seed, "precision": "fp32", "classes": json.dumps(names),
                "dataset": json.dumps({"name": "synthetic", "separation": separation, "noise": noise}),
                "shard_size": CHUNK_ROWS, "batch_size": WRITE_ROWS, "weights_source": "",
                "checksums": json.dumps(checksums), "complete": True})
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path

"""A cache file's structure checked before any of its data is read: a cache may come from someone else.

Checked from HDF5 metadata alone (plus the labels, N int64s, and the ids' 16-byte records, whose sizes
are checked first), in this order:
- the root's attributes single numbers or strings (attributes_problem, before featcache reads one);
- every object featcache reads is a plain dataset under a hard link: no soft or external link (which
  would open another file), no external storage (raw data in any local file), no virtual dataset;
- no filters (compression could make a small file decompress to any size), every dataset storing at
  least the bytes its shape declares (unwritten chunks read as zeros) and all of them together within
  the file's size on disk, and the ids' variable-length strings declaring no more bytes than the file
  holds: reading a cache costs at most the memory of its file's size;
- dtypes and shapes: train features float32 [N, 1+V, D] with V >= 1, test features [M, D], labels
  int64 and ids strings of the same lengths;
- the attributes featcache reads: key and backbone strings, integer image_size, seed and
  backbone_parameters, views matching V, classes a JSON list of distinct strings, labels
  within [0, classes), checksums JSON covering each split's rows [0, N) exactly once with sha256 hexes.

What is left to trust is libhdf5's parser of the file's metadata (see docs/security.md). No torch here.
"""
from __future__ import annotations

import json
import os
import re

import h5py
import numpy as np

SPLITS = ("train", "test")
DATASETS = ("features", "labels", "ids")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_JSON = 64 << 20  # bytes of one JSON attribute: checksums of 10 million shards


def attributes_problem(handle: h5py.File) -> str | None:
    """Why the root's attributes are not all single numbers or strings (checked from their headers, before
    featcache reads one: an array of strings could all point at one large stored string), or None."""
    for name in handle.attrs:
        attribute = handle.attrs.get_id(name)
        dtype = attribute.dtype
        text = h5py.check_string_dtype(dtype) is not None
        if attribute.shape != () or dtype.shape != () or dtype.names is not None or not (
                text or dtype.kind in "biuf"):
            return f"its attribute {name!r} is not a single number or string"
    return None


def dataset_problem(name: str, dataset) -> str | None:
    """Why reading the dataset `name` could open another file or inflate past what it stores, or None."""
    if not isinstance(dataset, h5py.Dataset):
        return f"{name} is not a dataset"
    plist = dataset.id.get_create_plist()
    if dataset.is_virtual:
        return f"{name} is a virtual dataset (its data would come from other files)"
    if plist.get_external_count():
        return f"{name} has external storage (its data would come from another file)"
    if plist.get_nfilters():
        return f"{name} is compressed or filtered (featcache writes raw data only)"
    storage = dataset.id.get_storage_size()
    if storage < dataset.nbytes:  # unwritten chunks read as zeros: a shape alone could ask for any memory
        return f"{name} declares {dataset.shape} ({dataset.nbytes:,} bytes) but stores {storage:,} bytes"
    return None


def layout_problem(handle: h5py.File) -> str | None:
    """What makes an open file's structure unlike a cache featcache writes, or None: one clause."""
    datasets = {}
    for split in SPLITS:
        for name in (split, *(f"{split}/{item}" for item in DATASETS)):
            link = handle.get(name, getlink=True)
            if link is None:
                return f"it has no {name}"
            if not isinstance(link, h5py.HardLink):
                return f"{name} is a {type(link).__name__} (featcache reads only objects inside the file)"
        for item in DATASETS:
            dataset = handle[f"{split}/{item}"]
            if not isinstance(dataset, h5py.Dataset):
                return f"{split}/{item} is not a dataset"
            datasets[f"{split}/{item}"] = dataset
    for name, dataset in datasets.items():
        problem = dataset_problem(name, dataset)
        if problem:
            return problem
    stored = sum(dataset.id.get_storage_size() for dataset in datasets.values())
    file_size = os.path.getsize(handle.filename)
    if stored > file_size:
        return f"its datasets declare {stored:,} bytes of storage in a file of {file_size:,}"
    for split in SPLITS:
        problem = strings_problem(handle.filename, datasets[f"{split}/ids"], file_size)
        if problem:
            return f"{split}/ids {problem}"
    return shape_problem(handle, datasets) or attribute_problem(handle, datasets)


def strings_problem(filename: str, dataset: h5py.Dataset, file_size: int) -> str | None:
    """Why a variable-length string dataset's strings could take more memory than the file's size, or None.

    Its elements can all point at one large stored string; each element's stored form begins with its
    string's length (a 4-byte little-endian count, then a 12-byte heap address): their sum is read from
    the raw bytes, which featcache's writer stores contiguously."""
    if h5py.check_string_dtype(dataset.dtype) is None or h5py.check_string_dtype(dataset.dtype).length is not None:
        return None  # fixed-length strings: their storage is their size
    offset, count = dataset.id.get_offset(), dataset.shape[0] if dataset.ndim == 1 else 0
    if not count:
        return None
    if dataset.chunks or offset is None or dataset.id.get_storage_size() != 16 * count:
        return "is not stored as featcache writes it (contiguous variable-length strings)"
    with open(filename, "rb") as file:
        raw = os.pread(file.fileno(), 16 * count, offset)
    if len(raw) != 16 * count:
        return "runs past the end of the file"
    total = int(np.frombuffer(raw, dtype="<u4")[::4].sum(dtype=np.int64))
    if total > file_size:
        return f"declare {total:,} bytes of strings in a file of {file_size:,}"
    return None


def shape_problem(handle: h5py.File, datasets: dict) -> str | None:
    train, test = datasets["train/features"], datasets["test/features"]
    if train.dtype != np.float32 or test.dtype != np.float32:
        return f"its features are {train.dtype} and {test.dtype}, not float32"
    if train.ndim != 3 or test.ndim != 2 or train.shape[2] != test.shape[1] or train.shape[2] < 1:
        return f"its features have shapes {train.shape} and {test.shape}, not [N, 1+V, D] and [M, D]"
    if train.shape[1] < 2:
        return f"its training features hold {train.shape[1] - 1} augmented views (at least 1 is written)"
    for split, features in (("train", train), ("test", test)):
        labels, ids = datasets[f"{split}/labels"], datasets[f"{split}/ids"]
        if labels.dtype != np.int64 or labels.shape != features.shape[:1]:
            return f"{split}/labels is {labels.dtype} {labels.shape}, not int64 ({features.shape[0]},)"
        if h5py.check_string_dtype(ids.dtype) is None or ids.shape != features.shape[:1]:
            return f"{split}/ids is {ids.dtype} {ids.shape}, not ({features.shape[0]},) strings"
    return None


def json_attribute(handle: h5py.File, name: str, kind: type):
    value = handle.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or len(value) > MAX_JSON:
        raise ValueError(f"its `{name}` attribute is not a JSON text")
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError(f"its `{name}` attribute is not valid JSON") from None
    if not isinstance(parsed, kind):
        raise ValueError(f"its `{name}` attribute is not a JSON {kind.__name__}")
    return parsed


def attribute_problem(handle: h5py.File, datasets: dict) -> str | None:
    for name, kinds, optional in (("key", str, False), ("backbone", str, False), ("image_size", np.integer, False),
                                  ("seed", np.integer, False), ("backbone_parameters", np.integer, True)):
        if not isinstance(handle.attrs.get(name), kinds) and not (optional and name not in handle.attrs):
            return f"its `{name}` attribute is not {'a string' if kinds is str else 'an integer'}"
    views = handle.attrs.get("views")
    augmented = datasets["train/features"].shape[1] - 1
    if not isinstance(views, (int, np.integer)) or int(views) != augmented:
        return f"its `views` attribute ({views!r}) does not match its {augmented} augmented views"
    try:
        classes = json_attribute(handle, "classes", list)
        checksums = json_attribute(handle, "checksums", dict)
    except (ValueError, RecursionError) as problem:
        return str(problem) if isinstance(problem, ValueError) else "its `classes` or `checksums` nest too deeply"
    if not classes or not all(isinstance(name, str) for name in classes) or len(set(classes)) != len(classes):
        return "its `classes` attribute is not a list of distinct class names"
    for split in SPLITS:
        labels = datasets[f"{split}/labels"][()]
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            return (f"{split}/labels run from {labels.min()} to {labels.max()}, outside the {len(classes)} classes "
                    f"[0, {len(classes) - 1}]")
        rows = datasets[f"{split}/features"].shape[0]
        problem = coverage_problem(checksums.get(split), rows)
        if problem:
            return f"its {split} checksums {problem}"
    if set(checksums) - set(SPLITS):
        return f"its checksums name splits {sorted(set(checksums) - set(SPLITS))}"
    return None


def coverage_problem(ranges, rows: int) -> str | None:
    """Why `ranges` ([[start, stop, sha256], ...]) do not cover [0, rows) once each in order, or None."""
    if not isinstance(ranges, list) or (rows and not ranges):
        return f"do not cover its {rows} rows"
    expected = 0
    for entry in ranges:
        if not (isinstance(entry, list) and len(entry) == 3 and all(type(x) is int for x in entry[:2])
                and isinstance(entry[2], str) and SHA256.fullmatch(entry[2])):
            return "hold an entry that is not [start, stop, sha256]"
        start, stop, _ = entry
        if start != expected or stop <= start:
            return f"do not cover rows {expected}-{start - 1 if start > expected else stop - 1} exactly once"
        expected = stop
    if expected != rows:
        return f"cover {expected} of its {rows} rows"
    return None

"""The HDF5 feature cache: content-keyed, written in chunks, resumable, complete or it says so.

Layout (readable with plain h5py):
    / attrs            format, format_version, featcache_version, key, complete, backbone,
                       weights, image_size, transform (JSON), views, seed, precision,
                       classes (JSON), dataset (JSON), train_done, test_done
    /train/features    float32 [N, 1+V, 512]   view 0 clean, views 1..V augmented
    /train/labels      int64 [N]
    /train/ids         str [N]
    /test/features     float32 [M, 512]
    /test/labels, /test/ids

A run writes `<name>.h5.partial`, records after every chunk how many rows are done, and renames the
file to `<name>.h5` only once complete: a reader never sees an incomplete file under the final name,
and a killed run resumes from the last recorded chunk.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import FeatcacheError, __version__
from .augment import ImageBatch, decoded_chunks, make_views
from .backbone import FEATURE_DIM
from .data import Dataset
from .spec import (BACKBONE, FORMAT, FORMAT_VERSION, PRECISIONS, ExtractResult, cache_key, cache_path,
                   complete_cache_key, open_complete_cache)

@dataclass
class FeatureCache:
    """A complete cache loaded into memory: tensors are tiny next to the images they summarise."""

    path: Path
    train_features: torch.Tensor  # [N, 1+V, 512]
    train_labels: torch.Tensor
    test_features: torch.Tensor  # [M, 512]
    test_labels: torch.Tensor
    classes: list[str]
    key: str
    attrs: dict

    @property
    def views(self) -> int:
        return self.train_features.shape[1] - 1


def load_cache(path: Path) -> FeatureCache:
    """Read a cache file; anything but a complete featcache cache of this format is a FeatcacheError."""
    with open_complete_cache(path) as handle:
        attrs = {key: (value.item() if hasattr(value, "item") else value) for key, value in handle.attrs.items()}
        return FeatureCache(
            path=Path(path),
            train_features=torch.from_numpy(handle["train/features"][()]),
            train_labels=torch.from_numpy(handle["train/labels"][()]),
            test_features=torch.from_numpy(handle["test/features"][()]),
            test_labels=torch.from_numpy(handle["test/labels"][()]),
            classes=json.loads(attrs["classes"]), key=attrs["key"], attrs=attrs)


def _create_partial(partial: Path, dataset: Dataset, provenance: dict, chunk_rows: int) -> None:
    width = 1 + provenance["views"]
    with h5py.File(partial, "w") as handle:
        handle.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "featcache_version": __version__,
            "key": cache_key(provenance), "complete": False, "backbone": BACKBONE,
            "weights": provenance["weights"],
            "image_size": provenance["image_size"], "transform": json.dumps(provenance["transform"]),
            "views": provenance["views"], "seed": provenance["seed"], "precision": provenance["precision"],
            "classes": json.dumps(provenance["classes"]),
            "dataset": json.dumps({"name": dataset.name, "fingerprint": provenance["dataset_fingerprint"],
                                   **dataset.description}),
            "train_done": 0, "test_done": 0,
        })
        for split_name, split, shape in (("train", dataset.train, (len(dataset.train), width, FEATURE_DIM)),
                                         ("test", dataset.test, (len(dataset.test), FEATURE_DIM))):
            group = handle.create_group(split_name)
            group.create_dataset("features", shape=shape, dtype="float32",
                                 chunks=(min(chunk_rows, shape[0]),) + shape[1:])
            group.create_dataset("labels", data=split.labels)
            group.create_dataset("ids", data=split.ids, dtype=h5py.string_dtype())


def _open_partial(partial: Path, key: str) -> h5py.File | None:
    """The unfinished file of an earlier identical run, or None when there is none worth resuming."""
    if not partial.exists():
        return None
    try:
        handle = h5py.File(partial, "r+")
    except BlockingIOError:
        raise FeatcacheError(f"another featcache process is writing {partial}; wait for it to finish") from None
    except OSError:  # killed in the middle of a metadata write: nothing trustworthy to resume
        partial.unlink()
        return None
    if handle.attrs.get("format") == FORMAT and handle.attrs.get("key") == key:
        return handle
    handle.close()
    partial.unlink()
    return None


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the backbone when asked (fast on GPUs with bf16 units); fp32 otherwise."""
    if precision not in PRECISIONS:
        raise FeatcacheError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _view_batches(split, split_name: str, starts: list[int], views: list[int], provenance: dict, batch_size: int,
                  num_workers: int, device):
    """(chunk start, view position, normalised views) for every chunk from `starts`, every view."""
    for start, images in decoded_chunks(split, provenance["image_size"], starts, batch_size, num_workers, device):
        indices = list(range(start, start + len(images)))
        batch = ImageBatch(images, device)
        for position, view in enumerate(views):
            yield start, position, make_views(batch, indices, view, split_name, provenance["seed"],
                                              provenance["image_size"], device)


def extract(dataset: Dataset, backbone: torch.nn.Module, provenance: dict, cache_dir: Path,
            batch_size: int = 64, device: torch.device | str = "cpu", num_workers: int = 0,
            force: bool = False, progress: bool = True,
            on_chunk: Callable[[str, int], None] | None = None) -> ExtractResult:
    """Run the frozen backbone once per view and cache the features; reuse or resume when possible.

    `on_chunk(split, rows_done)` is called after every chunk is safely on disk.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise FeatcacheError(f"--batch-size must be at least 1, got {batch_size}")
    cache_dir = Path(cache_dir)
    final = cache_path(cache_dir, dataset, provenance)
    key = cache_key(provenance)
    if final.exists() and not force:
        cached_key = complete_cache_key(final)  # refuses a foreign or other-version file without touching it
        if cached_key != key:
            raise FeatcacheError(f"{final} holds a cache for other inputs (key {cached_key[:16]}); "
                                 "move it away or pass --force to overwrite it")
        return ExtractResult(final, reused=True, seconds=time.perf_counter() - started)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    handle = None if force else _open_partial(partial, key)
    if handle is None:
        _create_partial(partial, dataset, provenance, batch_size)
        handle = h5py.File(partial, "r+")
    device = torch.device(device)
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    result = ExtractResult(final, reused=False, seconds=0.0,
                           resumed_from=int(handle.attrs["train_done"]) + int(handle.attrs["test_done"]))
    with handle:
        views_per_split = {"train": list(range(1 + provenance["views"])), "test": [0]}
        total = sum(len(split) * len(views_per_split[name])
                    for name, split in (("train", dataset.train), ("test", dataset.test)))
        done_images = sum(int(handle.attrs[f"{name}_done"]) * len(views_per_split[name]) for name in views_per_split)
        bar = tqdm(total=total, initial=done_images, unit="img", desc=f"extract {final.name}",
                   disable=not progress, dynamic_ncols=True)
        for split_name, split in (("train", dataset.train), ("test", dataset.test)):
            views = views_per_split[split_name]
            features = handle[f"{split_name}/features"]
            starts = list(range(int(handle.attrs[f"{split_name}_done"]), len(split), batch_size))
            for start, position, batch in _view_batches(split, split_name, starts, views, provenance,
                                                        batch_size, num_workers, device):
                if position == 0:
                    rows = np.empty((len(batch), len(views), FEATURE_DIM), dtype=np.float32)
                forward_started = time.perf_counter()
                with torch.inference_mode(), autocast(device, provenance["precision"]):
                    rows[:, position] = backbone(batch).float().cpu().numpy()
                result.backbone_seconds += time.perf_counter() - forward_started
                result.images += len(batch)
                bar.update(len(batch))
                if position < len(views) - 1:
                    continue
                features[start:start + len(rows)] = rows if split_name == "train" else rows[:, 0]
                handle.attrs[f"{split_name}_done"] = start + len(rows)
                handle.flush()
                if on_chunk is not None:
                    on_chunk(split_name, start + len(rows))
        bar.close()
        handle.attrs["complete"] = True
    os.replace(partial, final)
    result.seconds = time.perf_counter() - started
    return result

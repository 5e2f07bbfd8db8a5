"""Reading the HDF5 feature cache: a complete file, every feature byte checked against its sha256.

Layout (readable with plain h5py):
    / attrs            format, format_version, featcache_version, key, complete, backbone,
                       weights, image_size, transform (JSON), views, seed, precision,
                       classes (JSON), dataset (JSON), shard_size, batch_size, threads, checksums (JSON),
                       weights_source, backbone_parameters (since 0.4; not in the key)
    /train/features    float32 [N, 1+V, D]     view 0 clean, views 1..V augmented; chunks (<=256, 1, D)
    /train/labels      int64 [N]
    /train/ids         str [N]
    /test/features     float32 [M, D]      D the backbone's width (512 for ResNet-18)
    /test/labels, /test/ids

The writer is featcache.cache.writer. Reading needs neither torchvision nor the augmentation, so a
command that only trains heads does not pay for importing them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FeatcacheError
from .checksums import checksum_mismatches, damaged_cache
from .key import open_complete_cache


@dataclass
class CacheContents:
    """What every opened cache holds, in memory (FeatureCache) or streamed (featcache.cache.streaming)."""

    path: Path
    train_features: torch.Tensor  # [N, 1+V, D]; a BlockStream for a StreamedCache
    train_labels: torch.Tensor
    test_features: torch.Tensor  # [M, D]
    test_labels: torch.Tensor
    classes: list[str]
    key: str
    attrs: dict
    test_ids: list[str]


@dataclass
class FeatureCache(CacheContents):
    """A complete cache loaded into memory: tensors are tiny next to the images they summarise."""

    @property
    def views(self) -> int:
        return self.train_features.shape[1] - 1

    def dataset(self, split: str = "train", view: int = 0) -> torch.utils.data.TensorDataset:
        """(features [D], label) pairs of one view, for a DataLoader in your own training loop: view 0
        is the clean view, 1..V the augmented ones; the test split has view 0 only."""
        if split not in ("train", "test"):
            raise FeatcacheError(f"`split` must be 'train' or 'test', got {split!r}")
        last = self.views if split == "train" else 0
        if not 0 <= view <= last:
            raise FeatcacheError(f"`view` must be between 0 and {last} for the {split} split, got {view}")
        if split == "test":
            return torch.utils.data.TensorDataset(self.test_features, self.test_labels)
        return torch.utils.data.TensorDataset(self.train_features[:, view], self.train_labels)


def load_cache(path: Path) -> FeatureCache:
    """Read a cache file and check every feature byte against its recorded sha256; anything but a
    complete, intact featcache cache of this format is a FeatcacheError.

    Checking on every load costs about 35 ms on the reference cache (55 MB; see docs/cache.md), against
    seconds for the train-head command, so no head ever trains on damaged features."""
    with open_complete_cache(path) as handle:
        attrs, test_ids = cache_metadata(handle)
        arrays = {split: handle[f"{split}/features"][()] for split in ("train", "test")}
        labels = {split: handle[f"{split}/labels"][()] for split in ("train", "test")}
    mismatches = checksum_mismatches(json.loads(attrs["checksums"]), lambda split, a, b: arrays[split][a:b])
    if mismatches:
        raise damaged_cache(path, mismatches)
    return FeatureCache(
        path=Path(path), train_features=torch.from_numpy(arrays["train"]), train_labels=torch.from_numpy(labels["train"]),
        test_features=torch.from_numpy(arrays["test"]), test_labels=torch.from_numpy(labels["test"]),
        classes=json.loads(attrs["classes"]), key=attrs["key"], attrs=attrs, test_ids=test_ids)


def cache_metadata(handle) -> tuple[dict, list[str]]:
    """(attributes as Python values, test ids as strings) of an open cache file."""
    attrs = {key: (value.item() if hasattr(value, "item") else value) for key, value in handle.attrs.items()}
    return attrs, [name.decode() if isinstance(name, bytes) else str(name) for name in handle["test/ids"][()]]


def view_for_epoch(epoch: int, views: int) -> int:
    """Epoch e trains on augmented view 1 + e % V: a fresh augmentation every epoch while V >= epochs."""
    return 1 + epoch % views

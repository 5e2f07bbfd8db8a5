"""Heads on a cache larger than memory: one view read in chunk-aligned blocks, in a seeded shuffled block
order, rows shuffled inside an in-memory buffer of several blocks.

A block is up to BLOCK_CHUNKS whole HDF5 chunks of one view (the file's chunks are 256 rows x 1 view), read
with one slice: h5py reads it as a few large contiguous reads, where picking rows one by one out of the
file would cost a seek each (h5py's docs warn against fancy indexing for this reason). Each epoch:

  1. the blocks are permuted with a generator seeded by (seed, epoch);
  2. they are taken in that order, as many at a time as the buffer holds (a group);
  3. the rows of a group are permuted in memory, and batches are cut from that permutation, a batch
     running on into the next group where a group's rows do not divide by the batch size.

So every row is seen once per epoch, in batches of `batch_size`, as in memory; what differs is that a
batch draws from one group of blocks rather than from the whole training set. Heads trained in
lockstep share the pass: a sweep's heads see the same batches, and seeds share the block order (from
the first seed) while each seed permutes the rows inside the buffer with its own generator.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from .reader import CacheContents, cache_metadata
from ..errors import FeatcacheError
from ..settings import memory_budget
from .checksums import damaged_cache, verify_file
from .shards import CHUNK_ROWS
from .key import open_complete_cache

BLOCK_CHUNKS = 16  # 4,096 rows of one view, 8 MB, per read
MIN_GROUP_BLOCKS = 32  # smaller blocks where the buffer would hold fewer of them
RESERVE = 32 * 10**6  # h5py's reads, torch's and the allocator's slack: measured 13-21 MB above the buffer here
def in_memory_bytes(rows: int, views: int, test_rows: int, dim: int) -> int:
    """What train-head's in-memory path holds above the baseline: every view of every training row, one
    view gathered per epoch (with the bias column), and the test features."""
    return (rows * (1 + views) + rows + test_rows) * (dim + 1) * 4


def row_state_bytes(rows: int, heads: int) -> int:
    """Per-row state of the epoch loop, streamed or not: labels, and per head the order, its labels and
    the buffer permutation (8 bytes each); nothing grows with the number of classes."""
    return rows * (16 + heads * 24)


def block_rows_for(buffer_rows: int) -> int:
    """Rows per block: BLOCK_CHUNKS chunks, fewer where the buffer would hold under MIN_GROUP_BLOCKS of
    them (a group of few blocks of a class-sorted file mixes few classes), never under one chunk."""
    chunks = min(BLOCK_CHUNKS, max(1, buffer_rows // (MIN_GROUP_BLOCKS * CHUNK_ROWS)))
    return chunks * CHUNK_ROWS


@dataclass
class StreamedCache(CacheContents):
    """A cache whose training features stay in the file: what FeatureCache has, with `train_features` a
    BlockStream. Every feature byte is checked against its sha256 when it is opened, range by range."""

    @property
    def views(self) -> int:
        return self.train_features.views

    def close(self) -> None:
        self.train_features.handle.file.close()


def open_streamed(path: Path, budget: int, heads: int = 1) -> StreamedCache:
    """The cache checked and opened for streaming, its buffer sized to what `budget` leaves after the
    per-row state of `heads` heads and the test features; too small a budget is a FeatcacheError."""
    handle = open_complete_cache(path)  # its structure checked before verify_file reads a byte
    try:
        mismatches = verify_file(Path(path))
        if mismatches:
            raise damaged_cache(path, mismatches)
        attrs, test_ids = cache_metadata(handle)
        train_labels = torch.from_numpy(handle["train/labels"][()])
        test = {name: handle[f"test/{name}"][()] for name in ("features", "labels")}
        features = handle["train/features"]
        row_bytes = (features.shape[-1] + 1) * 4
        left = budget - RESERVE - row_state_bytes(len(train_labels), heads) - test["features"].nbytes
        block_rows = block_rows_for(left // row_bytes)
        buffer_rows = (left - 2 * block_rows * row_bytes) // row_bytes  # a block read, and a subset's rows of it
        if buffer_rows < block_rows:
            needed = budget - left + 2 * CHUNK_ROWS * row_bytes
            raise FeatcacheError(f"`max_memory` {budget / 1e6:.1f} MB is too small to stream {path}: its labels, "
                                 f"test features, a buffer of one {CHUNK_ROWS}-row chunk and "
                                 f"{RESERVE / 1e6:.0f} MB for reading need about {needed / 1e6:.1f} MB")
        stream = BlockStream(features, np.arange(len(train_labels)), int(buffer_rows), block_rows)
    except BaseException:
        handle.close()
        raise
    return StreamedCache(Path(path), stream, train_labels, torch.from_numpy(test["features"]),
                         torch.from_numpy(test["labels"]), json.loads(attrs["classes"]), attrs["key"], attrs, test_ids)


class BlockStream:
    """The training views of `rows` (sorted row indices of the file) as epochs of shuffled batches.

    Used by heads.train_heads through `order(epoch)` (positions into `rows`, [N], or [G, N] with `seeds`)
    and `batches(epoch, order, batch_size)`, the pair cached_batches and randperm are in memory."""

    def __init__(self, handle: h5py.Dataset, rows: np.ndarray, buffer_rows: int, block_rows: int, seed: int = 0,
                 seeds: list[int] | None = None):
        self.handle, self.rows, self.buffer_rows = handle, np.asarray(rows), min(buffer_rows, len(rows))
        self.block_rows, self.seed, self.seeds = block_rows, seed, seeds
        self.views, self.dim = handle.shape[1] - 1, handle.shape[2]
        edges = np.searchsorted(self.rows, np.arange(0, handle.shape[0] + self.block_rows, self.block_rows))
        self.block_positions = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        self._plan = None
        self._buffer = None

    def __len__(self) -> int:
        return len(self.rows)

    def with_rows(self, positions: np.ndarray, seed: int, seeds: list[int] | None = None) -> "BlockStream":
        """The stream of a subset (positions into this stream's rows), shuffled under `seed` / `seeds`."""
        return BlockStream(self.handle, self.rows[positions], self.buffer_rows, self.block_rows, seed, seeds)

    def groups(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This epoch's blocks (position ranges) in shuffled order, cut into groups that fit the buffer."""
        shuffled = np.random.default_rng([self.seed, epoch]).permutation(len(self.block_positions))
        groups, group, filled = [], [], 0
        for index in shuffled:
            start, stop = self.block_positions[index]
            if group and filled + stop - start > self.buffer_rows:
                groups.append(group)
                group, filled = [], 0
            group.append((start, stop))
            filled += stop - start
        return groups + [group] if group else groups

    def order(self, epoch: int) -> torch.Tensor:
        """Positions in the order this epoch trains them: each group's rows permuted in the buffer."""
        if not len(self.rows):
            return torch.empty((len(self.seeds), 0) if self.seeds else (0,), dtype=torch.long)
        generators = [np.random.default_rng([seed, epoch, 1]) for seed in (self.seeds or [self.seed])]
        groups = self.groups(epoch)
        permutations = [[generator.permutation(sum(b - a for a, b in group)) for generator in generators]
                        for group in groups]
        self._plan = (epoch, groups, permutations)
        orders = [np.concatenate([np.concatenate([np.arange(a, b) for a, b in group])[perms[k]]
                                  for group, perms in zip(groups, permutations)])
                  for k in range(len(generators))]
        return torch.from_numpy(np.stack(orders) if self.seeds else orders[0])

    def read(self, start: int, stop: int, view: int) -> np.ndarray:
        """View `view` of positions start:stop (all in one block): one contiguous slice of the file."""
        first, last = int(self.rows[start]), int(self.rows[stop - 1]) + 1
        block = self.handle[first:last, view]
        return block if last - first == stop - start else block[self.rows[start:stop] - first]

    def batches(self, epoch: int, order: torch.Tensor, batch_size: int):
        """[(G,) B, D+1] batches (bias column included) of the order `order(epoch)` gave."""
        from .reader import view_for_epoch

        assert self._plan is not None and self._plan[0] == epoch, "order(epoch) first"
        _, groups, permutations = self._plan
        view = view_for_epoch(epoch, self.views)
        heads = len(permutations[0])
        if self._buffer is None:
            self._buffer = torch.ones(self.buffer_rows, self.dim + 1)  # last column: the bias input
        buffer = self._buffer
        carried = torch.empty(heads, 0, self.dim + 1)
        for group, perms in zip(groups, permutations):
            filled = 0
            for start, stop in group:
                buffer[filled:filled + stop - start, :-1] = torch.from_numpy(self.read(start, stop, view))
                filled += stop - start
            indices = torch.from_numpy(np.stack(perms))
            begin = 0
            if carried.shape[1]:  # finish the batch the previous group started
                begin = min(batch_size - carried.shape[1], filled)
                carried = torch.cat([carried, buffer[indices[:, :begin]]], 1)
                if carried.shape[1] < batch_size:
                    continue
                yield carried if self.seeds else carried[0]
            whole = begin + (filled - begin) // batch_size * batch_size
            for offset in range(begin, whole, batch_size):
                batch = buffer[indices[:, offset:offset + batch_size]]
                yield batch if self.seeds else batch[0]
            carried = buffer[indices[:, whole:filled]]
        if carried.shape[1]:
            yield carried if self.seeds else carried[0]

    def clean_blocks(self, positions: np.ndarray):
        """(positions, clean features [n, D]) of the given positions, block by block in file order."""
        positions = np.sort(positions)
        for start, stop in self.block_positions:
            chosen = positions[(positions >= start) & (positions < stop)]
            if len(chosen):
                block = self.read(start, stop, 0)
                yield chosen, torch.from_numpy(block[chosen - start])


def open_cache_file(source, max_memory: int | str | None = None, heads: int = 1, stream: bool | str = True):
    """A complete cache (a file, or the CacheSpec it was extracted from), every byte checked against its
    sha256: in memory (FeatureCache) when that fits `max_memory` (default half the available RAM), else
    a StreamedCache with a buffer for `heads` heads at once. `stream` other than True names what needs
    the cache in memory: a cache too large for it is then an error."""
    from .key import CacheSpec, shard_folder
    from .reader import load_cache

    if isinstance(source, CacheSpec):
        _, _, path = source.locate()
        if not path.exists() and not shard_folder(path).exists():
            raise FeatcacheError(f"no cache for these inputs ({path}); run featcache extract with the same options "
                                 "(in Python: featcache.extract with the same CacheSpec)")
        source = path
    budget = memory_budget(max_memory)
    with open_complete_cache(Path(source)) as handle:  # a foreign or incomplete file: one line, before sizing
        rows, columns, dim = handle["train/features"].shape  # the feature width is the file's, any backbone's
        test_rows = handle["test/features"].shape[0]
    needed = in_memory_bytes(rows, columns - 1, test_rows, dim)
    if needed <= budget:
        return load_cache(Path(source))
    if stream is not True:
        raise FeatcacheError(f"{stream} needs the cache in memory: {source} needs about {needed / 1e9:.1f} GB, over "
                             f"`max_memory` {budget / 1e9:.1f} GB; raise it, or train a linear head (it streams)")
    return open_streamed(Path(source), budget, heads)

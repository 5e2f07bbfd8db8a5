"""The cache's commands: extract (find the complete cache for a CacheSpec without importing torch, or
extract it on this process's share of the shards), open_cache and verify."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..cache.key import (CacheSpec, ExtractConfig, ExtractResult, cache_key, reusable_cache, weights_source,
                         write_split_files)
from ..data.datasets import summary_line
from ..ranks import env_world_size, reported_once
from ..settings import ConfigError, built, require


def extract(spec: CacheSpec, config: ExtractConfig | None = None, *, progress: bool = True,
            echo: Callable[[str], None] | None = None, **settings) -> ExtractResult:
    """Find the complete cache for `spec` (without importing torch), or extract it: run the frozen
    backbone once per view, in checksummed shards, resuming from finished ones. `config` (or its fields
    as keyword arguments: batch_size, shard_size, device, num_workers, force, rehash) says how. Under
    torchrun every process calls this with the same arguments and the shards are dealt over them.
    `echo` (give it on one process) gets the images found and, before an extraction, the work and its
    estimated time from a short warm-up (featcache.estimate; without `echo` none runs)."""
    started = time.perf_counter()
    with reported_once():  # every rank sees the same options, images and cache folder
        require("spec", spec, CacheSpec, "a featcache.CacheSpec")
        config = built(ExtractConfig, config, settings, "extract")
        dataset, provenance, final = spec.locate(config.rehash)
        if echo is not None:
            echo(summary_line(dataset))
        if not config.force and env_world_size() == 1 and reusable_cache(final, cache_key(provenance)):  # torchrun's
            # ranks decide together, under the cache's lock (cache/writer.py): one alone must not return early
            return _with_tables(ExtractResult(final, reused=True, seconds=time.perf_counter() - started), spec,
                                dataset, provenance)
        from ..backbone import check_input_size, load_backbone
        from ..cache.writer import write_cache
        from ..ranks import resolve_device

        backbone = load_backbone(spec.weights, spec.seed, spec.backbone)
        check_input_size(backbone, spec.backbone, spec.image_size)
        device = resolve_device(config.device)
        if echo is not None:
            from ..estimate import extraction, work_line

            echo(work_line([extraction(dataset.train, spec.views, len(dataset.test), backbone, spec.image_size,
                                       spec.seed, device, config.batch_size)], spec.image_size, device, spec.views,
                           env_world_size()))
    result = write_cache(dataset, backbone, provenance, spec.cache_dir, batch_size=config.batch_size,
                         shard_size=config.shard_size, device=device, num_workers=config.num_workers,
                         force=config.force, progress=progress, weights_source=weights_source(spec.weights))
    return _with_tables(result, spec, dataset, provenance)


def _with_tables(result: ExtractResult, spec: CacheSpec, dataset, provenance: dict) -> ExtractResult:
    """Once the cache is complete, a user's images per class and split (and the split featcache made)
    written beside it (featcache.cache.key.write_split_files), by one process."""
    from ..ranks import is_main_process

    if dataset.description.get("class_counts") and is_main_process():
        result.split_file, result.class_table = write_split_files(spec.cache_dir, dataset,
                                                                  provenance["dataset_fingerprint"])
    return result


def open_cache(source: CacheSpec | str | Path, max_memory: int | str | None = None, heads: int = 1,
               stream: bool | str = True):
    """A complete cache, every byte checked against its sha256. `source` is a cache file or the CacheSpec
    it was extracted from. In memory (featcache.cache.reader.FeatureCache: tensors, classes, key) when that
    fits `max_memory` (bytes or '1GB'; default half the available RAM), else opened for streaming
    (featcache.cache.streaming.StreamedCache: the same, with train_features read block by block; close it)
    with a buffer sized for `heads` heads trained at once. `stream` other than True names what needs the
    cache in memory: a cache too large for it is then a FeatcacheError."""
    from ..cache.streaming import open_cache_file
    from ..settings import parse_memory

    require("source", source, (CacheSpec, str, Path), "a cache file's path or a featcache.CacheSpec")
    if max_memory is not None:
        parse_memory(max_memory)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ConfigError(f"`heads` must be a whole number of at least 1, got {heads!r}")
    return open_cache_file(source, max_memory, heads, stream)


def verify(path: str | Path) -> tuple[int, float]:
    """Recompute every checksum of a cache file, one shard's rows at a time: (ranges checked, seconds).
    A mismatch is a FeatcacheError naming the split and rows."""
    from ..cache.checksums import verify_cache

    return verify_cache(Path(require("path", path, (str, Path), "a cache file's path")))

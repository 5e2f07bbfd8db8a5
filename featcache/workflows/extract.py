"""A cache for a CacheSpec: found without importing torch when it is complete, else extracted
(featcache.cache.writer) on this process's share of the shards."""
from __future__ import annotations

import time

from ..cache.key import CacheSpec, ExtractConfig, ExtractResult, cache_key, reusable_cache, weights_source
from ..ranks import reported_once


def extract(spec: CacheSpec, config: ExtractConfig, *, progress: bool = True) -> ExtractResult:
    """The complete cache `spec` names, reused as it is (unless config.force), or extracted."""
    started = time.perf_counter()
    with reported_once():  # every rank sees the same options, images and cache folder
        dataset, provenance, final = spec.locate(config.rehash)
        if not config.force and reusable_cache(final, cache_key(provenance)):
            return ExtractResult(final, reused=True, seconds=time.perf_counter() - started)
        from ..backbone import check_input_size, load_backbone
        from ..ranks import resolve_device
        from ..cache.writer import extract as extract_shards

        backbone = load_backbone(spec.weights, spec.seed, spec.backbone)
        check_input_size(backbone, spec.backbone, spec.image_size)
        device = resolve_device(config.device)
    return extract_shards(dataset, backbone, provenance, spec.cache_dir, batch_size=config.batch_size,
                          shard_size=config.shard_size, device=device, num_workers=config.num_workers,
                          force=config.force, progress=progress, weights_source=weights_source(spec.weights))

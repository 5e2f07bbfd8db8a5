"""The whole comparison into one folder: scratch, extract + a cached linear head, fine-tuning, then
compare; every approach on the same views (and, with seeds, once per training seed, seed k of each a
pair). What featcache.api.experiment delegates to."""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from ..cache.key import CacheSpec, ExtractConfig
from ..data.images import decoded_line, timed_load_images
from ..evaluate.claims import claimed_by_rank, saved_by_rank
from ..evaluate.runs import APPROACHES, default_run_dir, seeds_line, summary_line
from ..train.config import ExperimentConfig, FinetuneConfig, HeadConfig, ScratchConfig
from . import end_to_end, heads
from .extract import extract

Log = Callable[[str], None]


def experiment(spec: CacheSpec, config: ExperimentConfig, out=None, *, overwrite: bool = False,
               echo: Log | None = None, log: Log | None = None, progress: bool = False) -> dict:
    """Scratch, extract + a cached linear head, fine-tuning, then compare, into `out`; returns the runs
    (SeedRuns with config.seeds), compare's result and the seconds it took."""
    from ..cache.streaming import open_cache
    from ..evaluate.report import compare
    from ..train.end_to_end import build_finetune_model

    echo = echo or (lambda line: None)
    from ..backbone import check_input_size

    network = build_finetune_model(spec.weights, 2, spec.seed, config.unfreeze, spec.backbone)  # before any work:
    check_input_size(network, spec.backbone, spec.image_size)  # the weights load, the image size runs
    seeds = config.seed_list
    shared = {"epochs": config.epochs, "batch_size": config.batch_size, "seed": spec.seed}
    scratch_config = ScratchConfig(**shared, lr=config.lr, backbone=spec.backbone)
    finetune_config = FinetuneConfig(**shared, weights=spec.weights, lr_head=config.lr_head,
                                     lr_backbone=config.lr_backbone, unfreeze=config.unfreeze,
                                     frozen_bn=config.frozen_bn, backbone=spec.backbone)
    out = Path(out) if out is not None else default_run_dir("experiment")
    with ExitStack() as held:  # the three run folders, until the comparison is written
        folders = {approach: held.enter_context(claimed_by_rank(out / approach, approach, overwrite))
                   for approach in APPROACHES}
        started = time.perf_counter()
        images, seconds = timed_load_images(spec.data, spec.image_size, spec.seed, config.device)
        if log is not None:  # progress detail, like the per-epoch lines
            log(decoded_line(images, seconds))
        runs = {}

        def done(approach, result):
            runs[approach] = saved_by_rank(result, folders[approach])
            echo(summary_line(result) if seeds is None else seeds_line(result))

        trained = {"log": log, "progress": progress}
        done("scratch", end_to_end.scratch(images, scratch_config, **trained) if seeds is None
             else end_to_end.train_seeds(images, seeds, scratch_config, **trained))
        extracted = extract(spec, ExtractConfig(batch_size=config.extract_batch_size, device=config.device,
                                                num_workers=config.num_workers), progress=progress)
        echo(f"{'reused' if extracted.reused else 'wrote'} cache {extracted.path} in {extracted.seconds:.1f} s")
        cache = open_cache(extracted.path)
        head_config = HeadConfig(**shared, lr=config.lr, extract_wall_time_s=extracted.seconds,
                                 cache_reused=extracted.reused)
        done("feature-extraction", heads.train_head(cache, head_config, log=log) if seeds is None
             else heads.train_head_seeds(cache, seeds, head_config))
        done("fine-tuning", end_to_end.finetune(images, finetune_config, **trained) if seeds is None
             else end_to_end.train_seeds(images, seeds, finetune_config, **trained))
        comparison = compare(list(folders.values()), out)
        return {"runs": runs, "comparison": comparison, "seconds": time.perf_counter() - started}

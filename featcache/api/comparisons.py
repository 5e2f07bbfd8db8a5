"""The comparing commands: compare (run directories side by side), experiment (scratch, extract + a
cached linear head and fine-tuning on the same views, then compare, into one folder) and backbones
(one cache per backbone, each bare forward timed in the same run, every cached head over the same
seeds on each, then featcache.evaluate.backbones' table, plot and paired verdicts)."""
from __future__ import annotations

import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from ..cache.key import CacheSpec, ExtractConfig
from ..errors import FeatcacheError
from ..evaluate.claims import claimed, claimed_by_rank, saved_by_rank
from ..evaluate.runs import APPROACHES, default_run_dir, seeds_line, summary_line
from ..settings import ConfigError, as_paths, built, require
from ..train.config import BackbonesConfig, ExperimentConfig, FinetuneConfig, HeadConfig, ScratchConfig
from .caching import extract
from .end_to_end import finetune, scratch, train_seeds
from .heads import train_head, train_head_seeds

Log = Callable[[str], None]


def compare(run_dirs, out: str | Path) -> dict:
    """comparison.png (loss, training and test accuracy per epoch), summary.md and summary.csv in `out`
    from run directories (a list of paths), and from each run's stored last-epoch predictions its
    per-class test accuracy and confusion matrix (confusion.png, and in summary.md); returns the paths
    and results."""
    from ..evaluate.report import write_comparison

    run_dirs = as_paths("run_dirs", run_dirs)
    require("out", out, (str, Path), "a folder's path")
    return write_comparison([Path(folder) for folder in run_dirs], Path(out))


def experiment(spec: CacheSpec, out: str | Path | None = None, config: ExperimentConfig | None = None, *,
               overwrite: bool = False, echo: Log | None = None, log: Log | None = None, progress: bool = False,
               **settings) -> dict:
    """The whole comparison into one folder: scratch, extract + a cached linear head, fine-tuning, then
    compare. `spec` names the data, weights, image size, views and view seed of all three (the command
    line's --views defaults to --epochs; a CacheSpec carries its own, default 10); `config` (or
    ExperimentConfig's fields) the training; `seeds` (e.g. '0-2' or 3) trains every approach once per
    seed on those same views, seed k of each a pair. `echo` gets one line per finished step, `log` the
    per-epoch lines. Returns the three Runs (SeedRuns with `seeds`), compare's result and the seconds it
    took."""
    from ..backbone import check_input_size
    from ..cache.streaming import open_cache_file
    from ..data.images import decoded_line, timed_load_images
    from ..evaluate.report import write_comparison
    from ..train.end_to_end import build_finetune_model

    require("spec", spec, CacheSpec, "a featcache.CacheSpec")
    config = built(ExperimentConfig, config, settings, "experiment")
    estimate, echo = echo is not None, echo or (lambda line: None)

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
        images, seconds = timed_load_images(spec.data, spec.image_size, spec.seed, config.device,
                                            echo=echo if estimate else None)
        if log is not None:  # progress detail, like the per-epoch lines
            log(decoded_line(images, seconds))
        if estimate:
            echo(_work_line(spec, config, images, scratch_config, finetune_config))
        runs = {}

        def done(approach, result):
            runs[approach] = saved_by_rank(result, folders[approach])
            echo(summary_line(result) if seeds is None else seeds_line(result))

        trained = {"log": log, "progress": progress}
        done("scratch", scratch(images, scratch_config, **trained) if seeds is None
             else train_seeds(images, seeds, scratch_config, **trained))
        extracted = extract(spec, ExtractConfig(batch_size=config.extract_batch_size, device=config.device,
                                                num_workers=config.num_workers), progress=progress)
        echo(f"{'reused' if extracted.reused else 'wrote'} cache {extracted.path} in {extracted.seconds:.1f} s")
        cache = open_cache_file(extracted.path)
        head_config = HeadConfig(**shared, lr=config.lr, extract_wall_time_s=extracted.seconds,
                                 cache_reused=extracted.reused)
        done("feature-extraction", train_head(cache, head_config, log=log) if seeds is None
             else train_head_seeds(cache, seeds, head_config))
        done("fine-tuning", finetune(images, config=finetune_config, **trained) if seeds is None
             else train_seeds(images, seeds, finetune_config, **trained))
        comparison = write_comparison(list(folders.values()), out)
        return {"runs": runs, "comparison": comparison, "seconds": time.perf_counter() - started}


def _work_line(spec: CacheSpec, config: ExperimentConfig, images, scratch_config: ScratchConfig,
               finetune_config: FinetuneConfig) -> str:
    """The line said before an experiment: each approach's work and its estimated time (featcache.estimate),
    extraction's only where its cache is not found."""
    from ..backbone import load_backbone
    from ..cache.key import cache_key, reusable_cache
    from ..estimate import Estimate, extraction, work_line
    from .end_to_end import training_estimate

    runs = len(config.seed_list) if config.seed_list is not None else 1
    estimates = [training_estimate(scratch_config, images, runs)]
    dataset, provenance, final = spec.locate()
    if reusable_cache(final, cache_key(provenance)):
        estimates.append(Estimate(f"extraction: cache {final.name} found", 0.0))
    else:
        estimates.append(extraction(dataset.train, spec.views, len(dataset.test),
                                    load_backbone(spec.weights, spec.seed, spec.backbone), spec.image_size, spec.seed,
                                    images.device, config.extract_batch_size))
    estimates.append(training_estimate(finetune_config, images, runs))
    return work_line(estimates, spec.image_size, images.device, spec.views)


REPORT = "backbones.json"
TIMED_IMAGES = 256  # images timed per backbone (at least 3 batches), after a warm-up batch


def label_of(spec: CacheSpec) -> str:
    """A backbone's name in tables: its name, and its weights file's name when it has one."""
    if spec.weights in ("imagenet", "random"):
        return spec.backbone if spec.weights == "imagenet" else f"{spec.backbone} (random)"
    return f"{spec.backbone} ({Path(spec.weights).stem})"


def backbones(specs: list[CacheSpec], config: BackbonesConfig | None = None, *, labels: list | None = None,
              out: str | Path | None = None, overwrite: bool = False, echo: Log | None = None,
              progress: bool = False, **settings) -> dict:
    """Backbones compared side by side on one dataset (Kornblith et al.'s question: which transfers best
    to these images?). Each CacheSpec names a backbone with its weights and image size; they must share
    the data, views and seed. Each cache is found or extracted, each backbone's bare forward timed in
    this run, and every head of `config` (or BackbonesConfig's fields as keyword arguments: heads,
    seeds, epochs, ...) trained over the same seeds on each, written to `out`/<label>/<head>/ (a label
    left None is label_of's). Returns the table rows, the paired comparisons (per head, every pair of
    backbones, with a verdict) and the paths of backbones.md, .csv, .json and .png in `out`, with the
    wall time of the whole."""
    from ..evaluate.backbones import write_report

    config = built(BackbonesConfig, config, settings, "backbones")
    if isinstance(specs, CacheSpec) or not all(isinstance(spec, CacheSpec) for spec in require(
            "specs", specs, (list, tuple), "a list of featcache.CacheSpec")):
        raise ConfigError("`specs` must be a list of featcache.CacheSpec, one per backbone")
    echo = echo or (lambda line: None)
    labels = list(labels) if labels is not None else [None] * len(specs)
    if len(labels) != len(specs):
        raise FeatcacheError(f"`labels` names {len(labels)} backbones, not {len(specs)}")
    labels = [label or label_of(spec) for spec, label in zip(specs, labels)]
    _check_comparable(specs, labels)
    out = Path(out) if out is not None else default_run_dir("backbones")
    if (out / REPORT).exists() and not overwrite:
        raise FeatcacheError(f"{out} already holds a comparison of backbones; choose another `out` or pass `overwrite`")
    seeds = config.seed_list
    started = time.perf_counter()
    with ExitStack() as held:  # every head's folder, until the report is written
        held.enter_context(claimed(out, "backbones", overwrite))
        folders = {(label, head): held.enter_context(claimed(out / folder_name(label) / head, "feature-extraction",
                                                             overwrite))
                   for label in labels for head in config.heads}
        entries = []
        for spec, label in zip(specs, labels):
            extracted = extract(spec, ExtractConfig(batch_size=config.extract_batch_size, device=config.device,
                                                    num_workers=config.num_workers), progress=progress)
            echo(f"{label}: {'reused' if extracted.reused else 'wrote'} cache {extracted.path} in "
                 f"{extracted.seconds:.1f} s")
            entry = {"label": label, "backbone": spec.backbone, "weights": spec.weights, "image_size": spec.image_size,
                     "cache": str(extracted.path), "extracted_now": not extracted.reused,
                     "extract_s": extracted.seconds if not extracted.reused else None,
                     "extract_images_per_s": extracted.images_per_second if not extracted.reused else None,
                     "forward_images_per_s": forward_throughput(spec, config), "folders": {}}
            echo(f"{label}: bare forward {entry['forward_images_per_s']:.1f} images/s at {spec.image_size} px")
            entry.update(_trained_heads(extracted.path, label, seeds, config, folders, echo, entry["folders"]))
            entries.append(entry)
        return {**write_report(entries, config.heads, out), "seconds": time.perf_counter() - started}


def _trained_heads(path: Path, label: str, seeds: list[int], config: BackbonesConfig, folders: dict, echo: Log,
                   written: dict) -> dict:
    from ..cache.streaming import open_cache_file

    cache = open_cache_file(path, stream="comparing backbones")
    for head in config.heads:
        head_config = HeadConfig(head=head, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr)
        group = saved_by_rank(train_head_seeds(cache, seeds, head_config), folders[label, head])
        written[head] = str(folders[label, head])
        echo(f"{label}, {head}: " + seeds_line(group).split(": ", 1)[1])
    return {"feature_dim": int(cache.train_features.shape[-1])}


def forward_throughput(spec: CacheSpec, config: BackbonesConfig) -> float:
    """Images/s of the spec's frozen backbone on a batch of its size (random pixels: the speed does not
    depend on them), timed here so that every backbone is timed in the same run on the same machine."""
    import torch

    from ..backbone import bare_forward_throughput, load_backbone
    from ..ranks import resolve_device

    device = resolve_device(config.device)
    backbone = load_backbone(spec.weights, spec.seed, spec.backbone).to(device).eval()
    batch = torch.randn(config.extract_batch_size, 3, spec.image_size, spec.image_size,
                        generator=torch.Generator().manual_seed(0)).to(device)
    return bare_forward_throughput(backbone.to(memory_format=torch.channels_last),
                                   batch.to(memory_format=torch.channels_last),
                                   max(3, TIMED_IMAGES // config.extract_batch_size))


def folder_name(label: str) -> str:
    """A label as a folder name: letters, digits, _ . and -, no leading or trailing dot or dash (so never
    `.` or `..`, which would name --out or the folder above it)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")


def _check_comparable(specs: list[CacheSpec], labels: list[str]) -> None:
    if len(specs) < 2:
        raise FeatcacheError("comparing backbones needs at least two")
    if not all(folder_name(label) for label in labels):
        raise FeatcacheError(f"a label needs a letter or digit to name its folder: {', '.join(labels)}")
    if len({folder_name(label) for label in labels}) < len(labels):
        raise FeatcacheError(f"two backbones have the same label ({', '.join(labels)}): name them apart")
    if any(spec.data != specs[0].data or spec.views != specs[0].views or spec.seed != specs[0].seed
           for spec in specs):  # the same images and views: the paired comparisons need the same test images
        raise FeatcacheError("the backbones compared must read the same data with the same views and seed; only "
                             "the backbone, its weights and its image size may differ")

"""featcache's Python API: what a notebook imports, and what each command of the CLI calls.

    import featcache
    spec = featcache.CacheSpec(featcache.DataSpec("../shared/data/cifar10-catdoghorse"),
                               weights="../shared/weights/resnet18-cifar10src-64px.pth", image_size=64, views=15)
    cache = featcache.open_cache(featcache.extract(spec).path)
    head = featcache.train_head(cache, out="runs/fe")        # head.model is an nn.Linear(512, C)

A facade: each function takes its validated config (HeadConfig, FinetuneConfig, ScratchConfig,
ExperimentConfig, ExtractConfig), or keyword arguments that build one, and delegates to the module
that does the work. Arguments are named like the CLI's options (per_class is --per-class); errors name
them in backquotes (`per_class`), and the CLI prints its option names there instead. torch,
torchvision, scikit-learn and matplotlib are imported by the functions that use them: `import
featcache` stays light, and finding an existing cache needs no torch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ._version import __version__
from .cache.key import DEFAULT_WEIGHTS, CacheSpec, ExtractConfig, ExtractResult, check_backbone_name
from .data.datasets import DataSpec
from .data.transform import DEFAULT_IMAGE_SIZE, MIN_IMAGE_SIZE, check_image_size
from .errors import FeatcacheError, ReportedElsewhere
from .evaluate.claims import claimed
from .evaluate.runs import Run, SeedRuns, default_run_dir, read_run, seeds_line, summary_line
from .evaluate.tables import SUMMARY_COLUMNS, UNCERTAINTY_COLUMNS, markdown_table
from .ranks import is_main_process, reported_once
from .settings import UnknownSetting, as_seed_list, built
from .train.config import (BackbonesConfig, EpochConfig, ExperimentConfig, FinetuneConfig, HeadConfig,
                           ScratchConfig)

__all__ = ["__version__", "FeatcacheError", "ReportedElsewhere", "UnknownSetting", "DataSpec", "CacheSpec", "ExtractConfig",
           "HeadConfig", "FinetuneConfig", "ScratchConfig", "ExperimentConfig", "Run", "SeedRuns", "extract",
           "open_cache", "train_head", "train_head_seeds", "load_images", "finetune", "finetune_seeds", "scratch",
           "scratch_seeds", "read_run", "compare", "experiment", "export", "load_model", "predict", "fewshot",
           "verify", "inspect", "bench", "backbones", "BackbonesConfig", "claim_run_dir", "default_run_dir", "is_main_process", "summary_line",
           "seeds_line", "markdown_table", "SUMMARY_COLUMNS", "UNCERTAINTY_COLUMNS", "MIN_IMAGE_SIZE"]

if TYPE_CHECKING:  # for annotations only: importing it needs torch
    from .cache.reader import FeatureCache
    from .data.images import ImageData

Log = Callable[[str], None]


def extract(spec: CacheSpec, config: ExtractConfig | None = None, *, progress: bool = True,
            **settings) -> ExtractResult:
    """Find the complete cache for `spec` (without importing torch), or extract it: run the frozen
    backbone once per view, in checksummed shards, resuming from finished ones. `config` (or its fields
    as keyword arguments: batch_size, shard_size, device, num_workers, force, rehash) says how. Under
    torchrun every process calls this with the same arguments and the shards are dealt over them."""
    from .workflows.extract import extract as find_or_extract

    with reported_once():
        config = built(ExtractConfig, config, settings, "extract")
    return find_or_extract(spec, config, progress=progress)


def open_cache(source: CacheSpec | str | Path, max_memory: int | str | None = None, heads: int = 1,
               stream: bool | str = True):
    """A complete cache, every byte checked against its sha256. `source` is a cache file or the CacheSpec
    it was extracted from. In memory (featcache.cache.reader.FeatureCache: tensors, classes, key) when that
    fits `max_memory` (bytes or '1GB'; default half the available RAM), else opened for streaming
    (featcache.cache.streaming.StreamedCache: the same, with train_features read block by block; close it)
    with a buffer sized for `heads` heads trained at once. `stream` other than True names what needs the
    cache in memory: a cache too large for it is then a FeatcacheError."""
    from .cache.streaming import open_cache as open_checked

    return open_checked(source, max_memory, heads, stream)


def claim_run_dir(out: str | Path | None, approach: str, overwrite: bool = False) -> Path:
    """The run directory a run will be written to (default runs/<approach>-<time>), refused if it
    already holds a run and `overwrite` is not set, or if another process is writing to it. Every
    training function holds its folder this way (featcache.evaluate.claims.claimed) from before training until
    the run is written."""
    with claimed(out, approach, overwrite) as folder:
        return folder


def train_head(cache: FeatureCache | CacheSpec | str | Path, config: HeadConfig | None = None, *,
               out: str | Path | None = None, overwrite: bool = False, log: Log | None = None,
               echo: Log | None = None, progress: bool = False, **settings) -> Run:
    """A feature-extraction head trained on a cache (from open_cache, or what open_cache takes), in seconds.

    `config` (or HeadConfig's fields as keyword arguments) names the head. head='linear': Linear(512, C)
    with Adam, epoch e on augmented view 1 + e % V; with `sweep`, a grid of heads (sweep_lrs x
    sweep_wds) trained at once, the best on a validation split of the training images retrained on all
    of them. head='logreg': scikit-learn's logistic regression, C chosen on the validation split (on
    clean views, or all views with logreg_views='all'). head='knn': k nearest neighbours by cosine
    similarity on clean views, k chosen on the validation split (featcache.train.knn). `echo` gets the
    selection's table and choice, `log` the per-epoch lines; `out` writes the run directory (refused
    before training if it holds a run). A cache that does not fit `max_memory` (see open_cache) trains
    linear heads streamed from the file, shuffled by blocks (featcache.cache.streaming)."""
    from .workflows.heads import train_head as train

    config = built(HeadConfig, config, settings, "train_head")
    return train(cache, config, out=out, overwrite=overwrite, log=log, echo=echo, progress=progress)


def train_head_seeds(cache: FeatureCache | CacheSpec | str | Path, seeds, config: HeadConfig | None = None, *,
                     out: str | Path | None = None, overwrite: bool = False, log: Log | None = None,
                     echo: Log | None = None, progress: bool = False, **settings) -> SeedRuns:
    """train_head once per training seed in `seeds` ('0-4', [0, 3, 7] or a count; head init, shuffle and
    validation split; the views stay the cache's). Plain linear heads train in lockstep, one batched
    step for all seeds; `sweep`, logreg and kNN run seed after seed. Returns a SeedRuns; `out` gets one
    run directory per seed and seeds.json."""
    from .workflows.heads import train_head_seeds as train

    if "seed" in settings:  # each head's seed is one of `seeds`
        raise UnknownSetting("train_head_seeds takes `seeds`, not `seed`")
    config = built(HeadConfig, config, settings, "train_head_seeds")
    return train(cache, as_seed_list(seeds), config, out=out, overwrite=overwrite, log=log, echo=echo,
                 progress=progress)


def load_images(data: DataSpec, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, device: str = "auto",
                max_memory: int | str | None = None, num_workers: int = 0) -> ImageData:
    """Both splits resized for `image_size` (featcache.data.images.ImageData): what the end-to-end trainers
    draw their views from, seeded by `seed`. Decoded once into memory when they fit `max_memory`
    (bytes or '8GB'; default half the available RAM, shared among torchrun's local ranks); a split that
    does not fit is decoded per batch by `num_workers` DataLoader workers. The numbers are the same."""
    from .data.images import load_images as load

    return load(data, image_size, seed, device, max_memory, num_workers)


def finetune(images: ImageData | DataSpec, weights: str | None = None, config: FinetuneConfig | None = None, *,
             out: str | Path | None = None, overwrite: bool = False, log: Log | None = None, echo: Log | None = None,
             progress: bool = False, resume: bool = False, **settings) -> Run:
    """Fine-tune a pretrained `backbone` (default ResNet-18; `weights`: 'imagenet', 'random' or a state
    dict's path) on `images` (from load_images, or a DataSpec to decode at `image_size`, default 224, on
    `device`; the views are seeded by `seed`): a new head (lr_head) and the `unfreeze` modules, default the
    family's last stage (lr_backbone; featcache.backbone.last_stage), the rest
    frozen in eval mode (frozen_bn='train': the notebook's everything-in-train-mode). `init_head` starts
    the head from a Run or a run directory. `config` or FinetuneConfig's fields as keyword arguments.
    Under torchrun every rank trains its share of each batch (featcache.train.ddp); with `out`, a
    checkpoint is saved after every epoch and `resume` continues from it."""
    from .workflows.end_to_end import finetune as train

    with reported_once():
        config = built(FinetuneConfig, config, {**settings, **({"weights": weights} if weights is not None else {})},
                       "finetune")
    return train(images, config, out=out, overwrite=overwrite, log=log, echo=echo, progress=progress, resume=resume)


def scratch(images: ImageData | DataSpec, config: ScratchConfig | None = None, *, out: str | Path | None = None,
            overwrite: bool = False, log: Log | None = None, echo: Log | None = None, progress: bool = False,
            resume: bool = False, **settings) -> Run:
    """The `backbone`'s network (default ResNet-18) from a seeded random init on `images` (as finetune):
    every parameter, Adam, the reference
    augmentation drawn fresh each epoch. `config` or ScratchConfig's fields; torchrun and `resume` as
    finetune."""
    from .workflows.end_to_end import scratch as train

    with reported_once():
        config = built(ScratchConfig, config, settings, "scratch")
    return train(images, config, out=out, overwrite=overwrite, log=log, echo=echo, progress=progress, resume=resume)


def finetune_seeds(images: ImageData | DataSpec, weights: str | None = None, seeds=(0,),
                   config: FinetuneConfig | None = None, *, out: str | Path | None = None, overwrite: bool = False,
                   log: Log | None = None, echo: Log | None = None, progress: bool = False, resume: bool = False,
                   **settings) -> SeedRuns:
    """finetune once per training seed in `seeds` (head init and shuffle), seed after seed, on the same
    views (seeded by `seed`): seed k here and seed k of train_head_seeds are a pair. Every setting
    applies to each seed; with `out`, seed k is written to out/seed-k/ as it finishes (with a checkpoint
    after every epoch), and `resume` keeps the finished seeds and resumes the unfinished one."""
    from .workflows.end_to_end import train_seeds

    with reported_once():
        config = built(FinetuneConfig, config, {**settings, **({"weights": weights} if weights is not None else {})},
                       "finetune_seeds")
        seeds = as_seed_list(seeds)
    return train_seeds(images, seeds, config, out=out, overwrite=overwrite, log=log, echo=echo, progress=progress,
                       resume=resume)


def scratch_seeds(images: ImageData | DataSpec, seeds=(0,), config: ScratchConfig | None = None, *,
                  out: str | Path | None = None, overwrite: bool = False, log: Log | None = None,
                  echo: Log | None = None, progress: bool = False, resume: bool = False, **settings) -> SeedRuns:
    """scratch once per training seed in `seeds` (init and shuffle), seed after seed, on the same views;
    settings, `out` and `resume` as finetune_seeds."""
    from .workflows.end_to_end import train_seeds

    with reported_once():
        config = built(ScratchConfig, config, settings, "scratch_seeds")
        seeds = as_seed_list(seeds)
    return train_seeds(images, seeds, config, out=out, overwrite=overwrite, log=log, echo=echo, progress=progress,
                       resume=resume)


def compare(run_dirs, out: str | Path) -> dict:
    """comparison.png (loss, training and test accuracy per epoch), summary.md and summary.csv in `out`
    from run directories, and from each run's stored last-epoch predictions its per-class test
    accuracy and confusion matrix (confusion.png, and in summary.md); returns the paths and results."""
    from .evaluate.report import compare as compare_runs

    return compare_runs([Path(folder) for folder in run_dirs], Path(out))


def experiment(spec: CacheSpec, out: str | Path | None = None, config: ExperimentConfig | None = None, *,
               overwrite: bool = False, echo: Log | None = None, log: Log | None = None, progress: bool = False,
               **settings) -> dict:
    """The whole comparison into one folder: scratch, extract + a cached linear head, fine-tuning, then
    compare. `spec` names the data, weights, image size, views and view seed of all three; `config`
    (or ExperimentConfig's fields) the training; `seeds` (e.g. '0-2' or 3) trains every approach once
    per seed on those same views, seed k of each a pair. `echo` gets one line per finished step, `log`
    the per-epoch lines. Returns the three Runs (SeedRuns with `seeds`) and compare's result."""
    from .workflows.experiment import experiment as run_experiment

    config = built(ExperimentConfig, config, settings, "experiment")
    return run_experiment(spec, config, out, overwrite=overwrite, echo=echo, log=log, progress=progress)


def export(run_dir: str | Path, out: str | Path, *, weights: str | None = None) -> dict:
    """Write `out`: a run (any approach) as one torch.export file that PyTorch alone loads: uint8 images
    [N, 3, H, W] in, class probabilities out, the clean-view preprocessing inside, class names and
    provenance in its featcache.json. A feature-extraction run's backbone is read from the weights its
    cache recorded (or `weights`), refused if their sha256 is not the recorded one. Returns the metadata."""
    from .deploy.export import export as export_run

    return export_run(Path(run_dir), Path(out), weights)


def load_model(model: str | Path, *, weights: str | None = None, device: str = "cpu"):
    """(model, metadata) of an exported file or a run directory: model(uint8 images [N, 3, H, W]) gives
    class probabilities in the order of metadata['classes']."""
    from .ranks import resolve_device
    from .deploy.predict import load_model as load

    return load(model, resolve_device(device), weights)


def predict(model: str | Path, inputs, out: str | Path, *, output_format: str = "csv", top_k: int = 3,
            batch_size: int = 64, device: str = "auto", num_workers: int = 0, skip_bad: bool = False,
            weights: str | None = None, progress: bool = True, echo: Log | None = None) -> dict:
    """Classify image files and folders (recursively) with an exported model or a run directory; write
    each file's top-k classes and probabilities to `out` as CSV or JSON, in input order. Returns the
    rows, the counts and images/s."""
    from .deploy.predict import predict as predict_files

    return predict_files(model, list(inputs), out, output_format=output_format, top_k=top_k, batch_size=batch_size,
                         device=device, num_workers=num_workers, skip_bad=skip_bad, weights=weights,
                         progress=progress, echo=echo)


def fewshot(cache, out: str | Path, *, shots=(1, 2, 5, 10, 20, 50), trials: int = 20, seed: int = 0,
            probes=("linear", "logreg", "knn"), knn_temperature: float | None = None, log: Log | None = None) -> dict:
    """Few-shot curves from a cache alone (featcache.evaluate.fewshot): per k and probe, the mean test accuracy
    over `trials` seeded subsets with its 95% t-interval; writes fewshot.{md,csv,json,png} to `out`."""
    from .evaluate.fewshot import fewshot as run_fewshot, write_fewshot

    cache = cache if hasattr(cache, "train_features") else open_cache(cache)
    started = time.perf_counter()
    rows = run_fewshot(cache, list(shots), trials, seed, list(probes), log, knn_temperature)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, **write_fewshot(rows, Path(out), trials, seed, cache.path, seconds)}


def verify(path: str | Path) -> tuple[int, float]:
    """Recompute every checksum of a cache file, one shard's rows at a time: (ranges checked, seconds).
    A mismatch is a FeatcacheError naming the split and rows."""
    from .cache.checksums import verify_cache

    return verify_cache(Path(path))


def inspect(data: DataSpec, out: str | Path, *, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
            count: int = 16, view: int = 1, backbone: str = CacheSpec.backbone) -> list[dict]:
    """The backbone's parameters per top-level module and the share each approach trains (returned as
    table rows), and a PNG grid at `out` of `count` training images as view `view` makes them."""
    from .evaluate.report import inspect as inspect_views

    check_backbone_name(backbone)
    return inspect_views(data, Path(out), check_image_size(image_size), seed, count, view, backbone)


def bench(data: DataSpec, out: str | Path, *, weights: str = DEFAULT_WEIGHTS, image_size: int = DEFAULT_IMAGE_SIZE,
          views: int = CacheSpec.views, epochs: int = EpochConfig.epochs, batch_size: int = EpochConfig.batch_size,
          extract_batch_size: int = ExtractConfig.batch_size, device: str = ExtractConfig.device,
          num_workers: int = ExtractConfig.num_workers, seed: int = 0, end_to_end: bool = True,
          command: str = "featcache bench", log: Log | None = None, backbone: str = CacheSpec.backbone) -> dict:
    """featcache bench: every speed figure side by side in one process; writes bench.json and bench.md
    to `out` and returns the result with their paths and the Markdown."""
    from .ranks import resolve_device
    from .bench import bench_markdown, run_bench, write_bench

    check_image_size(image_size)
    check_backbone_name(backbone)
    result = run_bench(data.load(), weights, image_size, views, epochs, batch_size, extract_batch_size,
                       resolve_device(device), num_workers, seed, end_to_end, log=log or (lambda line: None),
                       architecture=backbone)
    json_path, md_path = write_bench(result, Path(out), command)
    return {**result, "json": json_path, "md": md_path, "markdown": bench_markdown(result, command)}


def backbones(specs: list[CacheSpec], config: BackbonesConfig | None = None, *, labels: list | None = None,
              out: str | Path | None = None, overwrite: bool = False, echo: Log | None = None,
              progress: bool = False, **settings) -> dict:
    """Backbones compared side by side on one dataset (Kornblith et al.'s question: which transfers best
    to these images?). Each CacheSpec names a backbone with its weights and image size; they must share
    the data, views and seed. Each cache is found or extracted, each backbone's bare forward timed in
    this run, and every head of `config` (or BackbonesConfig's fields as keyword arguments: heads,
    seeds, epochs, ...) trained over the same seeds on each, written to `out`/<label>/<head>/. Returns
    the table rows, the paired comparisons (per head, every pair of backbones, with a verdict) and the
    paths of backbones.md, .csv, .json and .png in `out`, with the wall time of the whole."""
    from .workflows.backbones import compare_backbones

    config = built(BackbonesConfig, config, settings, "backbones")
    return compare_backbones(list(specs), labels, config, out, overwrite=overwrite, echo=echo, progress=progress)

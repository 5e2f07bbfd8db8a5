"""featcache's Python API: what a notebook imports, and what each command of the CLI calls.

    import featcache
    spec = featcache.CacheSpec(featcache.DataSpec("../shared/data/cifar10-catdoghorse"),
                               weights="../shared/weights/resnet18-cifar10src-64px.pth", image_size=64, views=15)
    cache = featcache.open_cache(featcache.extract(spec).path)
    head = featcache.train_head(cache, out="runs/fe")        # head.model is an nn.Linear(512, C)

Arguments are named like the CLI's options (per_class is --per-class). Errors name them in backquotes
(`per_class`), and the CLI prints its option names there instead. torch, torchvision, scikit-learn and
matplotlib are imported by the functions that use them: `import featcache` stays light, and finding
an existing cache needs no torch.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ._version import __version__
from .errors import FeatcacheError, ReportedElsewhere
from .data.datasets import DataSpec
from .evaluate.runs import (APPROACHES, HISTORY, Run, SeedRuns, claimed, clear_run_files, default_run_dir, read_run,
                            as_seed_list, seeds_line, summary_line, write_seeds)
from .cache.shards import DEFAULT_SHARD_SIZE
from .cache.key import (BACKBONE_PARAMETERS, CacheSpec, ExtractResult, cache_key, open_complete_cache, reusable_cache,
                        shard_folder)
from .data.transform import MIN_IMAGE_SIZE, TRANSFORM_VERSION, check_image_size
from .evaluate.tables import SUMMARY_COLUMNS, UNCERTAINTY_COLUMNS, markdown_table

__all__ = ["__version__", "FeatcacheError", "ReportedElsewhere", "DataSpec", "CacheSpec", "Run", "extract",
           "open_cache", "train_head", "load_images", "finetune", "scratch", "read_run", "compare", "experiment",
           "export", "load_model", "predict", "SeedRuns", "train_head_seeds", "finetune_seeds", "scratch_seeds",
           "seeds_line", "fewshot",
           "verify", "inspect", "bench", "claim_run_dir", "default_run_dir", "is_main_process", "summary_line",
           "markdown_table", "SUMMARY_COLUMNS", "UNCERTAINTY_COLUMNS", "DEFAULT_SHARD_SIZE", "DEFAULT_SWEEP_LRS", "DEFAULT_SWEEP_WDS",
           "MIN_IMAGE_SIZE"]

if TYPE_CHECKING:  # for annotations only: importing it needs torch
    from .cache.reader import FeatureCache

DEFAULT_SWEEP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_SWEEP_WDS = (0.0, 1e-4, 1e-3, 1e-2)

Log = Callable[[str], None]


def is_main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that reports, prints progress and results."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def reported_once():
    """Around work on what every torchrun rank sees alike (the options, the run folder, the images): rank 0
    alone reports its FeatcacheError, the others stop quietly. Not around a rank's own work, whose
    failure only that rank may see."""
    try:
        yield
    except FeatcacheError as error:
        if is_main_process():
            raise
        raise ReportedElsewhere(str(error)) from None


def weights_source(weights: str) -> str:
    """What a cache records of where its backbone came from: 'imagenet', 'random' or an absolute path."""
    return weights if weights in ("imagenet", "random") else str(Path(weights).resolve())


def extract(spec: CacheSpec, *, batch_size: int = 64, shard_size: int = DEFAULT_SHARD_SIZE, device: str = "auto",
            num_workers: int = 0, force: bool = False, rehash: bool = False, progress: bool = True) -> ExtractResult:
    """Find the complete cache for `spec` (without importing torch), or extract it: run the frozen
    backbone once per view, in checksummed shards, resuming from finished ones. Under torchrun every
    process calls this with the same arguments and the shards are dealt over them."""
    started = time.perf_counter()
    with reported_once():
        dataset, provenance, final = spec.locate(rehash)
        if not force and reusable_cache(final, cache_key(provenance)):
            return ExtractResult(final, reused=True, seconds=time.perf_counter() - started)
        from .backbone import load_backbone, resolve_device
        from .cache.writer import extract as extract_shards

        backbone = load_backbone(spec.weights, spec.seed)
        device = resolve_device(device)
    return extract_shards(dataset, backbone, provenance, spec.cache_dir, batch_size=batch_size, shard_size=shard_size,
                          device=device, num_workers=num_workers, force=force, progress=progress,
                          weights_source=weights_source(spec.weights))


def open_cache(source: CacheSpec | str | Path, max_memory: int | str | None = None, heads: int = 1,
               stream: bool | str = True):
    """A complete cache, every byte checked against its sha256. `source` is a cache file or the CacheSpec
    it was extracted from. In memory (featcache.cache.reader.FeatureCache: tensors, classes, key) when that
    fits `max_memory` (bytes or '1GB'; default half the available RAM), else opened for streaming
    (featcache.cache.streaming.StreamedCache: the same, with train_features read block by block; close it)
    with a buffer sized for `heads` heads trained at once. `stream` other than True names what needs the
    cache in memory: a cache too large for it is then a FeatcacheError."""
    from .cache.reader import load_cache
    from .cache.streaming import default_memory_budget, in_memory_bytes, open_streamed, parse_memory

    if isinstance(source, CacheSpec):
        _, _, path = source.locate()
        if not path.exists() and not shard_folder(path).exists():
            raise FeatcacheError(f"no cache for these inputs ({path}); run featcache extract with the same options "
                                 "(in Python: featcache.extract with the same CacheSpec)")
        source = path
    budget = parse_memory(max_memory) if max_memory is not None else default_memory_budget()
    with open_complete_cache(Path(source)) as handle:  # a foreign or incomplete file: one line, before sizing
        rows, width = handle["train/features"].shape[:2]
        test_rows = handle["test/features"].shape[0]
    if in_memory_bytes(rows, width - 1, test_rows) <= budget:
        return load_cache(Path(source))
    if stream is not True:
        raise FeatcacheError(f"{stream} needs the cache in memory: {source} needs about "
                             f"{in_memory_bytes(rows, width - 1, test_rows) / 1e9:.1f} GB, over `max_memory` "
                             f"{budget / 1e9:.1f} GB; raise it, or train a linear head (it streams)")
    return open_streamed(Path(source), budget, heads)


def _saved_seeds(group: SeedRuns, folder: Path | None) -> SeedRuns:
    if folder is not None and is_main_process():
        group.save(folder, overwrite=True)
    return group


def claim_run_dir(out: str | Path | None, approach: str, overwrite: bool = False) -> Path:
    """The run directory a run will be written to (default runs/<approach>-<time>), refused if it
    already holds a run and `overwrite` is not set, or if another process is writing to it. Every
    training function holds its folder this way (featcache.evaluate.runs.claimed) from before training until
    the run is written."""
    with claimed(out, approach, overwrite) as folder:
        return folder


def _claimed(out, approach: str, overwrite: bool):
    """Hold `out` for the block (rank 0 holds it; under torchrun the other ranks only check); nothing
    without `out`."""
    return claimed(out, approach, overwrite, lock=is_main_process()) if out is not None else nullcontext()


def _saved(run: Run, folder: Path | None) -> Run:
    """Write the run where `_claimed` holds the folder (checked before training, so no time is lost);
    under torchrun rank 0 alone writes."""
    if folder is not None and is_main_process():
        run.save(folder, overwrite=True)
    return run


def _jsonable(attrs: dict) -> dict:
    return {key: (value if isinstance(value, (str, int, float, bool)) else str(value)) for key, value in attrs.items()}


def train_head(cache: FeatureCache | CacheSpec | str | Path, *, head: str = "linear", epochs: int = 15,
               batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0, sweep: bool = False,
               sweep_lrs=DEFAULT_SWEEP_LRS, sweep_wds=DEFAULT_SWEEP_WDS, val_fraction: float = 0.2,
               logreg_views: str = "clean", knn_temperature: float | None = None, max_memory: int | str | None = None,
               out: str | Path | None = None, overwrite: bool = False, log: Log | None = None, echo: Log | None = None,
               progress: bool = False, extract_wall_time_s: float | None = None,
               cache_reused: bool | None = None) -> Run:
    """A feature-extraction head trained on a cache (from open_cache, or what open_cache takes), in seconds.

    head='linear': Linear(512, C) with Adam, epoch e on augmented view 1 + e % V; with `sweep`, a grid of
    heads (sweep_lrs x sweep_wds) trained at once, the best on a validation split of the training
    images retrained on all of them. head='logreg': scikit-learn's logistic regression, C chosen on
    the validation split (on clean views, or all views with logreg_views='all'). head='knn': k nearest
    neighbours by cosine similarity on clean views, k chosen on the validation split, votes uniform or
    weighted by exp(similarity / knn_temperature) (featcache.train.knn). `echo` gets the
    selection's table and choice, `log` the per-epoch lines; `out` writes the run directory (refused
    before training if it holds a run). A cache that does not fit `max_memory` (see open_cache) trains
    linear heads streamed from the file, shuffled by blocks (featcache.cache.streaming). `extract_wall_time_s`
    and `cache_reused` (what experiment knows of the extraction) are recorded in history.json when given."""
    from .train.heads import logistic_regression_probe, logreg_as_linear, sweep_heads, train_linear_head
    from .train.loop import EpochConfig, check_learning_rate

    if head not in ("linear", "logreg", "knn"):
        raise FeatcacheError(f"`head` must be 'linear', 'logreg' or 'knn', got {head!r}")
    if sweep and head != "linear":
        raise FeatcacheError(f"`sweep` trains linear heads; `head` {head} chooses its own setting on the validation split")
    config = EpochConfig(epochs, batch_size, seed)
    check_learning_rate("lr", lr)
    if weight_decay < 0:
        raise FeatcacheError(f"`weight_decay` must be non-negative, got {weight_decay}")
    record = _extraction_record(extract_wall_time_s, cache_reused)
    with _claimed(out, "feature-extraction", overwrite) as folder, \
            _opened(cache, max_memory, len(sweep_lrs) * len(sweep_wds) if sweep else 1, head, echo) as cache:
        started = time.perf_counter()
        if head == "knn":
            from .train.knn import knn_probe

            probe = knn_probe(cache.train_features[:, 0], cache.train_labels, cache.test_features, cache.test_labels,
                              seed=seed, val_fraction=val_fraction, temperature=knn_temperature,
                              classes=len(cache.classes))
            model = probe["head"]
            history = {"train_loss": [probe["train_loss"]], "train_acc": [probe["train_acc"]],
                       "test_acc": [probe["test_acc"]], "test_probabilities": probe["test_log_shares"].exp()}
            record["knn"] = {"k": probe["k"], "chosen": probe["chosen"], "grid": probe["grid"],
                             "temperature": knn_temperature}
            if echo is not None:
                if probe["grid"]:
                    echo(markdown_table(probe["grid"], ["k", "val_acc"]))
                echo(f"chosen k={probe['k']} ({probe['chosen']})")
        elif head == "logreg":
            probe = logistic_regression_probe(cache, logreg_views, val_fraction=val_fraction, seed=seed)
            model = logreg_as_linear(probe["model"], len(cache.classes))
            history = {"train_loss": [probe["train_loss"]], "train_acc": [probe["train_acc"]],
                       "test_acc": [probe["test_acc"]], "test_probabilities": probe["test_probabilities"]}
            record["logreg"] = {"grid": probe["grid"], "best": probe["best"]}
            if echo is not None and probe["grid"]:
                echo(markdown_table(probe["grid"], ["C", "val_acc"]))
                echo(f"chosen C={probe['best']['C']} (validation accuracy {probe['best']['val_acc']:.4f})")
            elif echo is not None:
                echo(f"C={probe['best']['C']} ({probe['chosen']})")
        else:
            if sweep:
                result = sweep_heads(cache.train_features, cache.train_labels, list(sweep_lrs), list(sweep_wds), config,
                                     val_fraction, progress=progress and _streamed(cache))
                lr, weight_decay = result.best["lr"], result.best["weight_decay"]
                record["sweep"] = {"grid": result.grid, "best": result.best}
                if echo is not None:
                    echo(markdown_table(result.grid, ["lr", "weight_decay", "val_acc", "final_train_loss"]))
                    echo(f"chosen lr={lr:g}, weight_decay={weight_decay:g} on validation accuracy "
                         f"{result.best['val_acc']:.4f}; retraining on all training images")
            model, history = train_linear_head(cache.train_features, cache.train_labels, cache.test_features,
                                               cache.test_labels, config, lr, weight_decay, log,
                                               progress=progress and _streamed(cache))
        wall = time.perf_counter() - started
        config_record = {"head": head, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                         "weight_decay": weight_decay,
                         "seed": seed, "sweep": sweep, "val_fraction": val_fraction, "logreg_views": logreg_views,
                         "knn_temperature": knn_temperature, "cache": str(cache.path), "views": cache.views,
                         **_streaming_record(cache)}
        return _saved(_head_run(model, history, wall, cache, config_record, record), folder)


@contextmanager
def _opened(cache, max_memory, heads: int, head: str, echo: Log | None = None):
    """The cache to train on: as given when it is one, else opened (open_cache, for `heads` heads at
    once; only linear heads may stream) for the block and closed after it."""
    if not isinstance(cache, (CacheSpec, str, Path)):
        yield cache
        return
    opened = open_cache(cache, max_memory, heads, stream=head == "linear" or f"the {head} head")
    _warn_few_blocks(opened, echo)
    try:
        yield opened
    finally:
        if hasattr(opened, "close"):
            opened.close()


def _extraction_record(extract_wall_time_s: float | None, cache_reused: bool | None) -> dict:
    """What history.json records of the extraction a head's cache came from, when the caller knows it."""
    return {key: value for key, value in (("extract_wall_time_s", extract_wall_time_s),
                                          ("cache_reused", cache_reused)) if value is not None}


def _warn_few_blocks(cache, echo: Log | None) -> None:
    """A streamed cache whose shuffle buffer holds few blocks: say that batches then mix few of a
    class-sorted file's classes (measured on the reference cache: -0.018 accuracy at 2 blocks)."""
    stream = cache.train_features
    if echo is not None and _streamed(cache) and stream.buffer_rows < len(stream) \
            and stream.buffer_rows // stream.block_rows < 8:
        echo(f"streaming with a shuffle buffer of {stream.buffer_rows // stream.block_rows} blocks of "
             f"{stream.block_rows} rows: batches mix few classes of a class-sorted cache; a larger --max-memory "
             "shuffles better")


def _streamed(cache) -> bool:
    from .cache.streaming import StreamedCache

    return isinstance(cache, StreamedCache)


def _streaming_record(cache) -> dict:
    """How the training views were read: streamed (buffer and block rows) or not, for history.json."""
    if not _streamed(cache):
        return {"streamed": False}
    return {"streamed": True, "buffer_rows": cache.train_features.buffer_rows,
            "block_rows": cache.train_features.block_rows}


def _head_run(model, history: dict, wall: float, cache, config_record: dict, record: dict) -> Run:
    predictions = {"ids": cache.test_ids, "labels": cache.test_labels,
                   "probabilities": history.pop("test_probabilities")}  # as the last test accuracy saw them
    head_params = sum(p.numel() for p in model.parameters())
    return Run("feature-extraction", model, history, config_record, wall, "cpu", head_params,
               BACKBONE_PARAMETERS + head_params,
               {"cache_key": cache.key, "classes": cache.classes, "cache_attrs": _jsonable(cache.attrs), **record},
               predictions=predictions)


def train_head_seeds(cache: FeatureCache | CacheSpec | str | Path, seeds, *, head: str = "linear",
                     epochs: int = 15, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0,
                     sweep: bool = False, sweep_lrs=DEFAULT_SWEEP_LRS, sweep_wds=DEFAULT_SWEEP_WDS,
                     val_fraction: float = 0.2, logreg_views: str = "clean", knn_temperature: float | None = None,
                     max_memory: int | str | None = None, out: str | Path | None = None, overwrite: bool = False,
                     log: Log | None = None, echo: Log | None = None, progress: bool = False,
                     extract_wall_time_s: float | None = None, cache_reused: bool | None = None) -> SeedRuns:
    """train_head once per training seed in `seeds` (head init, shuffle and validation split; the views
    stay the cache's), with train_head's arguments. Plain linear heads train in lockstep, one batched
    step for all seeds; `sweep`, logreg and kNN run seed after seed. Returns a SeedRuns; `out` gets one
    run directory per seed and seeds.json."""
    from .train.heads import train_seeded_heads
    from .train.loop import EpochConfig, check_learning_rate

    seeds = as_seed_list(seeds)
    if weight_decay < 0:
        raise FeatcacheError(f"`weight_decay` must be non-negative, got {weight_decay}")
    with _claimed(out, "feature-extraction", overwrite) as folder, \
            _opened(cache, max_memory, len(sweep_lrs) * len(sweep_wds) if sweep else len(seeds), head) as cache:
        if head != "linear" or sweep:
            runs = [train_head(cache, head=head, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                               seed=seed, sweep=sweep, sweep_lrs=sweep_lrs, sweep_wds=sweep_wds,
                               val_fraction=val_fraction, logreg_views=logreg_views, knn_temperature=knn_temperature,
                               log=log, echo=echo, progress=progress, extract_wall_time_s=extract_wall_time_s,
                               cache_reused=cache_reused) for seed in seeds]
            return _saved_seeds(SeedRuns("feature-extraction", runs), folder)
        config = EpochConfig(epochs, batch_size, seeds[0])
        check_learning_rate("lr", lr)
        started = time.perf_counter()
        trained = train_seeded_heads(cache.train_features, cache.train_labels, cache.test_features, cache.test_labels,
                                     config, seeds, lr, weight_decay, progress=progress and _streamed(cache))
        wall = (time.perf_counter() - started) / len(seeds)  # each head's share of the lockstep training
        runs = [_head_run(model, history, wall, cache, {
            "head": head, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "seed": seed, "sweep": False, "cache": str(cache.path), "views": cache.views, "lockstep_seeds": len(seeds),
            **_streaming_record(cache)}, _extraction_record(extract_wall_time_s, cache_reused))
            for seed, (model, history) in zip(seeds, trained)]
        return _saved_seeds(SeedRuns("feature-extraction", runs, seconds=time.perf_counter() - started), folder)


def timed_load_images(data: DataSpec, image_size: int = 224, seed: int = 0, device: str = "auto",
                      max_memory: int | str | None = None, num_workers: int = 0):
    """(load_images(...), seconds it took)."""
    started = time.perf_counter()
    images = load_images(data, image_size, seed, device, max_memory, num_workers)
    return images, time.perf_counter() - started


def decoded_line(images, seconds: float) -> str:
    if images.decoding != "in memory":
        return (f"{len(images.train_labels)} training and {len(images.test_labels)} test images of "
                f"{', '.join(images.classes)}, decoded {images.decoding} ({images.num_workers} workers): "
                "they do not fit `max_memory`")
    return (f"decoded {len(images.train_labels)} training and {len(images.test_labels)} test images of "
            f"{', '.join(images.classes)} in {seconds:.1f} s")


def load_images(data: DataSpec, image_size: int = 224, seed: int = 0, device: str = "auto",
                max_memory: int | str | None = None, num_workers: int = 0):
    """Both splits resized for `image_size` (featcache.data.views.ImageData): what the end-to-end trainers
    draw their views from, seeded by `seed`. Decoded once into memory when they fit `max_memory`
    (bytes or '8GB'; default half the available RAM, shared among torchrun's local ranks), the test
    split first; a split that does not fit is decoded per batch, training batches by `num_workers`
    DataLoader workers. The numbers are the same either way."""
    import torch

    from .data.views import DecodedSplit, ImageData, decode_all, decoded_bytes
    from .backbone import resolve_device
    from .cache.streaming import default_memory_budget, parse_memory

    check_image_size(image_size)
    if num_workers < 0:
        raise FeatcacheError(f"`num_workers` must be at least 0, got {num_workers}")
    budget = (parse_memory(max_memory) if max_memory is not None
              else default_memory_budget() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    dataset = data.load()
    splits = {}
    for split in (dataset.test, dataset.train):
        needed = decoded_bytes(split, image_size)
        splits[id(split)] = decode_all(split, image_size) if needed <= budget else DecodedSplit(split, image_size)
        budget -= needed if needed <= budget else 0
    return ImageData(splits[id(dataset.train)], torch.from_numpy(dataset.train.labels),
                     splits[id(dataset.test)], torch.from_numpy(dataset.test.labels),
                     dataset.classes, image_size, seed, resolve_device(device), dataset.test.ids, num_workers,
                     _data_record(data))


def _init_head_state(init_head, classes: list[str]):
    """The state dict of a head to start fine-tuning from: a Run, or a run directory."""
    trained = init_head if isinstance(init_head, Run) else Run.load(init_head)
    if trained.record.get("classes") not in (None, classes):
        raise FeatcacheError(f"`init_head` {_head_source(init_head)} was trained on classes "
                             f"{trained.record['classes']}, not {classes}")
    return trained.model.state_dict()


def _data_record(images) -> dict | None:
    """The DataSpec the images come from, for history.json (None for ImageData built by hand)."""
    if not isinstance(images, DataSpec):
        return images.source
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(images).items()}


def _head_source(init_head) -> str | None:
    if isinstance(init_head, Run):
        return str(init_head.path) if init_head.path else "a Run in memory (not saved)"
    return None if init_head is None else str(init_head)


def _train_end_to_end(approach: str, train, images, config, record: dict, folder: Path | None, resume: bool) -> Run:
    """train(images, ranks=, checkpoint=) on this process's rank (featcache.train.ddp: one process, or a torchrun
    rank with its own device), checkpointing into `folder`; rank 0 alone writes the run."""
    import dataclasses

    from .train.ddp import Checkpoint, training_ranks
    from .train.end_to_end import timed

    with reported_once():
        if resume and folder is None:
            raise FeatcacheError("`resume` needs `out`: the run directory holding the checkpoint")
        if resume and (folder / HISTORY).is_file():
            return _finished_run(folder, record)
    ranks, device = training_ranks(images.device, config.batch_size)
    images = dataclasses.replace(images, device=device)
    checkpoint = Checkpoint(folder, record, resume, ranks, {}) if folder is not None else None
    try:
        (model, history), wall = timed(train, images, ranks=ranks, checkpoint=checkpoint)
        run = _end_to_end_run(approach, model, history, wall, images,
                              {**record, "ranks": ranks.world_size, "decoding": images.decoding})
        if folder is not None:  # through rank 0, so that a failed write stops every rank in one line
            ranks.on_main(lambda: _write_run(run, folder))
            run.path = folder
    finally:
        ranks.close()
    if checkpoint is not None:
        checkpoint.remove()
    return run


def _write_run(run: Run, folder: Path) -> None:
    try:
        run.save(folder, overwrite=True)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
        raise FeatcacheError(f"cannot write the run to {folder}: {' '.join(str(error).split())[:200]}; its last "
                             "checkpoint is kept: free space, then resume with the same options") from None


def _finished_run(folder: Path, record: dict) -> Run:
    """The run already written to `folder`, resumed: kept as it is if it was trained with these options
    (a checkpoint left by a kill between writing the run and removing it is removed)."""
    from .train.ddp import CHECKPOINT, differing_options

    config = read_run(folder).get("config", {})
    differing = differing_options({key: value for key, value in config.items() if key not in ("ranks", "decoding")},
                                  record)
    if differing:
        raise FeatcacheError(f"{folder} holds a finished run with other options ({', '.join(differing)}); resume "
                             "with the same options, or start afresh with `overwrite`")
    if is_main_process():
        (folder / CHECKPOINT).unlink(missing_ok=True)
    return Run.load(folder)


def _end_to_end_run(approach: str, model, history: dict, wall: float, images, config: dict) -> Run:
    from .backbone import count_parameters

    trainable, total = count_parameters(model)
    predictions = {"ids": images.test_ids or [str(k) for k in range(len(images.test_labels))],
                   "labels": images.test_labels, "probabilities": history.pop("test_probabilities")}
    return Run(approach, model, history, config, wall, images.device, trainable, total,
               {"classes": images.classes, "transform_version": TRANSFORM_VERSION}, predictions=predictions)


def _images_of(images, image_size: int | None, seed: int, device: str | None, echo: Log | None,
               max_memory: int | str | None = None, num_workers: int = 0):
    """ImageData as given (its image size, device and view seed are those it was loaded with), or
    decoded from a DataSpec, saying so through `echo`."""
    if not isinstance(images, DataSpec):
        if image_size not in (None, images.image_size) or (device is not None and device != str(images.device)):
            raise FeatcacheError(f"`images` were decoded for image size {images.image_size} on {images.device}; "
                                 "load them again with load_images to change either")
        return images
    images, seconds = timed_load_images(images, image_size or 224, seed, device or "auto", max_memory, num_workers)
    if echo is not None:
        echo(decoded_line(images, seconds))
    return images


def finetune(images, weights: str = "imagenet", *, epochs: int = 15, batch_size: int = 32, seed: int = 0,
             lr_head: float = 1e-3, lr_backbone: float = 1e-5, unfreeze=("layer4",), frozen_bn: str = "eval",
             init_head=None, out: str | Path | None = None, overwrite: bool = False, log: Log | None = None,
             progress: bool = False, image_size: int | None = None, device: str | None = None,
             echo: Log | None = None, resume: bool = False, max_memory: int | str | None = None,
             num_workers: int = 0) -> Run:
    """Fine-tune a pretrained ResNet-18 on `images` (from load_images, or a DataSpec to decode at
    `image_size`, default 224, on `device`, default 'auto'; the views are seeded by `seed`): a new head
    (lr_head) and the `unfreeze` stages (lr_backbone), the rest frozen in eval mode (frozen_bn='train': the notebook's everything-in-train-mode). `init_head` starts
    the head from a Run or a run directory. Under torchrun every rank trains its share of each batch
    (featcache.train.ddp); with `out`, a checkpoint is saved after every epoch and `resume` continues from it.
    `max_memory` and `num_workers`: decoding, see load_images."""
    from .train.loop import EpochConfig, check_learning_rate
    from .train.end_to_end import check_finetune_options, finetune as finetune_model

    with ExitStack() as held:  # the run folder, from before decoding until the run is written
        with reported_once():
            config = EpochConfig(epochs, batch_size, seed)
            check_learning_rate("lr_head", lr_head)
            check_learning_rate("lr_backbone", lr_backbone)
            check_finetune_options(unfreeze, frozen_bn)
            folder = held.enter_context(_claimed(out, "fine-tuning", overwrite))
            log, echo, progress = (log, echo, progress) if is_main_process() else (None, None, False)
            data = _data_record(images)
            images = _images_of(images, image_size, seed, device, echo, max_memory, num_workers)
            initial = _init_head_state(init_head, images.classes) if init_head is not None else None
        record = {"weights": weights, "image_size": images.image_size, "epochs": epochs, "batch_size": batch_size,
                  "seed": seed, "view_seed": images.view_seed, "lr_head": lr_head, "lr_backbone": lr_backbone,
                  "unfreeze": list(unfreeze), "frozen_bn": frozen_bn, "init_head": _head_source(init_head),
                  "data": data}
        return _train_end_to_end(
            "fine-tuning", lambda images, **extra: finetune_model(
                images, weights, config, lr_head, lr_backbone, list(unfreeze), frozen_bn, initial, log=log,
                progress=progress, **extra),
            images, config, record, folder, resume)


def scratch(images, *, epochs: int = 15, batch_size: int = 32, seed: int = 0, lr: float = 1e-3,
            out: str | Path | None = None, overwrite: bool = False, log: Log | None = None,
            progress: bool = False, image_size: int | None = None, device: str | None = None,
            echo: Log | None = None, resume: bool = False, max_memory: int | str | None = None,
            num_workers: int = 0) -> Run:
    """ResNet-18 from a seeded random init on `images` (from load_images, or a DataSpec to decode at
    `image_size`, default 224, on `device`, default 'auto'; the views are seeded by `seed`): every
    parameter, Adam, the reference augmentation drawn fresh each epoch. torchrun and `resume`: as
    finetune."""
    from .train.loop import EpochConfig, check_learning_rate
    from .train.end_to_end import scratch as scratch_model

    with ExitStack() as held:  # the run folder, from before decoding until the run is written
        with reported_once():
            config = EpochConfig(epochs, batch_size, seed)
            check_learning_rate("lr", lr)
            folder = held.enter_context(_claimed(out, "scratch", overwrite))
            log, echo, progress = (log, echo, progress) if is_main_process() else (None, None, False)
            data = _data_record(images)
            images = _images_of(images, image_size, seed, device, echo, max_memory, num_workers)
        record = {"image_size": images.image_size, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                  "view_seed": images.view_seed, "lr": lr, "data": data}
        return _train_end_to_end(
            "scratch", lambda images, **extra: scratch_model(images, config, lr, log=log, progress=progress, **extra),
            images, config, record, folder, resume)


def finetune_seeds(images, weights: str = "imagenet", seeds=(0,), *, seed: int = 0, out: str | Path | None = None,
                   overwrite: bool = False, image_size: int | None = None, device: str | None = None,
                   echo: Log | None = None, **options) -> SeedRuns:
    """finetune once per training seed in `seeds` (head init and shuffle), seed after seed, on the same
    views (seeded by `seed`): seed k here and seed k of train_head_seeds are a pair. Every option of
    finetune applies to each seed; with `out`, seed k is written to out/seed-k/ as it finishes (with a
    checkpoint after every epoch), and `resume` keeps the finished seeds and resumes the unfinished one."""
    return _end_to_end_seeds(finetune, "fine-tuning", images, seeds, seed, out, overwrite, image_size, device, echo,
                             weights=weights, **options)


def scratch_seeds(images, seeds=(0,), *, seed: int = 0, out: str | Path | None = None, overwrite: bool = False,
                  image_size: int | None = None, device: str | None = None, echo: Log | None = None,
                  **options) -> SeedRuns:
    """scratch once per training seed in `seeds` (init and shuffle), seed after seed, on the same views;
    options, `out` and `resume` as finetune_seeds."""
    return _end_to_end_seeds(scratch, "scratch", images, seeds, seed, out, overwrite, image_size, device, echo,
                             **options)


def _end_to_end_seeds(train, approach: str, images, seeds, view_seed: int, out, overwrite: bool, image_size, device,
                      echo: Log | None, resume: bool = False, max_memory: int | str | None = None, num_workers: int = 0,
                      **options) -> SeedRuns:
    """`train` (finetune or scratch) once per seed, each seed exactly one run with every option: seed k is
    written to `out`/seed-k/ (with its checkpoint) when it finishes, and seeds.json closes the folder.
    Under torchrun one process group serves every seed and rank 0 alone reports, writes and prints.
    With `resume`, a finished seed is kept (its options checked) and an unfinished one resumes from
    its checkpoint."""
    from .train.ddp import CHECKPOINT
    from .ranks import coordinator, local_device

    main = is_main_process()
    echo = echo if main else None
    with ExitStack() as held:  # the folder of seeds, until seeds.json is written
        with reported_once():
            seeds = as_seed_list(seeds)
            if resume and out is None:
                raise FeatcacheError("`resume` needs `out`: the folder of seeds to continue")
            folder = held.enter_context(_claimed(out, approach, overwrite))
            started_before = {seed for seed in seeds if resume and any(
                (folder / f"seed-{seed}" / name).is_file() for name in (HISTORY, CHECKPOINT))}
            if resume and not started_before:
                raise FeatcacheError(f"nothing to resume: no seed-<k> folder of {folder} holds a run or a checkpoint")
            images = _images_of(images, image_size, view_seed, device, echo, max_memory, num_workers)
        if folder is not None and overwrite and not resume and main:
            clear_run_files(folder)  # the old occupant never passes for this run while seeds are written
        # one process group for every seed: gloo cannot meet again under the same rendezvous once destroyed
        group = coordinator(local_device(images.device))
        started, runs = time.perf_counter(), []
        try:
            for seed in seeds:
                seed_dir = folder / f"seed-{seed}" if folder is not None else None
                runs.append(train(images, seed=seed, out=seed_dir, overwrite=True, resume=seed in started_before,
                                  **options))
                if echo is not None:
                    echo(f"seed {seed}: " + summary_line(runs[-1]))
        finally:
            group.close()
        seed_runs = SeedRuns(approach, runs, folder, time.perf_counter() - started)
        if folder is not None and main:  # every seed-k/ is written: seeds.json says the folder is whole
            write_seeds(folder, approach, seed_runs.seeds, seed_runs.final_test_accs, seed_runs.summary(),
                        seed_runs.seconds)
        return seed_runs


def compare(run_dirs, out: str | Path) -> dict:
    """comparison.png (loss, training and test accuracy per epoch), summary.md and summary.csv in `out`
    from run directories, and from each run's stored last-epoch predictions its per-class test
    accuracy and confusion matrix (confusion.png, and in summary.md); returns the paths and results."""
    from .evaluate.report import compare as compare_runs

    return compare_runs([Path(folder) for folder in run_dirs], Path(out))


def experiment(spec: CacheSpec, out: str | Path | None = None, *, epochs: int = 15, batch_size: int = 32,
               lr: float = 1e-3, lr_head: float = 1e-3, lr_backbone: float = 1e-5, unfreeze=("layer4",),
               frozen_bn: str = "eval", extract_batch_size: int = 64, device: str = "auto", num_workers: int = 0,
               seeds=None, overwrite: bool = False, echo: Log | None = None, log: Log | None = None,
               progress: bool = False) -> dict:
    """The whole comparison into one folder: scratch, extract + a cached linear head, fine-tuning, then
    compare. `spec` names the data, weights, image size, views and view seed of all three; `seeds`
    (training seeds, e.g. '0-2' or 3) trains every approach once per seed on those same views, seed k
    of each a pair. `echo` gets one line per finished step, `log` the per-epoch lines. Returns the
    three Runs (SeedRuns with `seeds`) and compare's result."""
    from .train.loop import EpochConfig, check_learning_rate
    from .train.end_to_end import build_finetune_model

    echo = echo or (lambda line: None)
    EpochConfig(epochs, batch_size, spec.seed)  # every check before any work
    for name, value in (("lr", lr), ("lr_head", lr_head), ("lr_backbone", lr_backbone)):
        check_learning_rate(name, value)
    build_finetune_model(spec.weights, 2, spec.seed, list(unfreeze))
    seed_list = as_seed_list(seeds) if seeds is not None else None
    out = Path(out) if out is not None else default_run_dir("experiment")
    with ExitStack() as held:  # the three run folders, until the comparison is written
        folders = {approach: held.enter_context(_claimed(out / approach, approach, overwrite))
                   for approach in APPROACHES}
        started = time.perf_counter()
        images, seconds = timed_load_images(spec.data, spec.image_size, spec.seed, device)
        if log is not None:  # progress detail, like the per-epoch lines
            log(decoded_line(images, seconds))
        common = {"epochs": epochs, "batch_size": batch_size, "out": None, "overwrite": True}
        end_to_end = {"log": log, "progress": progress}
        finetune_options = {"lr_head": lr_head, "lr_backbone": lr_backbone, "unfreeze": unfreeze,
                            "frozen_bn": frozen_bn}
        runs = {}

        def done(approach, result):
            runs[approach] = (_saved if seed_list is None else _saved_seeds)(result, folders[approach])
            echo(summary_line(runs[approach]) if seed_list is None else seeds_line(runs[approach]))

        if seed_list is None:
            done("scratch", scratch(images, seed=spec.seed, lr=lr, **common, **end_to_end))
        else:
            done("scratch", scratch_seeds(images, seed_list, seed=spec.seed, lr=lr, **common, **end_to_end))
        extracted = extract(spec, batch_size=extract_batch_size, device=device, num_workers=num_workers,
                            progress=progress)
        echo(f"{'reused' if extracted.reused else 'wrote'} cache {extracted.path} in {extracted.seconds:.1f} s")
        cache = open_cache(extracted.path)
        extraction = {"extract_wall_time_s": extracted.seconds, "cache_reused": extracted.reused}
        if seed_list is None:
            done("feature-extraction", train_head(cache, seed=spec.seed, lr=lr, log=log, **common, **extraction))
        else:
            done("feature-extraction", train_head_seeds(cache, seed_list, lr=lr, **common, **extraction))
        if seed_list is None:
            done("fine-tuning", finetune(images, spec.weights, seed=spec.seed, **common, **end_to_end,
                                         **finetune_options))
        else:
            done("fine-tuning", finetune_seeds(images, spec.weights, seed_list, seed=spec.seed, **common, **end_to_end,
                                               **finetune_options))
        comparison = compare(list(folders.values()), out)
        return {"runs": runs, "comparison": comparison, "seconds": time.perf_counter() - started}


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
    from .backbone import resolve_device
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
    import json

    from .cache.shards import verify_file
    from .cache.key import open_complete_cache

    with open_complete_cache(Path(path)) as handle:  # a foreign, other-version or incomplete file: one line
        ranges = sum(len(rows) for rows in json.loads(handle.attrs["checksums"]).values())
    started = time.perf_counter()
    mismatches = verify_file(Path(path))
    if mismatches:
        raise FeatcacheError(f"{path} fails verification: {'; '.join(mismatches)}; recompute it with "
                             "featcache extract --force (same options)")
    return ranges, time.perf_counter() - started


def inspect(data: DataSpec, out: str | Path, *, image_size: int = 224, seed: int = 0, count: int = 16,
            view: int = 1) -> list[dict]:
    """ResNet-18's parameters per module and the share each approach trains (returned as table rows),
    and a PNG grid at `out` of `count` training images as view `view` makes them."""
    import numpy as np
    from torchvision.models import resnet18

    from .data.views import DecodedSplit, make_views
    from .evaluate.report import image_grid, parameter_table

    check_image_size(image_size)
    dataset = data.load()
    rows = parameter_table(resnet18(num_classes=len(dataset.classes)))
    picks = np.linspace(0, len(dataset.train) - 1, min(count, len(dataset.train))).round().astype(int).tolist()
    decoded = DecodedSplit(dataset.train, image_size)
    views = make_views([decoded[i] for i in picks], picks, view, "train", seed, image_size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    image_grid(views, [dataset.classes[dataset.train.labels[i]] for i in picks], Path(out))
    return rows


def bench(data: DataSpec, out: str | Path, *, weights: str = "imagenet", image_size: int = 224, views: int = 10,
          epochs: int = 15, batch_size: int = 32, extract_batch_size: int = 64, device: str = "auto",
          num_workers: int = 0, seed: int = 0, end_to_end: bool = True, command: str = "featcache bench",
          log: Log | None = None) -> dict:
    """featcache bench: every speed figure side by side in one process; writes bench.json and bench.md
    to `out` and returns the result with their paths and the Markdown."""
    from .backbone import resolve_device
    from .bench import bench_markdown, run_bench, write_bench

    check_image_size(image_size)
    result = run_bench(data.load(), weights, image_size, views, epochs, batch_size, extract_batch_size,
                       resolve_device(device), num_workers, seed, end_to_end, log=log or (lambda line: None))
    json_path, md_path = write_bench(result, Path(out), command)
    return {**result, "json": json_path, "md": md_path, "markdown": bench_markdown(result, command)}

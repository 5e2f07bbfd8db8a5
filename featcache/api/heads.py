"""The cached heads' commands: train_head (a feature-extraction head from a cache to a run directory:
open the cache in memory or streamed, train the head its HeadConfig names, record the run),
train_head_seeds, and fewshot (few-shot curves from a cache alone)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..cache.key import BACKBONE, BACKBONE_PARAMETERS, CacheSpec
from ..evaluate.claims import claimed_by_rank, saved_by_rank
from ..evaluate.config import FewshotConfig
from ..evaluate.runs import Run, SeedRuns
from ..evaluate.tables import markdown_table
from ..settings import UnknownSetting, as_seed_list, built, require
from ..train.config import EpochConfig, HeadConfig

if TYPE_CHECKING:  # for annotations only: importing it needs torch
    from ..cache.reader import FeatureCache

Log = Callable[[str], None]


def train_head(cache: FeatureCache | CacheSpec | str | Path, config: HeadConfig | None = None, *,
               out: str | Path | None = None, overwrite: bool = False, log: Log | None = None,
               echo: Log | None = None, progress: bool = False, **settings) -> Run:
    """A feature-extraction head trained on a cache (from open_cache, or what open_cache takes), in seconds.

    `config` (or HeadConfig's fields as keyword arguments) names the head. head='linear': Linear(D, C) on
    the backbone's D features (512 for ResNet-18) with Adam, epoch e on augmented view 1 + e % V; with
    `sweep`, a grid of heads (sweep_lrs x sweep_wds) trained at once, the best on a validation split of
    the training images retrained on all of them. head='logreg': scikit-learn's logistic regression, C
    chosen on the validation split (on clean views, or all views with logreg_views='all'). head='knn': k
    nearest neighbours by cosine similarity on clean views, k chosen on the validation split
    (featcache.train.knn). `echo` gets the selection's table and choice, `log` the per-epoch lines; `out`
    writes the run directory (refused before training if it holds a run). A cache that does not fit
    `max_memory` (see open_cache) trains linear heads streamed from the file, shuffled by blocks
    (featcache.cache.streaming)."""
    config = built(HeadConfig, config, settings, "train_head")
    _check_cache(cache)
    with claimed_by_rank(out, "feature-extraction", overwrite) as folder, \
            opened(cache, config.max_memory, config.heads_at_once, config.head, echo) as cache:
        started = time.perf_counter()
        model, history, record, lr, weight_decay = _trained(cache, config, log, echo, progress)
        wall = time.perf_counter() - started
        config_record = {"head": config.head, "epochs": config.epochs, "batch_size": config.batch_size, "lr": lr,
                         "weight_decay": weight_decay, "seed": config.seed, "sweep": config.sweep,
                         "val_fraction": config.val_fraction, "logreg_views": config.logreg_views,
                         "knn_temperature": config.knn_temperature, "cache": str(cache.path), "views": cache.views,
                         **streaming_record(cache)}
        return saved_by_rank(head_run(model, history, wall, cache, config_record, {**extraction_record(config),
                                                                                   **record}), folder)


def _trained(cache, config: HeadConfig, log, echo, progress: bool):
    """(model, history, what history.json adds for this head, lr, weight_decay) of the head `config` names."""
    from ..train.heads import sweep_heads, train_linear_head
    from ..train.logreg import logistic_regression_probe, logreg_as_linear

    lr, weight_decay = config.lr, config.weight_decay
    if config.head == "knn":
        from ..train.knn import knn_probe

        probe = knn_probe(cache.train_features[:, 0], cache.train_labels, cache.test_features, cache.test_labels,
                          seed=config.seed, val_fraction=config.val_fraction, temperature=config.knn_temperature,
                          classes=len(cache.classes))
        if echo is not None:
            if probe["grid"]:
                echo(markdown_table(probe["grid"], ["k", "val_acc"]))
            echo(f"chosen k={probe['k']} ({probe['chosen']})")
        return probe["head"], _probe_history(probe, probe["test_log_shares"].exp()), {"knn": {
            "k": probe["k"], "chosen": probe["chosen"], "grid": probe["grid"],
            "temperature": config.knn_temperature}}, lr, weight_decay
    if config.head == "logreg":
        probe = logistic_regression_probe(cache, config.logreg_views, val_fraction=config.val_fraction,
                                          seed=config.seed)
        if echo is not None and probe["grid"]:
            echo(markdown_table(probe["grid"], ["C", "val_acc"]))
            echo(f"chosen C={probe['best']['C']} (validation accuracy {probe['best']['val_acc']:.4f})")
        elif echo is not None:
            echo(f"C={probe['best']['C']} ({probe['chosen']})")
        return (logreg_as_linear(probe["model"], len(cache.classes)),
                _probe_history(probe, probe["test_probabilities"]),
                {"logreg": {"grid": probe["grid"], "best": probe["best"]}}, lr, weight_decay)
    epochs = EpochConfig(config.epochs, config.batch_size, config.seed)
    record = {}
    if config.sweep:
        result = sweep_heads(cache.train_features, cache.train_labels, list(config.sweep_lrs), list(config.sweep_wds),
                             epochs, config.val_fraction, progress=progress and streamed(cache))
        lr, weight_decay = result.best["lr"], result.best["weight_decay"]
        record["sweep"] = {"grid": result.grid, "best": result.best}
        if echo is not None:
            echo(markdown_table(result.grid, ["lr", "weight_decay", "val_acc", "final_train_loss"]))
            echo(f"chosen lr={lr:g}, weight_decay={weight_decay:g} on validation accuracy "
                 f"{result.best['val_acc']:.4f}; retraining on all training images")
    model, history = train_linear_head(cache.train_features, cache.train_labels, cache.test_features,
                                       cache.test_labels, epochs, lr, weight_decay, log,
                                       progress=progress and streamed(cache))
    return model, history, record, lr, weight_decay


def _probe_history(probe: dict, test_probabilities) -> dict:
    """A probe's one-'epoch' history, as the runs of every approach record it."""
    return {"train_loss": [probe["train_loss"]], "train_acc": [probe["train_acc"]], "test_acc": [probe["test_acc"]],
            "test_probabilities": test_probabilities}


def train_head_seeds(cache: FeatureCache | CacheSpec | str | Path, seeds, config: HeadConfig | None = None, *,
                     out: str | Path | None = None, overwrite: bool = False, log: Log | None = None,
                     echo: Log | None = None, progress: bool = False, **settings) -> SeedRuns:
    """train_head once per training seed in `seeds` ('0-4', [0, 3, 7] or a count; head init, shuffle and
    validation split; the views stay the cache's). Plain linear heads train in lockstep, one batched
    step for all seeds; `sweep`, logreg and kNN run seed after seed. Returns a SeedRuns; `out` gets one
    run directory per seed and seeds.json."""
    from dataclasses import replace

    from ..train.heads import train_seeded_heads

    if "seed" in settings:  # each head's seed is one of `seeds`
        raise UnknownSetting("train_head_seeds takes `seeds`, not `seed`")
    config = built(HeadConfig, config, settings, "train_head_seeds")
    seeds = as_seed_list(seeds)
    _check_cache(cache)

    heads = config.heads_at_once if config.sweep else len(seeds)
    with claimed_by_rank(out, "feature-extraction", overwrite) as folder, \
            opened(cache, config.max_memory, heads, config.head) as cache:
        if config.head != "linear" or config.sweep:
            runs = [train_head(cache, replace(config, seed=seed), log=log, echo=echo, progress=progress)
                    for seed in seeds]
            return saved_by_rank(SeedRuns("feature-extraction", runs), folder)
        started = time.perf_counter()
        trained = train_seeded_heads(cache.train_features, cache.train_labels, cache.test_features, cache.test_labels,
                                     EpochConfig(config.epochs, config.batch_size, seeds[0]), seeds, config.lr,
                                     config.weight_decay, progress=progress and streamed(cache))
        wall = (time.perf_counter() - started) / len(seeds)  # each head's share of the lockstep training
        runs = [head_run(model, history, wall, cache, {
            "head": config.head, "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
            "weight_decay": config.weight_decay, "seed": seed, "sweep": False, "cache": str(cache.path),
            "views": cache.views, "lockstep_seeds": len(seeds), **streaming_record(cache)}, extraction_record(config))
            for seed, (model, history) in zip(seeds, trained)]
        return saved_by_rank(SeedRuns("feature-extraction", runs, seconds=time.perf_counter() - started), folder)


def _check_cache(cache) -> None:
    if not isinstance(cache, (CacheSpec, str, Path)) and not hasattr(cache, "train_features"):
        require("cache", cache, (CacheSpec, str, Path), "an open cache, a cache file's path or a featcache.CacheSpec")


@contextmanager
def opened(cache, max_memory, heads: int, head: str, echo: Log | None = None):
    """The cache to train on: as given when it is one, else opened (open_cache, for `heads` heads at
    once; only linear heads may stream) for the block and closed after it."""
    from ..cache.streaming import open_cache_file

    if not isinstance(cache, (CacheSpec, str, Path)):
        yield cache
        return
    opened = open_cache_file(cache, max_memory, heads, stream=head == "linear" or f"the {head} head")
    _warn_few_blocks(opened, echo)
    try:
        yield opened
    finally:
        if hasattr(opened, "close"):
            opened.close()


def extraction_record(config: HeadConfig) -> dict:
    """What history.json records of the extraction a head's cache came from, when the caller knows it."""
    return {name: getattr(config, name) for name in ("extract_wall_time_s", "cache_reused")
            if getattr(config, name) is not None}


def _warn_few_blocks(cache, echo: Log | None) -> None:
    """A streamed cache whose shuffle buffer holds few blocks: say that batches then mix few of a
    class-sorted file's classes (measured on the reference cache: -0.018 accuracy at 2 blocks)."""
    stream = cache.train_features
    if echo is not None and streamed(cache) and stream.buffer_rows < len(stream) \
            and stream.buffer_rows // stream.block_rows < 8:
        echo(f"streaming with a shuffle buffer of {stream.buffer_rows // stream.block_rows} blocks of "
             f"{stream.block_rows} rows: batches mix few classes of a class-sorted cache; more memory for the cache "
             "shuffles better")


def streamed(cache) -> bool:
    from ..cache.streaming import StreamedCache

    return isinstance(cache, StreamedCache)


def streaming_record(cache) -> dict:
    """How the training views were read: streamed (buffer and block rows) or not, for history.json."""
    if not streamed(cache):
        return {"streamed": False}
    return {"streamed": True, "buffer_rows": cache.train_features.buffer_rows,
            "block_rows": cache.train_features.block_rows}


def head_run(model, history: dict, wall: float, cache, config_record: dict, record: dict) -> Run:
    predictions = {"ids": cache.test_ids, "labels": cache.test_labels,
                   "probabilities": history.pop("test_probabilities")}  # as the last test accuracy saw them
    head_params = sum(p.numel() for p in model.parameters())
    backbone_params = recorded_backbone_parameters(cache.attrs)
    return Run("feature-extraction", model, history, config_record, wall, "cpu", head_params,
               backbone_params + head_params if backbone_params is not None else None,
               {"cache_key": cache.key, "classes": cache.classes, "cache_attrs": _jsonable(cache.attrs), **record},
               predictions=predictions)


def recorded_backbone_parameters(attrs) -> int | None:
    """The backbone's parameter count the cache recorded when it was made, without building the network
    (which would import torchvision or timm: seconds). A cache made before featcache 0.4 recorded none:
    ResNet-18's is known, any other backbone's is unknown (None)."""
    if "backbone_parameters" in attrs:
        return int(attrs["backbone_parameters"])
    return BACKBONE_PARAMETERS if attrs.get("backbone", BACKBONE) == BACKBONE else None


def _jsonable(attrs: dict) -> dict:
    return {key: (value if isinstance(value, (str, int, float, bool)) else str(value)) for key, value in attrs.items()}


def fewshot(cache: FeatureCache | CacheSpec | str | Path, out: str | Path, config: FewshotConfig | None = None, *,
            log: Log | None = None, **settings) -> dict:
    """Few-shot curves from a cache alone (featcache.evaluate.fewshot): per k in `shots` and probe, the mean
    test accuracy over `trials` seeded subsets with its 95% t-interval; writes fewshot.{md,csv,json,png}
    to `out`. `config` or FewshotConfig's fields (shots, trials, seed, probes, knn_temperature)."""
    from ..cache.streaming import open_cache_file
    from ..evaluate.fewshot import fewshot_rows, write_fewshot

    config = built(FewshotConfig, config, settings, "fewshot")
    require("out", out, (str, Path), "a folder's path")
    _check_cache(cache)
    cache = cache if hasattr(cache, "train_features") else open_cache_file(cache)
    started = time.perf_counter()
    rows = fewshot_rows(cache, list(config.shots), config.trials, config.seed, list(config.probes), log,
                        config.knn_temperature)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds,
            **write_fewshot(rows, Path(out), config.trials, config.seed, cache.path, seconds)}

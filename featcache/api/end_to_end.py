"""The end-to-end commands: load_images, finetune and scratch, from images to a run directory (decode
the images or take ImageData, hold the run folder, train on this process's rank with a checkpoint
after every epoch, resume, write the run through rank 0), and the same once per training seed."""
from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..cache.key import BACKBONE, CacheSpec, backbone_name
from ..data.datasets import DataSpec
from ..data.transform import DEFAULT_IMAGE_SIZE, TRANSFORM_VERSION
from ..errors import FeatcacheError, cannot_write
from ..evaluate.claims import claimed_by_rank
from ..files import remove
from ..evaluate.runs import HISTORY, Run, SeedRuns, clear_run_files, summary_line, write_seeds
from ..ranks import is_main_process, reported_once
from ..settings import DEFAULT_BACKBONE, as_seed_list, built, check_value, require
from ..train.config import EndToEndConfig, EpochConfig, FinetuneConfig, ScratchConfig

if TYPE_CHECKING:  # for annotations only: importing it needs torch
    from ..data.images import ImageData

Log = Callable[[str], None]


def load_images(data: DataSpec, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, device: str = "auto",
                max_memory: int | str | None = None, num_workers: int = 0) -> ImageData:
    """Both splits resized for `image_size` (featcache.data.images.ImageData): what the end-to-end trainers
    draw their views from, seeded by `seed`. Decoded once into memory when they fit `max_memory`
    (bytes or '8GB'; default half the available RAM, shared among torchrun's local ranks); a split that
    does not fit is decoded per batch by `num_workers` DataLoader workers. The numbers are the same."""
    from ..data.images import decode_images

    require("data", data, DataSpec, "a featcache.DataSpec")
    for name, value in (("max_memory", max_memory), ("num_workers", num_workers)):
        check_value(EndToEndConfig, name, value)
    for name, value in (("image_size", image_size), ("seed", seed)):
        check_value(CacheSpec, name, value)
    return decode_images(data, image_size, seed, device, max_memory, num_workers)


def finetune(images: ImageData | DataSpec, weights: str | None = None, config: FinetuneConfig | None = None, *,
             out: str | Path | None = None, overwrite: bool = False, log: Log | None = None, echo: Log | None = None,
             progress: bool = False, resume: bool = False, **settings) -> Run:
    """Fine-tune a pretrained `backbone` (default ResNet-18; `weights`: 'imagenet', 'random' or a state
    dict's path) on `images` (from load_images, or a DataSpec to decode at `image_size`, default 224, on
    `device`; the views are seeded by `seed`): a new head (lr_head) and the `unfreeze` modules, default the
    family's last stage (lr_backbone; featcache.backbone.last_stage), the rest frozen in eval mode
    (frozen_bn='train': the notebook's everything-in-train-mode). `init_head` starts the head from a Run or
    a run directory. `config` or FinetuneConfig's fields as keyword arguments. Under torchrun every rank
    trains its share of each batch (featcache.train.ddp); with `out`, a checkpoint is saved after every
    epoch and `resume` continues from it."""
    from ..backbone import check_trainable
    from ..data.images import data_record
    from ..train.end_to_end import finetune_model

    with ExitStack() as held:  # the run folder, from before decoding until the run is written
        with reported_once():
            config = built(FinetuneConfig, config, {**settings, **({"weights": weights} if weights is not None else {})},
                           "finetune")
            _check_images(images)
            folder = held.enter_context(claimed_by_rank(out, "fine-tuning", overwrite))
            log, echo, progress = (log, echo, progress) if is_main_process() else (None, None, False)
            unfreeze = list(check_trainable(config.backbone, _image_size(images, config), config.unfreeze))
            images = _images_of(images, config, echo)
            if echo is not None:
                echo(work_line(config, images))
            data = data_record(images)  # after decoding: with the layout and split found
            initial = _init_head_state(config.init_head, images.classes, config.backbone) \
                if config.init_head is not None else None
        record = {"backbone": config.backbone, "weights": config.weights, "image_size": images.image_size, "epochs": config.epochs,
                  "batch_size": config.batch_size, "seed": config.seed, "view_seed": images.view_seed,
                  "lr_head": config.lr_head, "lr_backbone": config.lr_backbone, "unfreeze": unfreeze,
                  "frozen_bn": config.frozen_bn, "init_head": _head_source(config.init_head), "data": data}
        return _train_on_ranks("fine-tuning", lambda images, **extra: finetune_model(
            images, config.weights, _schedule(config), config.lr_head, config.lr_backbone, unfreeze, config.frozen_bn,
            initial, log=log, progress=progress, backbone=config.backbone, **extra), images, config, record, folder, resume)


def scratch(images: ImageData | DataSpec, config: ScratchConfig | None = None, *, out: str | Path | None = None,
            overwrite: bool = False, log: Log | None = None, echo: Log | None = None, progress: bool = False,
            resume: bool = False, **settings) -> Run:
    """The `backbone`'s network (default ResNet-18) from a seeded random init on `images` (as finetune):
    every parameter, Adam, the reference augmentation drawn fresh each epoch. `config` or ScratchConfig's
    fields; torchrun and `resume` as finetune."""
    from ..backbone import check_trainable
    from ..data.images import data_record
    from ..train.end_to_end import scratch_model

    with ExitStack() as held:  # the run folder, from before decoding until the run is written
        with reported_once():
            config = built(ScratchConfig, config, settings, "scratch")
            _check_images(images)
            folder = held.enter_context(claimed_by_rank(out, "scratch", overwrite))
            log, echo, progress = (log, echo, progress) if is_main_process() else (None, None, False)
            check_trainable(config.backbone, _image_size(images, config), ())
            images = _images_of(images, config, echo)
            if echo is not None:
                echo(work_line(config, images))
            data = data_record(images)  # after decoding: with the layout and split found
        record = {"backbone": config.backbone, "image_size": images.image_size, "epochs": config.epochs, "batch_size": config.batch_size,
                  "seed": config.seed, "view_seed": images.view_seed, "lr": config.lr, "data": data}
        return _train_on_ranks("scratch", lambda images, **extra: scratch_model(
            images, _schedule(config), config.lr, log=log, progress=progress, backbone=config.backbone, **extra),
            images, config, record, folder, resume)


def _schedule(config: EpochConfig) -> EpochConfig:
    return EpochConfig(config.epochs, config.batch_size, config.seed)


def finetune_seeds(images: ImageData | DataSpec, weights: str | None = None, seeds=(0,),
                   config: FinetuneConfig | None = None, *, out: str | Path | None = None, overwrite: bool = False,
                   log: Log | None = None, echo: Log | None = None, progress: bool = False, resume: bool = False,
                   **settings) -> SeedRuns:
    """finetune once per training seed in `seeds` (head init and shuffle), seed after seed, on the same
    views (seeded by `seed`): seed k here and seed k of train_head_seeds are a pair. Every setting
    applies to each seed; with `out`, seed k is written to out/seed-k/ as it finishes (with a checkpoint
    after every epoch), and `resume` keeps the finished seeds and resumes the unfinished one."""
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
    with reported_once():
        config = built(ScratchConfig, config, settings, "scratch_seeds")
        seeds = as_seed_list(seeds)
    return train_seeds(images, seeds, config, out=out, overwrite=overwrite, log=log, echo=echo, progress=progress,
                       resume=resume)


def train_seeds(images, seeds: list[int], config: EndToEndConfig, *, out=None, overwrite: bool = False,
                log: Log | None = None, echo: Log | None = None, progress: bool = False,
                resume: bool = False) -> SeedRuns:
    """finetune or scratch (by `config`'s kind) once per seed on the same views (seeded by config.seed),
    each seed exactly one run with every setting: seed k is written to `out`/seed-k/ (with its
    checkpoint) when it finishes, and seeds.json closes the folder. Under torchrun one process group
    serves every seed and rank 0 alone reports, writes and prints. With `resume`, a finished seed is
    kept (its options checked) and an unfinished one resumes from its checkpoint."""
    from ..ranks import coordinator, local_device
    from ..train.ddp import CHECKPOINT

    train, approach = (finetune, "fine-tuning") if isinstance(config, FinetuneConfig) else (scratch, "scratch")
    main = is_main_process()
    echo = echo if main else None
    with ExitStack() as held:  # the folder of seeds, until seeds.json is written
        with reported_once():
            if resume and out is None:
                raise FeatcacheError("`resume` needs `out`: the folder of seeds to continue")
            folder = held.enter_context(claimed_by_rank(out, approach, overwrite))
            started_before = {seed for seed in seeds if resume and any(
                (folder / f"seed-{seed}" / name).is_file() for name in (HISTORY, CHECKPOINT))}
            if resume and not started_before:
                raise FeatcacheError(f"nothing to resume: no seed-<k> folder of {folder} holds a run or a checkpoint")
            _check_images(images)
            images = _images_of(images, config, echo)
            if echo is not None:
                echo(work_line(config, images, len(seeds)))
        if folder is not None and overwrite and not resume and main:
            clear_run_files(folder)  # the old occupant never passes for this run while seeds are written
        # one process group for every seed: gloo cannot meet again under the same rendezvous once destroyed
        group = coordinator(local_device(images.device))
        started, runs = time.perf_counter(), []
        try:
            for seed in seeds:
                seed_dir = folder / f"seed-{seed}" if folder is not None else None
                if seed_dir is not None and main and seed_dir.is_symlink():
                    remove(seed_dir)  # a seed-k link from an unpacked tarball never takes the run elsewhere
                seed_config = dataclasses.replace(config, seed=seed, image_size=None, device=None)
                runs.append(train(images, config=seed_config, out=seed_dir, overwrite=True,
                                  resume=seed in started_before, log=log, progress=progress))
                if echo is not None:
                    echo(f"seed {seed}: " + summary_line(runs[-1]))
        finally:
            group.close()
        seed_runs = SeedRuns(approach, runs, folder, time.perf_counter() - started)
        if folder is not None and main:  # every seed-k/ is written: seeds.json says the folder is whole
            write_seeds(folder, approach, seed_runs.seeds, seed_runs.final_test_accs, seed_runs.summary(),
                        seed_runs.seconds)
        return seed_runs


def _check_images(images) -> None:
    if not isinstance(images, DataSpec):
        from ..data.images import ImageData

        require("images", images, ImageData, "images from featcache.load_images or a featcache.DataSpec")


def _image_size(images, config: EndToEndConfig) -> int:
    """The crop size the network will see: ImageData's own, or what a DataSpec will be decoded at."""
    return (config.image_size or DEFAULT_IMAGE_SIZE) if isinstance(images, DataSpec) else images.image_size


def _images_of(images, config: EndToEndConfig, echo: Log | None):
    """ImageData as given (its image size, device and view seed are those it was loaded with), or
    decoded from a DataSpec, saying so through `echo`."""
    from ..data.images import decoded_line, timed_load_images

    if not isinstance(images, DataSpec):
        if config.image_size not in (None, images.image_size) or config.device not in (None, str(images.device)):
            raise FeatcacheError(f"`images` were decoded for image size {images.image_size} on {images.device}; "
                                 "load them again with load_images to change either")
        return images
    images, seconds = timed_load_images(images, config.image_size or DEFAULT_IMAGE_SIZE, config.seed,
                                        config.device or "auto", config.max_memory, config.num_workers, echo)
    if echo is not None:
        echo(decoded_line(images, seconds))
    return images


def work_line(config: EndToEndConfig, images, runs: int = 1) -> str:
    """The line said before `runs` end-to-end trainings: the work and its estimated time (featcache.estimate)."""
    from ..estimate import work_line as line
    from ..ranks import env_world_size

    return line([training_estimate(config, images, runs)], images.image_size, images.device,
                world_size=env_world_size())


def training_estimate(config: EndToEndConfig, images, runs: int = 1):
    """featcache.estimate's measure of `runs` end-to-end trainings of `config`'s kind on `images`."""
    from ..backbone import check_trainable, scratch_network
    from ..estimate import training
    from ..train.end_to_end import build_finetune_model

    classes = len(images.classes)
    if isinstance(config, FinetuneConfig):
        unfreeze = list(check_trainable(config.backbone, images.image_size, config.unfreeze))
        return training("fine-tuning", lambda: build_finetune_model(config.weights, classes, config.seed, unfreeze,
                                                                    config.backbone),
                        images, config.epochs, config.batch_size, runs)
    return training("training from scratch", lambda: scratch_network(config.backbone, classes, config.seed), images,
                    config.epochs, config.batch_size, runs)


def _init_head_state(init_head, classes: list[str], backbone: str):
    """The state dict of a head to start fine-tuning from: a Run, or a run directory, trained on the
    features of `backbone` (with any weights: fine-tuning starts from its own)."""
    trained = init_head if isinstance(init_head, Run) else Run.load(init_head)
    if trained.record.get("classes") not in (None, classes):
        raise FeatcacheError(f"`init_head` {_head_source(init_head)} was trained on classes "
                             f"{trained.record['classes']}, not {classes}")
    trained_on = trained.record.get("cache_attrs", {}).get("backbone", BACKBONE)
    if backbone_name(trained_on) != backbone:  # another backbone's features mean other things
        raise FeatcacheError(f"`init_head` {_head_source(init_head)} was trained on {backbone_name(trained_on)} "
                             f"features; fine-tuning starts a head on {backbone}'s")
    return trained.model.state_dict()


def _head_source(init_head) -> str | None:
    if isinstance(init_head, Run):
        return str(init_head.path) if init_head.path else "a Run in memory (not saved)"
    return None if init_head is None else str(init_head)


def _train_on_ranks(approach: str, train, images, config: EpochConfig, record: dict, folder: Path | None,
                    resume: bool) -> Run:
    """train(images, ranks=, checkpoint=) on this process's rank (featcache.train.ddp: one process, or a
    torchrun rank with its own device), checkpointing into `folder`; rank 0 alone writes the run."""
    from ..train.ddp import Checkpoint, training_ranks
    from ..train.end_to_end import timed

    with reported_once():
        if resume and folder is None:
            raise FeatcacheError("`resume` needs `out`: the run directory holding the checkpoint")
        if resume and (folder / HISTORY).is_file():
            return _finished_run(folder, record)
    ranks, device = training_ranks(images.device, config.batch_size)
    images = dataclasses.replace(images, device=device)
    checkpoint = (Checkpoint(folder, record, resume, ranks, {}, (len(images.test_labels), len(images.classes)))
                  if folder is not None else None)
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
        raise cannot_write(f"the run to {folder}", error, "its last checkpoint is kept: free space, then resume "
                           "with the same options") from None


def _finished_run(folder: Path, record: dict) -> Run:
    """The run already written to `folder`, resumed: kept as it is if it was trained with these options
    (a checkpoint left by a kill between writing the run and removing it is removed)."""
    from ..evaluate.runs import read_run
    from ..train.ddp import CHECKPOINT, differing_options

    config = read_run(folder).get("config", {})
    differing = differing_options({"backbone": DEFAULT_BACKBONE,  # a run from before --backbone trained ResNet-18
                                   **{key: value for key, value in config.items() if key not in ("ranks", "decoding")}},
                                  record)
    if differing:
        raise FeatcacheError(f"{folder} holds a finished run with other options ({', '.join(differing)}); resume "
                             "with the same options, or start afresh with `overwrite`")
    if is_main_process():
        (folder / CHECKPOINT).unlink(missing_ok=True)
    return Run.load(folder)


def _end_to_end_run(approach: str, model, history: dict, wall: float, images, config: dict) -> Run:
    from ..backbone import count_parameters

    trainable, total = count_parameters(model)
    predictions = {"ids": images.test_ids or [str(k) for k in range(len(images.test_labels))],
                   "labels": images.test_labels, "probabilities": history.pop("test_probabilities")}
    return Run(approach, model, history, config, wall, images.device, trainable, total,
               {"classes": images.classes, "transform_version": TRANSFORM_VERSION}, predictions=predictions)

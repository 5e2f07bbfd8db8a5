"""The `featcache` command: a thin click layer over the library API."""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from . import FeatcacheError, ReportedElsewhere, __version__
from .shards import DEFAULT_SHARD_SIZE

# torch, sklearn and matplotlib are imported inside the commands that use them: finding an existing
# cache (a repeated `featcache extract`) then answers in a fraction of a second.
DEFAULT_SWEEP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_SWEEP_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)


def is_main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that prints progress and results."""
    return os.environ.get("RANK", "0") == "0"


class FriendlyGroup(click.Group):
    """Turns FeatcacheError, and the OSErrors of the environment (permissions, a full disk), into one
    line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ReportedElsewhere:
            ctx.exit(1)
        except (FeatcacheError, OSError) as error:
            rank = "" if is_main_process() else f"rank {os.environ['RANK']}: "  # under torchrun, who failed
            raise click.ClickException(rank + " ".join(str(error).split())) from None  # one line, always


def stacked(*options):
    """One decorator applying click options in the order listed (as if written one above the other)."""
    return lambda function: functools.reduce(lambda f, option: option(f), reversed(options), function)


def data_options(function=None, *, per_class: int = 500, test_per_class: int | None = None):
    """Options that pick the dataset, shared by every command that reads images."""
    if function is None:
        return functools.partial(data_options, per_class=per_class, test_per_class=test_per_class)
    return stacked(
        click.option("--data", default="cifar10", show_default=True,
                     help="'cifar10' (torchvision's CIFAR-10) or a folder with train/<class>/* and test/<class>/*."),
        click.option("--classes", default=None,
                     help="Comma-separated class names, in label order. Default: cat,dog,horse for "
                          "CIFAR-10, every class folder for a folder."),
        click.option("--per-class", type=int, default=per_class, show_default=True,
                     help="Keep the first N training images of each class, in dataset order."),
        click.option("--test-per-class", type=int, default=test_per_class, show_default=test_per_class is not None,
                     help="Keep the first N test images of each class." + ("" if test_per_class else " Default: all.")),
        click.option("--download", is_flag=True, help="Download CIFAR-10 if it is not in --data-root."),
        click.option("--data-root", type=click.Path(path_type=Path), default=None,
                     help="Where CIFAR-10 lives or is downloaded to. Default: ~/.cache/featcache/data "
                          "or $FEATCACHE_DATA_ROOT."),
    )(function)


weights_options = stacked(
    click.option("--weights", default="imagenet", show_default=True,
                 help="'imagenet' (torchvision ResNet18_Weights.IMAGENET1K_V1, via torchvision's cache), "
                      "'random' (seeded init, for tests) or a path to a ResNet-18 state dict (its fc is dropped)."),
    click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True,
                 help="Crop size S; images are first resized to S*256/224, as the reference 256/224 pipeline."),
)


def run_options(batch_size: int, batch_help: str):
    """Seed, device, batch size and decoding workers; batch size default differs per command."""
    return stacked(
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the augmented views, random weights, head init and shuffling."),
        click.option("--device", default="auto", show_default=True,
                     help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."),
        click.option("--batch-size", type=click.IntRange(min=1), default=batch_size, show_default=True,
                     help=batch_help),
        click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader worker processes that decode images."),
    )


precision_option = click.option(
    "--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
    help="Backbone arithmetic during extraction: fp32, or bf16 autocast (faster on GPUs with bf16 units; "
         "`featcache bench` reports how far its features are from fp32's).")


shard_option = click.option(
    "--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
    help="Images per shard: extraction commits (and resumes, and deals out to torchrun ranks) this many "
         "consecutive images at a time. Features are bit-identical for the same --shard-size and --batch-size.")


cache_options = stacked(
    click.option("--views", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Augmented views cached per training image (plus the clean view 0)."),
    click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("cache"), show_default=True,
                 help="Folder of cache files."),
    precision_option,
)


def _split_names(classes: str | None) -> list[str] | None:
    return [name.strip() for name in classes.split(",") if name.strip()] if classes else None


def load_dataset_from_options(options: dict):
    from .data import load_dataset

    return load_dataset(options["data"], _split_names(options["classes"]), options["per_class"],
                        options["test_per_class"], options["download"], options["data_root"])


def prepare_cache(options: dict, progress: bool = True):
    """Reuse the matching complete cache (without importing torch), or resume or write it."""
    from .spec import ExtractResult, cache_key, cache_path, cache_provenance, reusable_cache

    started = time.perf_counter()
    try:
        dataset = load_dataset_from_options(options)
        provenance = cache_provenance(dataset, options["weights"], options["seed"], options["image_size"],
                                      options["views"], options["precision"])
        final = cache_path(options["cache_dir"], dataset, provenance)
        if not options.get("force") and reusable_cache(final, cache_key(provenance)):
            return ExtractResult(final, reused=True, seconds=time.perf_counter() - started)
        from .backbone import load_backbone, resolve_device
        from .extraction import extract

        backbone = load_backbone(options["weights"], options["seed"])
    except FeatcacheError as error:  # every torchrun rank sees the same inputs: rank 0 alone says what is wrong
        raise (error if is_main_process() else ReportedElsewhere(str(error))) from None
    return extract(dataset, backbone, provenance, options["cache_dir"], batch_size=options["batch_size"],
                   shard_size=options.get("shard_size", DEFAULT_SHARD_SIZE), device=resolve_device(options["device"]),
                   num_workers=options["num_workers"], force=options.get("force", False), progress=progress)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featcache")
def main():
    """Transfer learning on small image datasets, fast: cache a frozen ResNet-18's features once,
    then train heads on them in seconds, and compare with fine-tuning and training from scratch."""


@main.command()
@data_options
@weights_options
@run_options(64, "Images per backbone forward.")
@cache_options
@shard_option
@click.option("--force", is_flag=True, help="Recompute even if a complete cache (or finished shards) exists.")
def extract(**options):
    """Run the frozen backbone once over every view and cache the 512-d features in HDF5.

    Each training image gets its clean view (view 0) and --views augmented views; each test image its
    clean view. The file name carries a key over everything that determines the features, so the
    same inputs reuse the file and any change writes a new one. Work is committed in checksummed
    shards: a killed run resumes from its finished shards. On several processes:
    `torchrun --nproc-per-node N -m featcache extract ...` (see the README).
    """
    result = prepare_cache(options, progress=is_main_process())
    if not is_main_process():
        return
    if result.reused:
        click.echo(f"reused complete cache {result.path} (found in {result.seconds:.2f} s)")
        return
    notes = [f"{result.world_size} processes"] if result.world_size > 1 else []
    if result.shards_resumed:
        notes.append(f"resumed: {result.shards_resumed} of {result.shards_total} shards were already done")
    if result.shards_removed:
        notes.append(f"recomputed {len(result.shards_removed)} damaged shards ({'; '.join(result.shards_removed)})")
    click.echo(f"wrote {result.path}: {result.images} views in {result.seconds:.1f} s "
               f"({result.images_per_second:.1f} images/s" + "".join(f"; {note}" for note in notes) + ")")


@main.command()
@click.argument("cache", type=click.Path(path_type=Path))
def verify(cache):
    """Recompute the sha256 of every shard's rows in CACHE and compare with the checksums recorded at
    extraction. Exit status 1, naming the split and rows, if any differ."""
    from .shards import verify_file
    from .spec import open_complete_cache

    with open_complete_cache(cache) as handle:  # a foreign, other-version or incomplete file: one line
        ranges = sum(len(ranges) for ranges in json.loads(handle.attrs["checksums"]).values())
    started = time.perf_counter()
    mismatches = verify_file(cache)
    if mismatches:
        raise FeatcacheError(f"{cache} fails verification: {'; '.join(mismatches)}; recompute it with "
                             "featcache extract --force (same options)")
    click.echo(f"{cache}: all {ranges} checksummed row ranges match ({time.perf_counter() - started:.2f} s)")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FeatcacheError(f"{name} must be comma-separated numbers, got {text!r}") from None


def find_cache(cache: Path | None, options: dict):
    """The cache named on the command line, or the one the dataset/weights options key to."""
    from .cache import load_cache
    from .spec import cache_path, cache_provenance, shard_folder

    if cache is None:
        dataset = load_dataset_from_options(options)
        provenance = cache_provenance(dataset, options["weights"], options["seed"], options["image_size"],
                                      options["views"], options["precision"])
        cache = cache_path(options["cache_dir"], dataset, provenance)
        if not cache.exists() and not shard_folder(cache).exists():
            raise FeatcacheError(f"no cache for these inputs ({cache}); run featcache extract with the same options")
    return load_cache(cache)


out_options = stacked(
    click.option("--out", type=click.Path(path_type=Path), default=None,
                 help="Run directory for history.json and weights.pt. Default: runs/<approach>-<time>."),
    click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
    click.option("--quiet", is_flag=True, help="No per-epoch lines or progress bars."),
)
epoch_options = click.option("--epochs", type=int, default=15, show_default=True, help="Training epochs.")


@main.command("train-head")
@click.argument("cache", required=False, type=click.Path(path_type=Path))
@data_options
@weights_options
@click.option("--views", type=click.IntRange(min=1), default=10, show_default=True,
              help="Augmented views of the cache to find (without CACHE).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("cache"), show_default=True,
              help="Folder of cache files (without CACHE).")
@precision_option
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds head init, shuffling and the validation split (and picks the cache without CACHE).")
@epoch_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Training batch size.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate of the linear head.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="Adam weight decay of the head.")
@click.option("--head", "head_kind", type=click.Choice(["linear", "logreg"]), default="linear", show_default=True,
              help="'linear': Linear(512, C) trained with Adam; 'logreg': scikit-learn LogisticRegression probe.")
@click.option("--sweep", is_flag=True,
              help="Train a grid of linear heads (--sweep-lrs x --sweep-wds) at once, pick the best on a "
                   "validation split of the training images, retrain it on all of them.")
@click.option("--sweep-lrs", default=",".join(map(str, DEFAULT_SWEEP_LRS)),
              show_default=True, help="Learning rates of the sweep grid.")
@click.option("--sweep-wds", default=",".join(map(str, DEFAULT_SWEEP_WEIGHT_DECAYS)),
              show_default=True, help="Weight decays of the sweep grid.")
@click.option("--logreg-views", type=click.Choice(["clean", "all"]), default="clean", show_default=True,
              help="Fit the logreg probe on clean views only, or on clean plus every augmented view.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of training images held out to choose the sweep setting or logreg's C.")
@out_options
def train_head(cache, **options):
    """Train a feature-extraction head on cached features, in seconds.

    CACHE is a file written by `featcache extract`; without it, the dataset and weights options find
    the matching cache. Epoch e trains on augmented view 1 + e % V of every image. Writes history.json
    (per-epoch train_loss, train_acc, test_acc, config, cache key, wall time, device) and weights.pt.
    """
    from .runs import prepare_run_dir

    if options["sweep"] and options["head_kind"] == "logreg":
        raise FeatcacheError("--sweep trains linear heads; --head logreg chooses its own C on the validation split")
    features = find_cache(cache, options)
    out = prepare_run_dir(options["out"], "feature-extraction", options["overwrite"])
    run_train_head(options, features, out)


def run_train_head(options: dict, features, out: Path, **record) -> Path:
    """Train the head the options ask for on a loaded cache and write its run directory."""
    import torch

    from .heads import logistic_regression_probe, logreg_as_linear, sweep_heads, train_linear_head
    from .loop import EpochConfig, check_learning_rate
    from .spec import BACKBONE_PARAMETERS
    from .tables import markdown_table
    from .runs import HISTORY, write_run

    config = EpochConfig(options["epochs"], options["batch_size"], options["seed"])
    lr, weight_decay = check_learning_rate("--lr", options["lr"]), options["weight_decay"]
    if weight_decay < 0:
        raise FeatcacheError(f"--weight-decay must be non-negative, got {weight_decay}")
    started = time.perf_counter()
    if options["head_kind"] == "logreg":
        probe = logistic_regression_probe(features, options["logreg_views"], val_fraction=options["val_fraction"],
                                          seed=options["seed"])
        head = logreg_as_linear(probe["model"], len(features.classes))
        history = {"train_loss": [probe["train_loss"]], "train_acc": [probe["train_acc"]],
                   "test_acc": [probe["test_acc"]]}
        record["logreg"] = {"grid": probe["grid"], "best": probe["best"]}
        click.echo(markdown_table(probe["grid"], ["C", "val_acc"]))
        click.echo(f"chosen C={probe['best']['C']} (validation accuracy {probe['best']['val_acc']:.4f})")
    else:
        if options["sweep"]:
            result = sweep_heads(features.train_features, features.train_labels,
                                 _floats(options["sweep_lrs"], "--sweep-lrs"),
                                 _floats(options["sweep_wds"], "--sweep-wds"), config, options["val_fraction"])
            click.echo(markdown_table(result.grid, ["lr", "weight_decay", "val_acc", "final_train_loss"]))
            lr, weight_decay = result.best["lr"], result.best["weight_decay"]
            click.echo(f"chosen lr={lr:g}, weight_decay={weight_decay:g} on validation accuracy "
                       f"{result.best['val_acc']:.4f}; retraining on all training images")
            record["sweep"] = {"grid": result.grid, "best": result.best}
        head, history = train_linear_head(features.train_features, features.train_labels, features.test_features,
                                          features.test_labels, config, lr, weight_decay,
                                          None if options["quiet"] else click.echo)
    wall = time.perf_counter() - started
    head_params = sum(p.numel() for p in head.parameters())
    write_run(out, "feature-extraction", history,
              _config_record(options, cache=str(features.path), lr=lr, weight_decay=weight_decay, views=features.views),
              head.state_dict(), wall, torch.device("cpu"), head_params, BACKBONE_PARAMETERS + head_params,
              cache_key=features.key, classes=features.classes, cache_attrs=_jsonable(features.attrs), **record)
    click.echo(f"feature extraction: final test accuracy {history['test_acc'][-1]:.4f}; head trained in "
               f"{wall:.2f} s; run written to {out}")
    return out / HISTORY


def load_image_data(options: dict, view_seed: int):
    """Decode both splits once (resized for --image-size), for the end-to-end trainers."""
    import torch

    from .augment import ImageData, decode_all
    from .backbone import resolve_device

    dataset = load_dataset_from_options(options)
    started = time.perf_counter()
    data = ImageData(decode_all(dataset.train, options["image_size"]), torch.from_numpy(dataset.train.labels),
                     decode_all(dataset.test, options["image_size"]), torch.from_numpy(dataset.test.labels),
                     dataset.classes, options["image_size"], view_seed, resolve_device(options["device"]))
    if not options.get("quiet"):
        click.echo(f"decoded {len(dataset.train)} training and {len(dataset.test)} test images of "
                   f"{', '.join(dataset.classes)} in {time.perf_counter() - started:.1f} s")
    return dataset, data


def _config_record(options: dict, **more) -> dict:
    return {**{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}, **more}


def run_finetune(options: dict, data, dataset, out: Path) -> Path:
    import torch

    from .runs import WEIGHTS, read_run
    from .loop import EpochConfig, check_learning_rate
    from .train import finetune, timed

    config = EpochConfig(options["epochs"], options["batch_size"], options["seed"])
    check_learning_rate("--lr-head", options["lr_head"])
    check_learning_rate("--lr-backbone", options["lr_backbone"])
    init_head = None
    if options.get("init_head"):
        head_run = read_run(options["init_head"])
        if head_run.get("classes") not in (None, dataset.classes):
            raise FeatcacheError(f"--init-head {options['init_head']} was trained on classes "
                                 f"{head_run['classes']}, not {dataset.classes}")
        init_head = torch.load(Path(options["init_head"]) / WEIGHTS, map_location="cpu", weights_only=True)
    unfreeze = _split_names(options["unfreeze"]) or []
    (model, history), wall = timed(finetune, data, options["weights"], config, options["lr_head"],
                                   options["lr_backbone"], unfreeze, options["frozen_bn"], init_head,
                                   log=None if options["quiet"] else tqdm.write, progress=not options["quiet"])
    return _write_end_to_end_run("fine-tuning", model, history, wall, options, data.device, dataset.classes, out)


def run_scratch(options: dict, data, dataset, out: Path) -> Path:
    from .loop import EpochConfig, check_learning_rate
    from .train import scratch, timed

    config = EpochConfig(options["epochs"], options["batch_size"], options["seed"])
    check_learning_rate("--lr", options["lr"])
    (model, history), wall = timed(scratch, data, config, options["lr"],
                                   log=None if options["quiet"] else tqdm.write, progress=not options["quiet"])
    return _write_end_to_end_run("scratch", model, history, wall, options, data.device, dataset.classes, out)


def _write_end_to_end_run(approach: str, model, history: dict, wall: float, options: dict, device, classes,
                          out: Path) -> Path:
    from .backbone import count_parameters
    from .runs import HISTORY, write_run

    trainable, total = count_parameters(model)
    write_run(out, approach, history, _config_record(options), model.state_dict(), wall, device, trainable, total,
              classes=classes)
    click.echo(f"{approach}: final test accuracy {history['test_acc'][-1]:.4f} in {wall:.1f} s; run written to {out}")
    return out / HISTORY


finetune_options = stacked(
    click.option("--lr-head", type=float, default=1e-3, show_default=True, help="Adam learning rate of the new head."),
    click.option("--lr-backbone", type=float, default=1e-5, show_default=True,
                 help="Adam learning rate of the unfrozen backbone stages."),
    click.option("--unfreeze", default="layer4", show_default=True,
                 help="Comma-separated backbone stages to train (conv1, bn1, layer1..layer4); the rest stay frozen."),
    click.option("--frozen-bn", type=click.Choice(["eval", "train"]), default="eval", show_default=True,
                 help="'eval': frozen modules stay in eval mode, their BatchNorm statistics never change "
                      "(and the frozen trunk's test outputs are computed once). 'train': the notebook's "
                      "behaviour, whole model in train mode."),
)


@main.command("finetune")
@data_options
@weights_options
@run_options(32, "Training batch size.")
@epoch_options
@finetune_options
@click.option("--init-head", type=click.Path(path_type=Path), default=None,
              help="Start the head from a train-head run directory instead of a random init.")
@out_options
def finetune_command(**options):
    """Fine-tune a pretrained ResNet-18 end to end: new head plus the --unfreeze stages, two learning
    rates, the reference augmentation drawn fresh each epoch, test accuracy every epoch."""
    from .runs import prepare_run_dir

    out = prepare_run_dir(options["out"], "fine-tuning", options["overwrite"])
    dataset, data = load_image_data(options, options["seed"])
    run_finetune(options, data, dataset, out)


@main.command("scratch")
@data_options
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True,
              help="Crop size S; images are first resized to S*256/224.")
@run_options(32, "Training batch size.")
@epoch_options
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@out_options
def scratch_command(**options):
    """Train ResNet-18 from a seeded random init: every parameter, Adam, the reference augmentation."""
    from .runs import prepare_run_dir

    out = prepare_run_dir(options["out"], "scratch", options["overwrite"])
    dataset, data = load_image_data(options, options["seed"])
    run_scratch(options, data, dataset, out)


@main.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "comparison", show_default=True,
              help="Folder for comparison.png, summary.md and summary.csv.")
def compare_command(run_dirs, out):
    """Compare run directories: a three-panel PNG (training loss, training accuracy, test accuracy per
    epoch; scratch red, feature extraction blue, fine-tuning green) and a summary table as Markdown and CSV."""
    from .report import SUMMARY_COLUMNS, compare
    from .tables import markdown_table

    result = compare(list(run_dirs), out)
    click.echo(markdown_table(result["rows"], SUMMARY_COLUMNS))
    click.echo(f"wrote {result['png']}, {result['markdown']} and {result['csv']}")


@main.command("inspect")
@data_options
@click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True, help="Crop size S.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the augmented views shown.")
@click.option("--count", type=click.IntRange(min=1, max=64), default=16, show_default=True,
              help="Training images to show (spread over the classes).")
@click.option("--view", type=click.IntRange(min=0), default=1, show_default=True,
              help="Which view to show: 0 clean, 1.. augmented (as extract caches them).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "inspect.png", show_default=True,
              help="PNG file of the image grid.")
def inspect_command(data, classes, per_class, test_per_class, download, data_root, image_size, seed, count, view, out):
    """Show ResNet-18's parameters per module, the share each approach trains, and a grid of
    training images as augmented, with their class names."""
    import numpy as np
    from torchvision.models import resnet18

    from .augment import DecodedSplit, make_views
    from .data import load_dataset
    from .report import image_grid, parameter_table
    from .tables import markdown_table

    dataset = load_dataset(data, _split_names(classes), per_class, test_per_class, download, data_root)
    rows = parameter_table(resnet18(num_classes=len(dataset.classes)))
    click.echo(markdown_table(rows, ["module", "parameters", "feature_extraction", "fine_tuning"]))
    picks = np.linspace(0, len(dataset.train) - 1, min(count, len(dataset.train))).round().astype(int).tolist()
    decoded = DecodedSplit(dataset.train, image_size)
    views = make_views([decoded[i] for i in picks], picks, view, "train", seed, image_size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    image_grid(views, [dataset.classes[dataset.train.labels[i]] for i in picks], out)
    click.echo(f"wrote {out}")


@main.command("experiment")
@data_options
@weights_options
@run_options(32, "Training batch size (all three approaches).")
@epoch_options
@click.option("--lr", type=float, default=1e-3, show_default=True,
              help="Adam learning rate of scratch training and of the feature-extraction head.")
@finetune_options
@click.option("--views", type=click.IntRange(min=1), default=None,
              help="Augmented views to cache. Default: --epochs, so every epoch sees a fresh augmentation "
                   "as in the end-to-end runs.")
@click.option("--extract-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per backbone forward during extraction.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("cache"), show_default=True,
              help="Folder of cache files.")
@precision_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the three run directories and the comparison. Default: runs/experiment-<time>.")
@click.option("--overwrite", is_flag=True, help="Replace runs already in --out.")
@click.option("--quiet", is_flag=True, help="No per-epoch lines or progress bars.")
def experiment(**options):
    """The whole reference experiment: scratch, extract + train-head, finetune, then compare, into one
    folder. Reference settings by default; scale down on a CPU with --image-size, --epochs, --per-class."""
    from .cache import load_cache
    from .loop import EpochConfig, check_learning_rate
    from .report import SUMMARY_COLUMNS, compare
    from .runs import APPROACHES, prepare_run_dir
    from .tables import markdown_table
    from .train import build_finetune_model

    EpochConfig(options["epochs"], options["batch_size"], options["seed"])  # fail before any work
    for name in ("lr", "lr_head", "lr_backbone"):
        check_learning_rate("--" + name.replace("_", "-"), options[name])
    build_finetune_model(options["weights"], 2, options["seed"], _split_names(options["unfreeze"]) or [])
    out = options["out"] or Path("runs") / f"experiment-{time.strftime('%Y%m%d-%H%M%S')}"
    folders = {approach: prepare_run_dir(out / approach, approach, options["overwrite"])
               for approach in APPROACHES}
    started = time.perf_counter()
    dataset, data = load_image_data(options, options["seed"])
    run_scratch(options, data, dataset, folders["scratch"])

    extract_options = {**options, "views": options["views"] or options["epochs"],
                       "batch_size": options["extract_batch_size"], "force": False}
    extracted = prepare_cache(extract_options, progress=not options["quiet"])
    click.echo(f"{'reused' if extracted.reused else 'wrote'} cache {extracted.path} in {extracted.seconds:.1f} s")
    head_options = {**options, "weight_decay": 0.0, "head_kind": "linear", "sweep": False}
    run_train_head(head_options, load_cache(extracted.path), folders["feature-extraction"],
                   extract_wall_time_s=extracted.seconds, cache_reused=extracted.reused)

    run_finetune({**options, "init_head": None}, data, dataset, folders["fine-tuning"])
    result = compare(list(folders.values()), out)
    click.echo(markdown_table(result["rows"], SUMMARY_COLUMNS))
    click.echo(f"experiment finished in {time.perf_counter() - started:.1f} s; plot {result['png']}, "
               f"tables {result['markdown']} and {result['csv']}")


@main.command("bench")
@data_options(per_class=100, test_per_class=200)
@weights_options
@run_options(32, "Training batch size (head and end-to-end loop).")
@epoch_options
@click.option("--views", type=click.IntRange(min=1), default=10, show_default=True, help="Augmented views to extract.")
@click.option("--extract-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per backbone forward, for extraction and the bare-forward ceiling.")
@click.option("--no-end-to-end", is_flag=True, help="Skip the (slow) end-to-end loop: throughput figures only.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "bench", show_default=True,
              help="Folder for bench.json and bench.md.")
def bench_command(**options):
    """Measure the accelerator: end-to-end feature extraction versus extract + train-head versus
    train-head alone, extraction versus the bare backbone forward, and featcache's input pipeline
    versus the notebook's, all in one process on one config. Defaults finish in a few minutes on a
    2-core CPU; --per-class 500 --test-per-class 1000 is the reference task's size."""
    from .backbone import resolve_device
    from .bench import bench_markdown, run_bench, write_bench

    dataset = load_dataset_from_options(options)
    result = run_bench(dataset, options["weights"], options["image_size"], options["views"], options["epochs"],
                       options["batch_size"], options["extract_batch_size"], resolve_device(options["device"]),
                       options["num_workers"], options["seed"], not options["no_end_to_end"], log=click.echo)
    command = "featcache " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("featcache") else "featcache bench"
    json_path, md_path = write_bench(result, options["out"], command)
    click.echo(bench_markdown(result, command))
    click.echo(f"wrote {json_path} and {md_path}")


def _jsonable(attrs: dict) -> dict:
    return {key: (value if isinstance(value, (str, int, float, bool)) else str(value)) for key, value in attrs.items()}


if __name__ == "__main__":
    sys.exit(main())

"""The `featcache` command: a thin click layer over the library API."""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import click
import torch

from . import FeatcacheError, __version__
from .heads import DEFAULT_SWEEP_LRS, DEFAULT_SWEEP_WEIGHT_DECAYS


class FriendlyGroup(click.Group):
    """Turns FeatcacheError into one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatcacheError as error:
            raise click.ClickException(str(error)) from None


def data_options(function):
    """Options that pick the dataset, shared by every command that reads images."""
    options = [
        click.option("--data", default="cifar10", show_default=True,
                     help="'cifar10' (torchvision's CIFAR-10) or a folder with train/<class>/* and test/<class>/*."),
        click.option("--classes", default=None,
                     help="Comma-separated class names, in label order. Default: cat,dog,horse for "
                          "CIFAR-10, every class folder for a folder."),
        click.option("--per-class", type=int, default=500, show_default=True,
                     help="Keep the first N training images of each class, in dataset order."),
        click.option("--test-per-class", type=int, default=None,
                     help="Keep the first N test images of each class. Default: all."),
        click.option("--download", is_flag=True, help="Download CIFAR-10 if it is not in --data-root."),
        click.option("--data-root", type=click.Path(path_type=Path), default=None,
                     help="Where CIFAR-10 lives or is downloaded to. Default: ~/.cache/featcache/data "
                          "or $FEATCACHE_DATA_ROOT."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


def weights_options(function):
    """Options that pick the backbone weights and the image size."""
    options = [
        click.option("--weights", default="imagenet", show_default=True,
                     help="'imagenet' (torchvision ResNet18_Weights.IMAGENET1K_V1, via torchvision's cache), "
                          "'random' (seeded init, for tests) or a path to a ResNet-18 state dict (its fc is dropped)."),
        click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True,
                     help="Crop size S; images are first resized to S*256/224, as the reference 256/224 pipeline."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


def run_options(batch_size: int, batch_help: str):
    """Seed, device, batch size and decoding workers; batch size default differs per command."""
    def decorate(function):
        options = [
            click.option("--seed", type=int, default=0, show_default=True,
                         help="Seeds the augmented views, random weights, head init and shuffling."),
            click.option("--device", default="auto", show_default=True,
                         help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."),
            click.option("--batch-size", type=click.IntRange(min=1), default=batch_size, show_default=True,
                         help=batch_help),
            click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
                         help="DataLoader worker processes that decode images."),
        ]
        return functools.reduce(lambda f, option: option(f), reversed(options), function)
    return decorate


def cache_options(function):
    options = [
        click.option("--views", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Augmented views cached per training image (plus the clean view 0)."),
        click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("cache"), show_default=True,
                     help="Folder of cache files."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


def _split_classes(classes: str | None) -> list[str] | None:
    return [name.strip() for name in classes.split(",") if name.strip()] if classes else None


def load_dataset_from_options(options: dict):
    from .data import load_dataset

    return load_dataset(options["data"], _split_classes(options["classes"]), options["per_class"],
                        options["test_per_class"], options["download"], options["data_root"])


def prepare_cache(options: dict, progress: bool = True):
    """Resolve dataset and weights, then reuse, resume or write the matching cache."""
    from .backbone import load_backbone, resolve_device, weights_hash
    from .cache import cache_provenance, extract

    dataset = load_dataset_from_options(options)
    backbone = load_backbone(options["weights"], options["seed"])
    provenance = cache_provenance(dataset, options["weights"], weights_hash(backbone),
                                  options["image_size"], options["views"], options["seed"])
    return extract(dataset, backbone, provenance, options["cache_dir"],
                   batch_size=options["batch_size"], device=resolve_device(options["device"]),
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
@click.option("--force", is_flag=True, help="Recompute even if a complete cache for these inputs exists.")
def extract(**options):
    """Run the frozen backbone once over every view and cache the 512-d features in HDF5.

    Each training image gets its clean view (view 0) and --views augmented views; each test image its
    clean view. The file name carries a key over everything that determines the features, so the
    same inputs reuse the file and any change writes a new one. A killed run resumes where it stopped.
    """
    started = time.perf_counter()
    result = prepare_cache(options)
    if result.reused:
        click.echo(f"reused complete cache {result.path} (found in {time.perf_counter() - started:.2f} s)")
    else:
        resumed = f", resumed after {result.resumed_from} rows" if result.resumed_from else ""
        click.echo(f"wrote {result.path}: {result.images} views in {result.seconds:.1f} s "
                   f"({result.images_per_second:.1f} images/s{resumed})")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FeatcacheError(f"{name} must be comma-separated numbers, got {text!r}") from None


def find_cache(cache: Path | None, options: dict):
    """The cache named on the command line, or the one the dataset/weights options key to."""
    from .backbone import load_backbone, weights_hash
    from .cache import cache_path, cache_provenance, load_cache

    if cache is None:
        dataset = load_dataset_from_options(options)
        backbone = load_backbone(options["weights"], options["seed"])
        provenance = cache_provenance(dataset, options["weights"], weights_hash(backbone),
                                      options["image_size"], options["views"], options["seed"])
        cache = cache_path(options["cache_dir"], dataset, provenance)
        if not cache.exists() and not cache.with_name(cache.name + ".partial").exists():
            raise FeatcacheError(f"no cache for these inputs ({cache}); run featcache extract with the same options")
    return load_cache(cache)


def out_options(function):
    options = [
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Run directory for history.json and weights.pt. Default: runs/<approach>-<time>."),
        click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
        click.option("--quiet", is_flag=True, help="No per-epoch lines or progress bars."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


def epoch_options(function):
    options = [
        click.option("--epochs", type=int, default=15, show_default=True, help="Training epochs."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


@main.command("train-head")
@click.argument("cache", required=False, type=click.Path(path_type=Path))
@data_options
@weights_options
@click.option("--views", type=click.IntRange(min=1), default=10, show_default=True,
              help="Augmented views of the cache to find (without CACHE).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("cache"), show_default=True,
              help="Folder of cache files (without CACHE).")
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
    from .backbone import BACKBONE_PARAMETERS
    from .heads import logistic_regression_probe, logreg_as_linear, sweep_heads, train_linear_head
    from .report import markdown_table
    from .runs import prepare_run_dir, write_run
    from .train import EpochConfig, check_learning_rate

    config = EpochConfig(options["epochs"], options["batch_size"], options["seed"])
    check_learning_rate("--lr", options["lr"])
    if options["weight_decay"] < 0:
        raise FeatcacheError(f"--weight-decay must be non-negative, got {options['weight_decay']}")
    features = find_cache(cache, options)
    out = prepare_run_dir(options["out"], "feature-extraction", options["overwrite"])
    log = None if options["quiet"] else click.echo
    started = time.perf_counter()
    extra = {}
    lr, weight_decay = options["lr"], options["weight_decay"]
    if options["head_kind"] == "logreg":
        probe = logistic_regression_probe(features, options["logreg_views"], val_fraction=options["val_fraction"],
                                          seed=options["seed"])
        head = logreg_as_linear(probe["model"], len(features.classes))
        history = {"train_loss": [probe["train_loss"]], "train_acc": [probe["train_acc"]],
                   "test_acc": [probe["test_acc"]]}
        extra["logreg"] = {"grid": probe["grid"], "best": probe["best"]}
        click.echo(markdown_table(probe["grid"], ["C", "val_acc"]))
        click.echo(f"chosen C={probe['best']['C']} (validation accuracy {probe['best']['val_acc']:.4f}); "
                   f"test accuracy {probe['test_acc']:.4f}")
    else:
        if options["sweep"]:
            result = sweep_heads(features.train_features, features.train_labels,
                                 _floats(options["sweep_lrs"], "--sweep-lrs"),
                                 _floats(options["sweep_wds"], "--sweep-wds"), config, options["val_fraction"])
            click.echo(markdown_table(result.grid, ["lr", "weight_decay", "val_acc", "final_train_loss"]))
            lr, weight_decay = result.best["lr"], result.best["weight_decay"]
            click.echo(f"chosen lr={lr:g}, weight_decay={weight_decay:g} on validation accuracy "
                       f"{result.best['val_acc']:.4f}; retraining on all training images")
            extra["sweep"] = {"grid": result.grid, "best": result.best}
        head, history = train_linear_head(features.train_features, features.train_labels, features.test_features,
                                          features.test_labels, config, lr, weight_decay, log)
    wall = time.perf_counter() - started
    run_config = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
                  "cache": str(features.path), "lr": lr, "weight_decay": weight_decay, "views": features.views}
    head_params = sum(p.numel() for p in head.parameters())
    write_run(out, "feature-extraction", history, run_config, head.state_dict(), wall, torch.device("cpu"),
              head_params, BACKBONE_PARAMETERS + head_params,
              cache_key=features.key, classes=features.classes, cache_attrs=_jsonable(features.attrs), **extra)
    click.echo(f"final test accuracy {history['test_acc'][-1]:.4f}; trained in {wall:.2f} s; run written to {out}")


def _jsonable(attrs: dict) -> dict:
    return {key: (value if isinstance(value, (str, int, float, bool)) else str(value)) for key, value in attrs.items()}


if __name__ == "__main__":
    sys.exit(main())

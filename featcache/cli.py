"""The `featcache` command: a thin click layer over the library API."""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import click

from . import FeatcacheError, __version__


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


def model_options(function):
    """Options that pick the backbone, image size, seed and device."""
    options = [
        click.option("--weights", default="imagenet", show_default=True,
                     help="'imagenet' (torchvision ResNet18_Weights.IMAGENET1K_V1, via torchvision's cache), "
                          "'random' (seeded init, for tests) or a path to a ResNet-18 state dict (its fc is dropped)."),
        click.option("--image-size", type=click.IntRange(min=16), default=224, show_default=True,
                     help="Crop size S; images are first resized to S*256/224, as the reference 256/224 pipeline."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the augmented views, random weights, head init and shuffling."),
        click.option("--device", default="auto", show_default=True,
                     help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Images per backbone forward. Default: 64 for extract, 32 for training."),
        click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader worker processes that decode images."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)


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
                   batch_size=options["batch_size"] or 64, device=resolve_device(options["device"]),
                   num_workers=options["num_workers"], force=options.get("force", False), progress=progress)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featcache")
def main():
    """Transfer learning on small image datasets, fast: cache a frozen ResNet-18's features once,
    then train heads on them in seconds, and compare with fine-tuning and training from scratch."""


@main.command()
@data_options
@model_options
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


if __name__ == "__main__":
    sys.exit(main())

"""The `featcache` command: each command parses its options, calls one function of featcache.api and
prints what it returns. The API names its arguments in errors (`per_class`); FriendlyGroup prints the
command's option (--per-class) there instead."""
from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

import click
from tqdm import tqdm

from . import api
from .api import FeatcacheError, ReportedElsewhere, __version__

# featcache.api imports torch, scikit-learn and matplotlib inside the functions that use them: finding
# an existing cache (a repeated `featcache extract`) answers in a fraction of a second.


class FriendlyGroup(click.Group):
    """Turns FeatcacheError, and the OSErrors of the environment (permissions, a full disk), into one
    line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ReportedElsewhere:
            ctx.exit(1)
        except (FeatcacheError, OSError) as error:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            rank = "" if api.is_main_process() else f"rank {os.environ['RANK']}: "  # under torchrun, who failed
            message = " ".join(option_names(str(error), command).split())  # one line, always
            raise click.ClickException(rank + message) from None


def option_names(message: str, command: click.Command | None) -> str:
    """The API's `argument` names in a message as this command's --options (unknown ones unquoted)."""
    options = {param.name: param.opts[0] for param in (command.params if command else [])
               if isinstance(param, click.Option)}
    return re.sub(r"`(\w+)`", lambda match: options.get(match.group(1), match.group(1)), message)


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
    click.option("--image-size", type=click.IntRange(min=api.MIN_IMAGE_SIZE), default=224, show_default=True,
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
    "--shard-size", type=click.IntRange(min=1), default=api.DEFAULT_SHARD_SIZE, show_default=True,
    help="Images per shard: extraction commits (and resumes, and deals out to torchrun ranks) this many "
         "consecutive images at a time. Features are bit-identical for the same --shard-size, --batch-size and "
         "threads per process (OMP_NUM_THREADS; torchrun gives each rank 1).")


cache_options = stacked(
    click.option("--views", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Augmented views cached per training image (plus the clean view 0)."),
    click.option("--cache-dir", type=click.Path(path_type=Path), default=Path("cache"), show_default=True,
                 help="Folder of cache files."),
    precision_option,
)


def _split_names(classes: str | None) -> tuple[str, ...] | None:
    return tuple(name.strip() for name in classes.split(",") if name.strip()) if classes else None


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FeatcacheError(f"{name} must be comma-separated numbers, got {text!r}") from None


def data_spec(options: dict) -> api.DataSpec:
    return api.DataSpec(options["data"], _split_names(options["classes"]), options["per_class"],
                        options["test_per_class"], options["download"], options["data_root"])


def cache_spec(options: dict, views: int | None = None) -> api.CacheSpec:
    return api.CacheSpec(data_spec(options), options["weights"], options["image_size"], views or options["views"],
                         options["seed"], options["precision"], options["cache_dir"])


def run_dir(options: dict, approach: str) -> Path:
    """--out, or runs/<approach>-<time>: a command always writes its run."""
    return options["out"] or api.default_run_dir(approach)


def epoch_printer(options: dict):
    """Per-epoch lines above any progress bar, unless --quiet."""
    return None if options["quiet"] else tqdm.write


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
@click.option("--rehash", is_flag=True,
              help="List every class folder and read every image file to fingerprint the dataset, instead of "
                   "trusting what --cache-dir remembers: content hashes of files whose size, mtime, ctime and inode "
                   "are unchanged, and listings of folders whose mtime and ctime are unchanged.")
def extract(**options):
    """Run the frozen backbone once over every view and cache the 512-d features in HDF5.

    Each training image gets its clean view (view 0) and --views augmented views; each test image its
    clean view. The file name carries a key over everything that determines the features, so the
    same inputs reuse the file and any change writes a new one. Work is committed in checksummed
    shards: a killed run resumes from its finished shards. On several processes:
    `torchrun --nproc-per-node N -m featcache extract ...` (see docs/processes.md).
    """
    result = api.extract(cache_spec(options), batch_size=options["batch_size"], shard_size=options["shard_size"],
                         device=options["device"], num_workers=options["num_workers"], force=options["force"],
                         rehash=options["rehash"], progress=api.is_main_process())
    if not api.is_main_process():
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
    ranges, seconds = api.verify(cache)
    click.echo(f"{cache}: all {ranges} checksummed row ranges match ({seconds:.2f} s)")


out_options = stacked(
    click.option("--out", type=click.Path(path_type=Path), default=None,
                 help="Run directory for history.json, weights.pt and predictions.npz (the last epoch's test "
                      "predictions). Default: runs/<approach>-<time>."),
    click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
    click.option("--quiet", is_flag=True, help="No per-epoch lines or progress bars."),
)
epoch_options = click.option("--epochs", type=int, default=15, show_default=True, help="Training epochs.")


def seeds_option(varies: str):
    return click.option(
        "--seeds", default=None,
        help=f"Train once per training seed: 'A-B', a list '0,3,7' or a count N (seeds 0..N-1). A seed varies {varies}, "
             "never the views (--seed picks those). Writes --out/seed-<k>/ per seed and --out/seeds.json, and "
             "prints the mean, standard deviation and 95% t-interval of the final test accuracy.")


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
@click.option("--head", type=click.Choice(["linear", "logreg", "knn"]), default="linear", show_default=True,
              help="'linear': Linear(512, C) trained with Adam; 'logreg': scikit-learn LogisticRegression probe; "
                   "'knn': k nearest neighbours by cosine similarity on clean views, k chosen on the validation "
                   "split (1-NN when a class has fewer than 5 training images).")
@click.option("--knn-temperature", type=float, default=None,
              help="kNN votes weighted by exp(similarity / T) (DINOv2 uses 0.07). Default: uniform votes.")
@click.option("--sweep", is_flag=True,
              help="Train a grid of linear heads (--sweep-lrs x --sweep-wds) at once, pick the best on a "
                   "validation split of the training images, retrain it on all of them.")
@click.option("--sweep-lrs", default=",".join(map(str, api.DEFAULT_SWEEP_LRS)),
              show_default=True, help="Learning rates of the sweep grid.")
@click.option("--sweep-wds", default=",".join(map(str, api.DEFAULT_SWEEP_WDS)),
              show_default=True, help="Weight decays of the sweep grid.")
@click.option("--logreg-views", type=click.Choice(["clean", "all"]), default="clean", show_default=True,
              help="Fit the logreg probe on clean views only, or on clean plus every augmented view.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of training images held out to choose the sweep setting, logreg's C or kNN's k.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory for the cache's data above the process's baseline (e.g. 1GB, 512MiB). A cache that does "
                   "not fit is streamed from the file in shuffled blocks (linear heads only). "
                   "Default: half the available RAM.")
@seeds_option("the head's init, the shuffle and the validation split (heads train in lockstep)")
@out_options
def train_head(cache, **options):
    """Train a feature-extraction head on cached features, in seconds.

    CACHE is a file written by `featcache extract`; without it, the dataset and weights options find
    the matching cache. Epoch e trains on augmented view 1 + e % V of every image. Writes history.json
    (per-epoch train_loss, train_acc, test_acc, config, cache key, wall time, device) and weights.pt.
    """
    common = dict(head=options["head"], epochs=options["epochs"], batch_size=options["batch_size"], lr=options["lr"],
                  weight_decay=options["weight_decay"], sweep=options["sweep"],
                  sweep_lrs=_floats(options["sweep_lrs"], "--sweep-lrs") if options["sweep"] else (),
                  sweep_wds=_floats(options["sweep_wds"], "--sweep-wds") if options["sweep"] else (),
                  val_fraction=options["val_fraction"], logreg_views=options["logreg_views"],
                  knn_temperature=options["knn_temperature"], max_memory=options["max_memory"],
                  progress=not options["quiet"],
                  out=run_dir(options, "feature-extraction"),
                  overwrite=options["overwrite"])
    if options["seeds"]:
        group = api.train_head_seeds(cache or cache_spec(options), options["seeds"], **common)
        click.echo(api.seeds_line(group))
        return
    run = api.train_head(cache or cache_spec(options), seed=options["seed"], log=epoch_printer(options),
                         echo=click.echo, **common)
    click.echo(api.summary_line(run))


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


end_to_end_options = stacked(
    click.option("--max-memory", default=None, metavar="SIZE",
                 help="Memory for decoded images, per process (e.g. 8GB). Splits that do not fit are decoded per "
                      "batch by --num-workers workers instead of once; the numbers are the same. Default: half "
                      "the available RAM, shared among the machine's ranks."),
    click.option("--resume", is_flag=True,
                 help="Continue the killed run in --out from its last checkpoint (saved after every epoch), "
                      "with the same options; any number of ranks. With --seeds: finished seeds are kept (their "
                      "options checked), the unfinished one resumes from its checkpoint, the rest start."),
)


@main.command("finetune")
@data_options
@weights_options
@run_options(32, "Training batch size.")
@epoch_options
@finetune_options
@click.option("--init-head", type=click.Path(path_type=Path), default=None,
              help="Start the head from a train-head run directory instead of a random init.")
@end_to_end_options
@seeds_option("the head's init and the shuffle (one run after another)")
@out_options
def finetune_command(**options):
    """Fine-tune a pretrained ResNet-18 end to end: new head plus the --unfreeze stages, two learning
    rates, the reference augmentation drawn fresh each epoch, test accuracy every epoch."""
    common = dict(epochs=options["epochs"], batch_size=options["batch_size"], seed=options["seed"],
                  lr_head=options["lr_head"], lr_backbone=options["lr_backbone"],
                  unfreeze=_split_names(options["unfreeze"]) or (), frozen_bn=options["frozen_bn"],
                  init_head=options["init_head"], out=run_dir(options, "fine-tuning"), overwrite=options["overwrite"],
                  log=epoch_printer(options), progress=not options["quiet"], image_size=options["image_size"],
                  device=options["device"], echo=None if options["quiet"] else click.echo, resume=options["resume"],
                  max_memory=options["max_memory"], num_workers=options["num_workers"])
    if options["seeds"]:
        group = api.finetune_seeds(data_spec(options), options["weights"], options["seeds"], **common)
        if api.is_main_process():
            click.echo(api.seeds_line(group))
        return
    run = api.finetune(data_spec(options), options["weights"], **common)
    if api.is_main_process():
        click.echo(api.summary_line(run))


@main.command("scratch")
@data_options
@click.option("--image-size", type=click.IntRange(min=api.MIN_IMAGE_SIZE), default=224, show_default=True,
              help="Crop size S; images are first resized to S*256/224.")
@run_options(32, "Training batch size.")
@epoch_options
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@end_to_end_options
@seeds_option("the model's init and the shuffle (one run after another)")
@out_options
def scratch_command(**options):
    """Train ResNet-18 from a seeded random init: every parameter, Adam, the reference augmentation."""
    common = dict(epochs=options["epochs"], batch_size=options["batch_size"], seed=options["seed"], lr=options["lr"],
                  out=run_dir(options, "scratch"), overwrite=options["overwrite"], log=epoch_printer(options),
                  progress=not options["quiet"], image_size=options["image_size"], device=options["device"],
                  echo=None if options["quiet"] else click.echo, resume=options["resume"],
                  max_memory=options["max_memory"], num_workers=options["num_workers"])
    if options["seeds"]:
        group = api.scratch_seeds(data_spec(options), options["seeds"], **common)
        if api.is_main_process():
            click.echo(api.seeds_line(group))
        return
    run = api.scratch(data_spec(options), **common)
    if api.is_main_process():
        click.echo(api.summary_line(run))


@main.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "comparison", show_default=True,
              help="Folder for comparison.png, confusion.png, summary.md and summary.csv.")
def compare_command(run_dirs, out):
    """Compare run directories: a three-panel PNG (training loss, training accuracy, test accuracy per
    epoch; scratch red, feature extraction blue, fine-tuning green), a summary table as Markdown and CSV,
    and from each run's stored last-epoch predictions its per-class test accuracy and confusion matrix
    (confusion.png, and in summary.md)."""
    result = api.compare(run_dirs, out)
    several = any(row["seeds"] > 1 for row in result["rows"])
    click.echo(api.markdown_table(result["rows"], api.SUMMARY_COLUMNS[:3] + api.UNCERTAINTY_COLUMNS if several
                                  else api.SUMMARY_COLUMNS))
    for row in result["comparisons"]:
        click.echo(f"{row['a']} - {row['b']}: {row['verdict']}")
    if result["confusion_png"]:
        click.echo(f"wrote {result['png']}, {result['confusion_png']}, {result['markdown']} (with per-class "
                   f"accuracy and confusion matrices) and {result['csv']}")
    else:
        click.echo(f"wrote {result['png']}, {result['markdown']} and {result['csv']} (no run stored predictions: "
                   "no per-class results)")


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="File to write (by convention .pt2); replaced if it exists.")
@click.option("--weights", default=None,
              help="Feature extraction only: the backbone weights file, if it is no longer where the cache "
                   "recorded it. Its sha256 must be the one the cache recorded.")
def export_command(run_dir, out, weights):
    """Export RUN_DIR (any approach) as one file that PyTorch alone loads with torch.export.load: uint8 RGB
    images [N, 3, H, W] of any size in, class probabilities out, the clean-view resize, crop and
    normalisation inside; class names and provenance in its extra file featcache.json. Runs trained by
    featcache 0.1 (PIL-resized images) are refused: train them again."""
    metadata = api.export(run_dir, out, weights=weights)
    click.echo(f"exported {metadata['approach']} run {run_dir} ({len(metadata['classes'])} classes: "
               f"{', '.join(metadata['classes'])}; {metadata['image_size']} px) to {out}")
    if metadata.get("cache_precision") == "bf16":
        click.echo("note: the head was trained on bf16-autocast features; the exported backbone runs in fp32, "
                   "so a few predictions can differ from the run's own")


@main.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="CSV (or JSON) file to write.")
@click.option("--format", "output_format", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: path, class_k and probability_k for k = 1..--top-k, error; json: {classes, model, "
                   "predictions: [{path, top: [{class, probability}], error}]}.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Classes listed per image, most probable first; at most the model's number of classes.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per forward pass (images of any sizes are batched together).")
@click.option("--device", default="auto", show_default=True,
              help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes that decode images.")
@click.option("--skip-bad", is_flag=True,
              help="Report a file that is not a readable image, list it with its error, and go on "
                   "(default: stop with an error naming it, writing nothing).")
@click.option("--weights", default=None, help="When MODEL is a feature-extraction run directory: its backbone weights file, as for "
                   "featcache export.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict_command(model, inputs, out, output_format, top_k, batch_size, device, num_workers, skip_bad, weights,
                    quiet):
    """Classify INPUTS (image files and folders, searched recursively) with MODEL, a file from featcache
    export or a run directory, and write each image's top-k classes to --out in input order. When every
    image sits in a folder named after a class (test/<class>/*), also print the accuracy against them."""
    result = api.predict(model, inputs, out, output_format=output_format, top_k=top_k, batch_size=batch_size,
                         device=device, num_workers=num_workers, skip_bad=skip_bad, weights=weights,
                         progress=not quiet, echo=lambda line: click.echo(line, err=True))
    skipped = f", {result['unreadable']} unreadable (listed with their error)" if result["unreadable"] else ""
    click.echo(f"classified {result['images']} images{skipped} at {result['images_per_second']:.0f} images/s; "
               f"wrote {result['path']}")
    if result["folder_accuracy"] is not None:
        click.echo(f"accuracy against the folder names (each image's folder is a class): {result['folder_accuracy']:.4f}")


@main.command("fewshot")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--shots", default="1,2,5,10,20,50", show_default=True,
              help="Training images per class (k) to sample, comma-separated.")
@click.option("--trials", type=click.IntRange(min=2), default=20, show_default=True,
              help="Subsets drawn per k (seeded, without replacement, the same for every probe).")
@click.option("--probes", default="linear,logreg,knn", show_default=True,
              help="linear (reference head, fixed budget of 705 Adam steps), logreg (train-head's probe: C on a "
                   "validation split from 5 shots, else C=1), knn (k on a validation split from 5 shots, else 1-NN).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the subsets, inits and shuffles.")
@click.option("--knn-temperature", type=float, default=None,
              help="kNN votes weighted by exp(similarity / T) (DINOv2 uses 0.07). Default: uniform votes.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "fewshot", show_default=True,
              help="Folder for fewshot.md, fewshot.csv, fewshot.json and fewshot.png.")
def fewshot_command(cache, shots, trials, probes, seed, knn_temperature, out):
    """Few-shot curves from CACHE alone (no image is decoded): for each k, --trials subsets of k training
    images per class, each probe trained on them and tested on the whole test split; mean test accuracy
    and 95% t-interval over trials per probe, as a table and a PNG of accuracy versus k."""
    try:
        shot_list = [int(part) for part in shots.split(",") if part.strip()]
    except ValueError:
        raise FeatcacheError(f"`shots` must be comma-separated integers, got {shots!r}") from None
    result = api.fewshot(cache, out, shots=shot_list, trials=trials, seed=seed,
                         probes=_split_names(probes) or (), knn_temperature=knn_temperature, log=click.echo)
    click.echo(result["markdown"])
    click.echo(f"{result['seconds']:.1f} s of compute; wrote {result['png']}, {result['md']}, {result['csv']} "
               f"and {result['json']}")


@main.command("inspect")
@data_options
@click.option("--image-size", type=click.IntRange(min=api.MIN_IMAGE_SIZE), default=224, show_default=True, help="Crop size S.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the augmented views shown.")
@click.option("--count", type=click.IntRange(min=1, max=64), default=16, show_default=True,
              help="Training images to show (spread over the classes).")
@click.option("--view", type=click.IntRange(min=0), default=1, show_default=True,
              help="Which view to show: 0 clean, 1.. augmented (as extract caches them).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "inspect.png", show_default=True,
              help="PNG file of the image grid.")
def inspect_command(out, image_size, seed, count, view, **options):
    """Show ResNet-18's parameters per module, the share each approach trains, and a grid of
    training images as augmented, with their class names."""
    rows = api.inspect(data_spec(options), out, image_size=image_size, seed=seed, count=count, view=view)
    click.echo(api.markdown_table(rows, ["module", "parameters", "feature_extraction", "fine_tuning"]))
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
@click.option("--seeds", default=None,
              help="Train every approach once per training seed ('A-B', '0,3,7' or a count N: seeds 0..N-1) on "
                   "the same views and cache: seed k of each approach is a pair. The summary shows mean ± "
                   "interval per approach and the paired differences.")
def experiment(**options):
    """The whole reference experiment: scratch, extract + train-head, finetune, then compare, into one
    folder. Reference settings by default; scale down on a CPU with --image-size, --epochs, --per-class."""
    result = api.experiment(
        cache_spec(options, views=options["views"] or options["epochs"]), options["out"], epochs=options["epochs"],
        batch_size=options["batch_size"], lr=options["lr"], lr_head=options["lr_head"],
        lr_backbone=options["lr_backbone"], unfreeze=_split_names(options["unfreeze"]) or (),
        frozen_bn=options["frozen_bn"], extract_batch_size=options["extract_batch_size"], device=options["device"],
        num_workers=options["num_workers"], seeds=options["seeds"], overwrite=options["overwrite"],
        echo=click.echo, log=epoch_printer(options), progress=not options["quiet"])
    comparison = result["comparison"]
    click.echo(api.markdown_table(comparison["rows"], api.SUMMARY_COLUMNS if not options["seeds"] else
                                  api.SUMMARY_COLUMNS[:3] + api.UNCERTAINTY_COLUMNS))
    for row in comparison["comparisons"]:
        click.echo(f"{row['a']} - {row['b']}: {row['verdict']}")
    plots = " and ".join(str(path) for path in (comparison["png"], comparison["confusion_png"]) if path)
    click.echo(f"experiment finished in {result['seconds']:.1f} s; plots {plots}, tables {comparison['markdown']} "
               f"and {comparison['csv']}")


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
    command = "featcache " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("featcache") else "featcache bench"
    result = api.bench(data_spec(options), options["out"], weights=options["weights"],
                       image_size=options["image_size"], views=options["views"], epochs=options["epochs"],
                       batch_size=options["batch_size"], extract_batch_size=options["extract_batch_size"],
                       device=options["device"], num_workers=options["num_workers"], seed=options["seed"],
                       end_to_end=not options["no_end_to_end"], command=command, log=click.echo)
    click.echo(result["markdown"])
    click.echo(f"wrote {result['json']} and {result['md']}")


if __name__ == "__main__":
    sys.exit(main())

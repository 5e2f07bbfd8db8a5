"""The `featcache` command: each command parses its options (featcache.cli_options builds them from the
configs' fields), calls one function of featcache.api and prints what it returns. The API names its
arguments in errors (`per_class`); FriendlyGroup prints the command's option (--per-class) there instead."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import api
from .api import __version__
from .cli_options import (SEED_HELP, BackboneEntry, FriendlyGroup, cache_options, cache_spec, data_options, data_spec,
                          end_to_end_options, epoch_printer, finetune_options, option, out_options, run_dir, run_options,
                          seeds_option, settings_of, stacked, weights_options)
from .settings import field_names


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featcache")
def main():
    """Transfer learning on small image datasets, fast: cache a frozen backbone's features once (ResNet-18 by default),
    then train heads on them in seconds, and compare with fine-tuning and training from scratch."""


@main.command()
@data_options
@weights_options
@run_options(api.ExtractConfig.batch_size, "Images per backbone forward.", SEED_HELP)
@cache_options
@option(api.CacheSpec, "backbone")
@option(api.ExtractConfig, "shard_size")
@option(api.ExtractConfig, "force")
@option(api.ExtractConfig, "rehash")
def extract(**options):
    """Run the frozen backbone once over every view and cache its D features in HDF5 (512 for ResNet-18).

    Each training image gets its clean view (view 0) and --views augmented views; each test image its
    clean view. The file name carries a key over everything that determines the features, so the
    same inputs reuse the file and any change writes a new one. Work is committed in checksummed
    shards: a killed run resumes from its finished shards. On several processes:
    `torchrun --nproc-per-node N -m featcache extract ...` (see docs/processes.md).
    """
    result = api.extract(cache_spec(options), progress=api.is_main_process(),
                         echo=click.echo if api.is_main_process() else None, **settings_of(api.ExtractConfig, options))
    if not api.is_main_process():
        return
    waited = f"waited {result.waited_seconds:.0f} s for another featcache process extracting it"
    tables = ([f"images per class: {result.class_table}"] if result.class_table else []) + (
        [f"the split made: {result.split_file}"] if result.split_file else [])
    if result.reused:
        click.echo(f"reused complete cache {result.path} (found in {result.seconds:.2f} s"
                   + (f"; {waited}; 0 views computed by this process" if result.waited_seconds else "")
                   + "".join(f"; {table}" for table in tables) + ")")
        return
    notes = [f"{result.world_size} processes"] if result.world_size > 1 else []
    if result.waited_seconds:
        notes.append(waited)
    if result.shards_resumed:
        notes.append(f"resumed: {result.shards_resumed} of {result.shards_total} shards were already done")
    if result.shards_removed:
        notes.append(f"recomputed {len(result.shards_removed)} damaged shards ({'; '.join(result.shards_removed)})")
    click.echo(f"wrote {result.path}: {result.images} views in {result.seconds:.1f} s "
               f"({result.images_per_second:.1f} images/s" + "".join(f"; {note}" for note in notes + tables) + ")")


@main.command()
@click.argument("cache", type=click.Path(path_type=Path))
def verify(cache):
    """Recompute the sha256 of every shard's rows in CACHE and compare with the checksums recorded at
    extraction. Exit status 1, naming the split and rows, if any differ."""
    ranges, seconds = api.verify(cache)
    click.echo(f"{cache}: all {ranges} checksummed row ranges match ({seconds:.2f} s)")


@main.command("train-head")
@click.argument("cache", required=False, type=click.Path(path_type=Path))
@data_options
@weights_options
@option(api.CacheSpec, "views", help="Augmented views of the cache to find (without CACHE).")
@option(api.CacheSpec, "cache_dir", help="Folder of cache files (without CACHE).")
@option(api.CacheSpec, "precision")
@option(api.CacheSpec, "backbone", help="The backbone of the cache to find (without CACHE).")
@option(api.HeadConfig, "seed", help="Seeds head init, shuffling and the validation split (and picks the cache "
                                     "without CACHE).")
@option(api.HeadConfig, "epochs")
@option(api.HeadConfig, "batch_size")
@option(api.HeadConfig, "lr")
@option(api.HeadConfig, "weight_decay")
@option(api.HeadConfig, "head")
@option(api.HeadConfig, "knn_temperature")
@option(api.HeadConfig, "sweep")
@option(api.HeadConfig, "sweep_lrs")
@option(api.HeadConfig, "sweep_wds")
@option(api.HeadConfig, "logreg_views")
@option(api.HeadConfig, "val_fraction")
@option(api.HeadConfig, "max_memory")
@seeds_option("the head's init, the shuffle and the validation split (heads train in lockstep)")
@out_options
def train_head(cache, **options):
    """Train a feature-extraction head on cached features, in seconds.

    CACHE is a file written by `featcache extract`; without it, the dataset and weights options find
    the matching cache. Epoch e trains on augmented view 1 + e % V of every image. Writes history.json
    (per-epoch train_loss, train_acc, test_acc, config, cache key, wall time, device) and weights.pt.
    """
    if cache is not None and options["exclude"] is not None:
        raise click.UsageError("--exclude picks the images of the cache to find; CACHE was made with its own "
                               "(they are in its key): give CACHE or --exclude, not both")
    settings = settings_of(api.HeadConfig, options)
    common = {"out": run_dir(options, "feature-extraction"), "overwrite": options["overwrite"],
              "progress": not options["quiet"]}
    if options["seeds"]:
        settings.pop("seed")
        group = api.train_head_seeds(cache or cache_spec(options), options["seeds"], **common, **settings)
        click.echo(api.seeds_line(group))
        return
    run = api.train_head(cache or cache_spec(options), log=epoch_printer(options), echo=click.echo, **common,
                         **settings)
    click.echo(api.summary_line(run))


def train_end_to_end(options: dict, config_class, approach: str, single, seeds, *positional) -> None:
    """A finetune or scratch command: one run, or one per seed; rank 0 prints the summary."""
    settings = settings_of(config_class, options)
    settings.pop("weights", None)  # given positionally, with the images
    common = {"out": run_dir(options, approach), "overwrite": options["overwrite"], "log": epoch_printer(options),
              "progress": not options["quiet"], "echo": None if options["quiet"] else click.echo,
              "resume": options["resume"]}
    if options["seeds"]:
        group = seeds(data_spec(options), *positional, options["seeds"], **common, **settings)
        if api.is_main_process():
            click.echo(api.seeds_line(group))
        return
    run = single(data_spec(options), *positional, **common, **settings)
    if api.is_main_process():
        click.echo(api.summary_line(run))


@main.command("finetune")
@data_options
@weights_options
@run_options(api.FinetuneConfig.batch_size, "Training batch size.", SEED_HELP)
@option(api.FinetuneConfig, "epochs")
@option(api.FinetuneConfig, "backbone")
@finetune_options(api.FinetuneConfig)
@option(api.FinetuneConfig, "init_head", type=click.Path(path_type=Path),
        help="Start the head from a train-head run directory instead of a random init.")
@end_to_end_options
@seeds_option("the head's init and the shuffle (one run after another)")
@out_options
def finetune_command(**options):
    """Fine-tune a pretrained backbone (ResNet-18 by default) end to end: new head plus the --unfreeze modules, two
    learning rates, the reference augmentation drawn fresh each epoch, test accuracy every epoch."""
    train_end_to_end(options, api.FinetuneConfig, "fine-tuning", api.finetune, api.finetune_seeds,
                     options["weights"])


@main.command("scratch")
@data_options
@option(api.CacheSpec, "image_size", help="Crop size S; images are first resized to S*256/224.")
@run_options(api.ScratchConfig.batch_size, "Training batch size.", SEED_HELP)
@option(api.ScratchConfig, "epochs")
@option(api.ScratchConfig, "lr")
@option(api.ScratchConfig, "backbone")
@end_to_end_options
@seeds_option("the model's init and the shuffle (one run after another)")
@out_options
def scratch_command(**options):
    """Train the backbone's network (ResNet-18 by default) from a seeded random init: every parameter, Adam, the
    reference augmentation."""
    train_end_to_end(options, api.ScratchConfig, "scratch", api.scratch, api.scratch_seeds)


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
    echo_comparison(result)
    if result["confusion_png"]:
        click.echo(f"wrote {result['png']}, {result['confusion_png']}, {result['markdown']} (with per-class "
                   f"accuracy and confusion matrices) and {result['csv']}")
    else:
        click.echo(f"wrote {result['png']}, {result['markdown']} and {result['csv']} (no run stored predictions: "
                   "no per-class results)")


def echo_comparison(result: dict, several: bool | None = None) -> None:
    """The summary table (with intervals when a row has several seeds, or `several`) and the paired verdicts."""
    several = any(row["seeds"] > 1 for row in result["rows"]) if several is None else several
    click.echo(api.markdown_table(result["rows"], api.SUMMARY_COLUMNS[:4] + api.UNCERTAINTY_COLUMNS if several
                                  else api.SUMMARY_COLUMNS))
    for row in result["comparisons"]:
        click.echo(f"{row['a']} - {row['b']}: {row['verdict']}")


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="File to write (by convention .pt2); replaced if it exists.")
@option(api.ExportConfig, "weights")
def export_command(run_dir, out, **options):
    """Export RUN_DIR (any approach) as one file that PyTorch alone loads with torch.export.load: uint8 RGB
    images [N, 3, H, W] of any size in, class probabilities out, the clean-view resize, crop and
    normalisation inside; class names and provenance in its extra file featcache.json. Runs trained by
    featcache 0.1 (PIL-resized images) are refused: train them again."""
    metadata = api.export(run_dir, out, **settings_of(api.ExportConfig, options))
    click.echo(f"exported {metadata['approach']} run {run_dir} ({len(metadata['classes'])} classes: "
               f"{', '.join(metadata['classes'])}; {metadata['image_size']} px) to {out}")
    if metadata.get("cache_precision") == "bf16":
        click.echo("note: the head was trained on bf16-autocast features; the exported backbone runs in fp32, "
                   "so a few predictions can differ from the run's own")


@main.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="CSV (or JSON) file to write.")
@stacked(*(option(api.PredictConfig, name) for name in field_names(api.PredictConfig)))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict_command(model, inputs, out, quiet, **options):
    """Classify INPUTS (image files and folders, searched recursively) with MODEL, a file from featcache
    export or a run directory, and write each image's top-k classes to --out in input order. When every
    image sits in a folder named after a class (test/<class>/*), also print the accuracy against them."""
    result = api.predict(model, inputs, out, progress=not quiet, echo=lambda line: click.echo(line, err=True),
                         **settings_of(api.PredictConfig, options))
    skipped = f", {result['unreadable']} unreadable (listed with their error)" if result["unreadable"] else ""
    click.echo(f"classified {result['images']} images{skipped} at {result['images_per_second']:.0f} images/s; "
               f"wrote {result['path']}")
    if result["folder_accuracy"] is not None:
        click.echo(f"accuracy against the folder names (each image's folder is a class): {result['folder_accuracy']:.4f}")


@main.command("fewshot")
@click.argument("cache", type=click.Path(path_type=Path))
@stacked(*(option(api.FewshotConfig, name) for name in field_names(api.FewshotConfig)))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "fewshot", show_default=True,
              help="Folder for fewshot.md, fewshot.csv, fewshot.json and fewshot.png.")
def fewshot_command(cache, out, **options):
    """Few-shot curves from CACHE alone (no image is decoded): for each k, --trials subsets of k training
    images per class, each probe trained on them and tested on the whole test split; mean test accuracy
    and 95% t-interval over trials per probe, as a table and a PNG of accuracy versus k."""
    result = api.fewshot(cache, out, log=click.echo, **settings_of(api.FewshotConfig, options))
    click.echo(result["markdown"])
    click.echo(f"{result['seconds']:.1f} s of compute; wrote {result['png']}, {result['md']}, {result['csv']} "
               f"and {result['json']}")


@main.command("inspect")
@data_options
@stacked(*(option(api.InspectConfig, name) for name in field_names(api.InspectConfig) if name != "backbone"))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "inspect.png", show_default=True,
              help="PNG file of the image grid.")
@option(api.InspectConfig, "backbone")
def inspect_command(out, **options):
    """Show the backbone's parameters per module (ResNet-18's by default), the share each approach
    trains, and a grid of training images as augmented, with their class names."""
    rows = api.inspect(data_spec(options), out, **settings_of(api.InspectConfig, options))
    click.echo(api.markdown_table(rows, ["module", "parameters", "feature_extraction", "fine_tuning"]))
    click.echo(f"wrote {out}")


@main.command("audit")
@click.argument("cache", type=click.Path(path_type=Path))
@stacked(*(option(api.AuditConfig, name) for name in field_names(api.AuditConfig)))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "audit", show_default=True,
              help="Folder for audit.html, label_issues.csv, duplicates.csv, outliers.csv and audit.json.")
@click.option("--run", "runs", type=click.Path(path_type=Path), multiple=True,
              help="A run directory (train-head, finetune, scratch), folder of seeds or experiment folder whose "
                   "mistakes to show: its --top highest-loss test images and most-confused class pairs, also in "
                   "top_losses.csv and most_confused.csv. Repeat for several.")
def audit_command(cache, out, runs, **options):
    """What a cache tells you about your data, from its clean views (no backbone runs): label-issue
    candidates (out-of-fold probe probabilities ranked by cleanlab: pip install 'featcache[audit]'), exact
    and near duplicates within training, within test and across the two (leakage), and outliers, as one
    self-contained HTML page with thumbnails and as CSV and JSON (docs/audit.md); with --run, a trained
    run's mistakes beside them."""
    api.audit(cache, out, runs=runs, echo=click.echo, **settings_of(api.AuditConfig, options))


@main.command("experiment")
@data_options
@weights_options
@run_options(api.ExperimentConfig.batch_size, "Training batch size (all three approaches).", SEED_HELP)
@option(api.ExperimentConfig, "epochs")
@option(api.ExperimentConfig, "lr")
@option(api.CacheSpec, "backbone", help="The network of all three approaches: a torchvision classification model "
        "by its registered name or timm:NAME.")
@finetune_options(api.ExperimentConfig)
@option(api.CacheSpec, "views", default=None, type=click.IntRange(min=1),
        help="Augmented views to cache. Default: --epochs, so every epoch sees a fresh augmentation as in the "
             "end-to-end runs.")
@option(api.ExperimentConfig, "extract_batch_size")
@option(api.CacheSpec, "cache_dir")
@option(api.CacheSpec, "precision")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the three run directories and the comparison. Default: runs/experiment-<time>.")
@click.option("--overwrite", is_flag=True, help="Replace runs already in --out.")
@click.option("--quiet", is_flag=True, help="No per-epoch lines or progress bars.")
@option(api.ExperimentConfig, "seeds")
def experiment(**options):
    """The whole reference experiment: scratch, extract + train-head, finetune, then compare, into one
    folder. Reference settings by default; scale down on a CPU with --image-size, --epochs, --per-class."""
    result = api.experiment(cache_spec(options, views=options["views"] or options["epochs"]), options["out"],
                            overwrite=options["overwrite"], echo=click.echo, log=epoch_printer(options),
                            progress=not options["quiet"], **settings_of(api.ExperimentConfig, options))
    comparison = result["comparison"]
    echo_comparison(comparison, several=bool(options["seeds"]))
    plots = " and ".join(str(path) for path in (comparison["png"], comparison["confusion_png"]) if path)
    click.echo(f"experiment finished in {result['seconds']:.1f} s; plots {plots}, tables {comparison['markdown']} "
               f"and {comparison['csv']}")


@main.command("backbones")
@data_options
@click.option("--backbone", "entries", type=BackboneEntry(), multiple=True, required=True,
              help="A backbone to compare, repeated for each: NAME (as extract's --backbone) with optional "
                   "',weights=PATH|imagenet|random', ',image-size=S' and ',label=TEXT', e.g. "
                   "'resnet18,weights=near.pth,image-size=64,label=near'. Unset parts take --weights and "
                   "--image-size.")
@option(api.CacheSpec, "weights", help="Weights of a backbone whose --backbone names none.")
@option(api.CacheSpec, "image_size", help="Crop size of a backbone whose --backbone names none.")
@option(api.CacheSpec, "seed", help="Seeds the augmented views and random weights (every backbone sees the same).")
@cache_options
@stacked(*(option(api.BackbonesConfig, name) for name in field_names(api.BackbonesConfig)))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for backbones.md/.csv/.json/.png and the runs (<label>/<head>/seed-<k>/). Default: "
                   "runs/backbones-<time>.")
@click.option("--overwrite", is_flag=True, help="Replace runs already in --out.")
@click.option("--quiet", is_flag=True, help="No progress lines or bars.")
def backbones_command(entries, **options):
    """Compare backbones on one dataset: a cache per backbone (found or extracted), the cached heads
    (linear, logreg, kNN) over seeds on each, and a table and plot of accuracy with its intervals
    against forward images/s and feature size, with a paired verdict for every pair of backbones."""
    specs = [api.CacheSpec(data_spec(options), entry.get("weights", options["weights"]),
                           entry.get("image_size", options["image_size"]), options["views"], options["seed"],
                           options["precision"], options["cache_dir"], entry["backbone"]) for entry in entries]
    result = api.backbones(specs, labels=[entry.get("label") for entry in entries],
                           out=options["out"] or api.default_run_dir("backbones"), overwrite=options["overwrite"],
                           echo=None if options["quiet"] else click.echo, progress=not options["quiet"],
                           **settings_of(api.BackbonesConfig, options))
    click.echo(result["table"])
    for comparison in result["comparisons"]:
        click.echo(f"{comparison['head']}: {comparison['a']} - {comparison['b']}: {comparison['verdict']}")
    click.echo(f"compared {len(specs)} backbones in {result['seconds']:.1f} s; wrote {result['markdown']}, "
               f"{result['csv']}, {result['json']} and {result['png']}")


@main.command("bench")
@data_options(per_class=100, test_per_class=200)
@stacked(*(option(api.BenchConfig, name) for name in field_names(api.BenchConfig)
           if api.BenchConfig.__dataclass_fields__[name].metadata["cli"]))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs") / "bench", show_default=True,
              help="Folder for bench.json and bench.md.")
def bench_command(out, **options):
    """Measure the accelerator: end-to-end feature extraction versus extract + train-head versus
    train-head alone, extraction versus the bare backbone forward, and featcache's input pipeline
    versus the notebook's, all in one process on one config. Defaults finish in a few minutes on a
    2-core CPU; --per-class 500 --test-per-class 1000 is the reference task's size."""
    command = "featcache " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("featcache") else "featcache bench"
    result = api.bench(data_spec(options), out, command=command, log=click.echo,
                       **settings_of(api.BenchConfig, options))
    click.echo(result["markdown"])
    click.echo(f"wrote {result['json']} and {result['md']}")


if __name__ == "__main__":
    sys.exit(main())

"""Comparison of runs (three-panel plot, summary table, per-class accuracy and confusion matrices from
their stored predictions) and the notebook's inspection views."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: files only, and a notebook's backend stays as it is
from torch import nn

from ..errors import FeatcacheError
from ..files import write_file
from .comparison import comparisons_markdown, group_row, load_group, paired_comparisons, per_class_results
from ..csvfiles import csv_text
from .tables import SUMMARY_COLUMNS, UNCERTAINTY_COLUMNS, markdown_table

COLOURS = {"scratch": "red", "feature-extraction": "blue", "fine-tuning": "green"}


def write_comparison(run_dirs: list[Path], out: Path) -> dict:
    """Plot and tabulate runs (run directories, or folders of seeds shown as their mean with a 95%
    band); returns the paths written (confusion_png None when no run stored predictions), the summary
    rows, the paired comparisons and the per-class results."""
    groups = [load_group(Path(folder)) for folder in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(16, 4.5))
    axes = figure.subplots(1, 3)
    for group in groups:
        colour = COLOURS.get(group["approach"])
        for axis, key in zip(axes, ("train_loss", "train_acc", "test_acc")):
            plot_group(axis, group, key, colour)
    for axis, title in zip(axes, ("Training loss", "Training accuracy", "Test accuracy")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    png = out / "comparison.png"
    write_file(png, lambda handle: figure.savefig(handle, format="png", dpi=110))
    rows = [group_row(group) for group in groups]
    comparisons = paired_comparisons(groups)
    per_class = per_class_results(groups)
    columns = SUMMARY_COLUMNS + [column for column in UNCERTAINTY_COLUMNS if any(row.get(column) for row in rows)]
    markdown = out / "summary.md"
    write_file(markdown, (markdown_table(rows, columns) + "\n\n"
                        "best_test_acc_on_test_set is the best epoch picked on the test set itself: an "
                        "optimistic number, not a fair estimate. With several seeds a row holds means over seeds, "
                        "test_acc_ci95_seeds the t-interval over seeds and test_acc_ci95_test_images a bootstrap "
                        "over test images. final_test_balanced_acc is the mean over classes of each class's test accuracy "
                        "(blank for runs without stored predictions)." + SEED_WARNING * any(row["seeds"] > 1 for row in rows) + "\n"
                        + comparisons_markdown(comparisons) + per_class_markdown(per_class)).encode())
    csv_path = out / "summary.csv"
    write_file(csv_path, csv_text(SUMMARY_COLUMNS + UNCERTAINTY_COLUMNS, rows).encode())
    confusion_png = plot_confusion(per_class, out / "confusion.png") if per_class["runs"] else None
    return {"png": png, "markdown": markdown, "csv": csv_path, "rows": rows, "comparisons": comparisons,
            "confusion_png": confusion_png, "per_class": per_class}


SEED_WARNING = (" Few seeds give wide seed intervals: with 3 the 95% t-interval is the mean ± 4.30 standard "
                "errors; where it would reach past 0 or 1 it is clipped to them and marked so, and with 2 seeds it "
                "is marked as telling little.")


def plot_group(axis, group: dict, key: str, colour) -> None:
    """One run as a line; several seeds as their mean with a shaded 95% t-interval band per epoch."""
    from .stats import ACCURACY, t_interval

    values = np.array([run[key] for run in group["runs"]])
    epochs = range(1, values.shape[1] + 1)
    if len(values) == 1:
        axis.plot(epochs, values[0], marker="o", markersize=3, color=colour, label=group["label"])
        return
    intervals = [t_interval(column, bounds=ACCURACY) for column in values.T]
    axis.plot(epochs, values.mean(0), marker="o", markersize=3, color=colour,
              label=f"{group['label']}: mean of {len(values)} seeds, 95% band")
    axis.fill_between(epochs, [i["low"] for i in intervals], [i["high"] for i in intervals], color=colour, alpha=0.2)


def per_class_markdown(per_class: dict) -> str:
    """summary.md's per-class section: accuracy per class and run, then each run's confusion matrix."""
    if not per_class["runs"]:
        return ""
    classes = list(dict.fromkeys(name for result in per_class["runs"] for name in result["classes"]))
    labels = [result["label"] for result in per_class["runs"]]
    counts = {name: int(count) for result in per_class["runs"] for name, count in zip(result["classes"],
                                                                                       result["test_images"])}
    rows = [{"class": name, "test images": counts.get(name, ""),
             **{result["label"]: result["accuracy"].get(name, "") for result in per_class["runs"]}} for name in classes]
    text = ("\n## Per-class test accuracy (last epoch)\n\n" + markdown_table(rows, ["class", "test images", *labels])
            + "\n\nfinal_test_balanced_acc above is the mean of these per-class accuracies (each run's, then over "
            "seeds): beside final_test_acc it shows what an imbalanced test set hides.\n")
    for result in per_class["runs"]:
        matrix_rows = [{"true \\ predicted": name, **dict(zip(result["classes"], map(int, result["confusion"][k])))}
                       for k, name in enumerate(result["classes"])]
        text += (f"\n### Confusion matrix: {result['label']}\n\n"
                 + markdown_table(matrix_rows, ["true \\ predicted", *result["classes"]]) + "\n")
    if per_class["without_predictions"]:
        text += f"\nNo stored predictions (runs written before featcache 0.2): {', '.join(per_class['without_predictions'])}\n"
    return text


def plot_confusion(per_class: dict, path: Path) -> Path:
    """One confusion matrix per run, side by side, each cell's count written in it."""
    results = per_class["runs"]
    figure = Figure(figsize=(4.2 * len(results), 4.4))
    axes = figure.subplots(1, len(results), squeeze=False)[0]
    for axis, result in zip(axes, results):
        matrix, classes = result["confusion"], result["classes"]
        axis.imshow(matrix, cmap="Blues", vmin=0)
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black")
        axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        accuracy = np.trace(matrix) / matrix.sum()
        axis.set_title(f"{result['label']}\ntest accuracy {accuracy:.4f}", color=COLOURS.get(result["approach"]))
    figure.tight_layout()
    write_file(path, lambda handle: figure.savefig(handle, format="png", dpi=110, bbox_inches="tight"))  # the two-line titles stay inside the image
    return Path(path)


def parameter_table(model: nn.Module, fine_tuned: tuple[str, ...] | None) -> list[dict]:
    """Parameters per top-level module of a network with a new head (featcache.backbone.with_new_head),
    and which approach trains them (notebook section 7): feature extraction the head, fine-tuning the
    head and the `fine_tuned` modules; a module whose parameters an approach trains only in part is
    'partly' (None: fine-tuning trains what --unfreeze names, the family having no default)."""
    from ..backbone import network_of, own_head_name

    network, head = network_of(model), own_head_name(model)
    trains = {"feature_extraction": {f"{head}.{key}" for key, _ in network.get_submodule(head).named_parameters()}}
    trains["fine_tuning"] = trains["feature_extraction"] | {
        f"{module}.{key}" for module in fine_tuned or () for key, _ in network.get_submodule(module).named_parameters()}

    def status(module: str, approach: str) -> str:
        mine = [f"{module}.{key}" for key, _ in network.get_submodule(module).named_parameters()]
        trained = sum(key in trains[approach] for key in mine)
        if approach == "fine_tuning" and fine_tuned is None and trained < len(mine):
            return "as --unfreeze names"
        return "trained" if trained == len(mine) else "partly" if trained else "frozen"

    sizes = dict(network.named_parameters())
    rows = [{"module": name, "parameters": sum(p.numel() for p in module.parameters()),
             **{approach: status(name, approach) for approach in trains}}
            for name, module in network.named_children() if any(True for _ in module.parameters())]
    total = sum(row["parameters"] for row in rows)
    shares = []
    for approach in ("feature_extraction", "fine_tuning") if fine_tuned is not None else ("feature_extraction",):
        trained = sum(sizes[key].numel() for key in trains[approach])
        shares.append({"module": f"trainable, {approach.replace('_', ' ')}", "parameters": trained,
                       approach: f"{100 * trained / total:.2f}%"})
    return rows + shares + [{"module": "total", "parameters": total}]


def image_grid(views: torch.Tensor, labels: list[str], path: Path, columns: int = 8) -> Path:
    """Save normalised views as a labelled PNG grid (the notebook's show_images)."""
    from ..data.transform import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (views.cpu().float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    rows = (len(pixels) + columns - 1) // columns
    figure = Figure(figsize=(1.8 * columns, 2.0 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, label in zip(axes.flat, pixels, labels):
        axis.imshow(image)
        axis.set_title(label, fontsize=9)
    figure.tight_layout()
    write_file(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    return Path(path)


def write_inspection(data, out: Path, image_size: int, seed: int, count: int, view: int, backbone: str) -> list[dict]:
    """The backbone's parameter table (fine-tuning's default last stage: a family without one shows only
    the head), and a grid of `count` training images (spread over the classes) as view `view` makes them,
    written to `out`."""
    from ..backbone import default_unfreeze, scratch_network
    from ..data.images import DecodedSplit
    from ..data.views import make_views

    dataset = data.load()
    model = scratch_network(backbone, len(dataset.classes), seed)
    try:
        fine_tuned = default_unfreeze(backbone)
    except FeatcacheError:  # a family with no default: fine-tuning trains what --unfreeze names
        fine_tuned = None
    rows = parameter_table(model, fine_tuned)
    picks = np.linspace(0, len(dataset.train) - 1, min(count, len(dataset.train))).round().astype(int).tolist()
    decoded = DecodedSplit(dataset.train, image_size)
    views = make_views([decoded[i] for i in picks], picks, view, "train", seed, image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(views, [dataset.classes[dataset.train.labels[i]] for i in picks], out)
    return rows

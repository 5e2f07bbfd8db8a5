"""What `featcache backbones` writes: per backbone and head, the accuracy over seeds with both
intervals against the backbone's cost (forward images/s, feature size), a plot of the same, and the
paired comparisons between backbones (compare's statistics: same test images, same seeds)."""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from .comparison import balanced_mean, comparisons_markdown, correctness, load_group, paired_comparisons
from .stats import ACCURACY, bootstrap_interval, interval_text, t_interval
from ..csvfiles import csv_text
from .tables import markdown_table
from ..files import write_file

COLUMNS = ["backbone", "head", "image_size", "feature_dim", "forward_images_per_s", "extract_s", "seeds",
           "test_acc", "test_balanced_acc", "test_acc_std", "test_acc_ci95_seeds", "test_acc_ci95_test_images"]
HEAD_COLOURS = {"linear": "tab:blue", "logreg": "tab:orange", "knn": "tab:green"}


def write_report(entries: list[dict], heads: tuple[str, ...], out: Path) -> dict:
    """backbones.md, .csv, .json and .png in `out` from each entry (a backbone: label, image size,
    feature size, forward images/s, extraction seconds, and its heads' folders of seeds)."""
    rows, comparisons = [], []
    for head in heads:
        groups = []
        for entry in entries:
            group = load_group(Path(entry["folders"][head]))
            group["label"] = entry["label"]
            groups.append(group)
            rows.append(_row(entry, head, group))
        comparisons += [{**comparison, "head": head} for comparison in paired_comparisons(groups)]
    out = Path(out)
    png = _plot(rows, heads, out / "backbones.png")
    markdown = out / "backbones.md"
    write_file(markdown, (
        "# Backbones compared\n\n" + markdown_table(rows, COLUMNS) + "\n\n"
        "test_acc is the mean final test accuracy over the seeds, test_balanced_acc the mean over seeds of the mean "
        "per-class test accuracy; test_acc_ci95_seeds its t-interval over seeds, "
        "test_acc_ci95_test_images a bootstrap over test images. forward_images_per_s is the bare frozen backbone "
        "at its image size, timed in this run; extract_s the extraction's wall time when this run extracted the "
        "cache (blank: found).\n"
        + "".join(comparisons_markdown([c for c in comparisons if c["head"] == head]).replace(
            "## Paired comparisons", f"## Paired comparisons, {head} head") for head in heads)).encode())
    csv_path = out / "backbones.csv"
    write_file(csv_path, csv_text(COLUMNS, rows).encode())
    json_path = out / "backbones.json"  # written last: featcache.api.comparisons.REPORT
    write_file(json_path, (json.dumps({"backbones": entries, "rows": rows, "comparisons": comparisons}, indent=2,
                                      default=str) + "\n").encode())
    return {"rows": rows, "comparisons": comparisons, "png": png, "markdown": markdown, "csv": csv_path,
            "json": json_path, "table": markdown_table(rows, COLUMNS)}


def _row(entry: dict, head: str, group: dict) -> dict:
    accuracies = [run["test_acc"][-1] for run in group["runs"]]
    seeds = t_interval(accuracies, bounds=ACCURACY)
    row = {"backbone": entry["label"], "head": head, "image_size": entry["image_size"],
           "feature_dim": entry["feature_dim"], "forward_images_per_s": entry["forward_images_per_s"],
           "extract_s": entry["extract_s"] if entry["extract_s"] is not None else "", "seeds": seeds["n"],
           "test_acc": seeds["mean"], "test_acc_std": seeds["std"] if seeds["std"] is not None else "",
           "low": seeds["low"], "high": seeds["high"],
           "test_acc_ci95_seeds": interval_text(seeds)}
    correct = correctness(group)
    if correct is not None:
        images = bootstrap_interval(correct[1])
        row["test_acc_ci95_test_images"] = f"[{images['low']:.4f}, {images['high']:.4f}]"
    row["test_balanced_acc"] = balanced_mean(group)
    return row


def plain_log_axis(axis, values: list[float]) -> None:
    """A log x axis labelled with plain numbers (40, 100, 400), not 4x10^1: at 1, 2 and 5 times the powers
    of ten the values span, or at the values themselves when fewer than two of those fall among them.
    Minor ticks unlabelled, so that no two labels run together."""
    import math

    from matplotlib import ticker

    axis.set_xscale("log")
    low, high = min(values), max(values)
    steps = [step * 10 ** power for power in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
             for step in (1, 2, 5)]
    ticks = [step for step in steps if low / 1.3 <= step <= high * 1.3]
    if len(ticks) < 2:
        ticks = sorted({float(f"{value:.2g}") for value in values})
    axis.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    if len(ticks) == 1:  # one value: room around it on the log scale
        axis.set_xlim(ticks[0] / 2, ticks[0] * 2)


def _plot(rows: list[dict], heads: tuple[str, ...], path: Path) -> Path:
    """Accuracy (mean, seed interval as error bar) against forward images/s and against feature size."""
    figure = Figure(figsize=(13, 4.8))
    axes = figure.subplots(1, 2, sharey=True)
    for axis, key, title in ((axes[0], "forward_images_per_s", "bare forward images/s (log)"),
                             (axes[1], "feature_dim", "feature size (log)")):
        for head in heads:
            mine = [row for row in rows if row["head"] == head]
            means = [row["test_acc"] for row in mine]
            errors = [[row["test_acc"] - (row["low"] if row["low"] is not None else row["test_acc"]) for row in mine],
                      [(row["high"] if row["high"] is not None else row["test_acc"]) - row["test_acc"] for row in mine]]
            axis.errorbar([row[key] for row in mine], means, yerr=errors, fmt="o", capsize=3, label=head,
                          color=HEAD_COLOURS.get(head))
        for row in rows:
            if row["head"] == heads[0]:
                axis.annotate(row["backbone"], (row[key], row["test_acc"]), textcoords="offset points", xytext=(6, 6),
                              fontsize=8)
        plain_log_axis(axis, [row[key] for row in rows])
        axis.set_xlabel(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("final test accuracy (mean over seeds, 95% interval)")
    axes[0].legend(title="head", fontsize=8)
    figure.tight_layout()
    write_file(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    return path

"""Looking before and around the work: inspect (a backbone's parameters per module, and a grid of
training images as a view makes them), audit (what a cache tells you about the data: label issues,
duplicates and leakage, outliers) and bench (every speed figure side by side in one process)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..data.datasets import DataSpec
from ..cache.key import CacheSpec
from ..evaluate.config import AuditConfig, BenchConfig, InspectConfig
from ..settings import as_paths, built, require

Log = Callable[[str], None]


def inspect(data: DataSpec, out: str | Path, config: InspectConfig | None = None, **settings) -> list[dict]:
    """The backbone's parameters per top-level module and the share each approach trains (returned as
    table rows), and a PNG grid at `out` of `count` training images as view `view` makes them. `config`
    or InspectConfig's fields (image_size, seed, count, view, backbone)."""
    from ..evaluate.report import write_inspection

    config = built(InspectConfig, config, settings, "inspect")
    require("data", data, DataSpec, "a featcache.DataSpec")
    require("out", out, (str, Path), "a PNG file's path")
    return write_inspection(data, Path(out), config.image_size, config.seed, config.count, config.view,
                            config.backbone)


def bench(data: DataSpec, out: str | Path, config: BenchConfig | None = None, *, log: Log | None = None,
          **settings) -> dict:
    """featcache bench: every speed figure side by side in one process; writes bench.json and bench.md
    to `out` and returns the result with their paths and the Markdown. `config` or BenchConfig's fields
    (weights, image_size, views, epochs, batch_size, extract_batch_size, device, num_workers, seed,
    end_to_end, backbone, command)."""
    from ..evaluate.bench import bench_markdown, run_bench, write_bench
    from ..ranks import resolve_device

    config = built(BenchConfig, config, settings, "bench")
    require("data", data, DataSpec, "a featcache.DataSpec")
    require("out", out, (str, Path), "a folder's path")
    result = run_bench(data.load(), config.weights, config.image_size, config.views, config.epochs, config.batch_size,
                       config.extract_batch_size, resolve_device(config.device), config.num_workers, config.seed,
                       config.end_to_end, log=log or (lambda line: None), architecture=config.backbone)
    json_path, md_path = write_bench(result, Path(out), config.command)
    return {**result, "json": json_path, "md": md_path, "markdown": bench_markdown(result, config.command)}


AUDIT_FILES = ("label_issues.csv", "duplicates.csv", "outliers.csv", "audit.html", "audit.json")  # json last
RUN_FILES = ("top_losses.csv", "most_confused.csv")  # with `runs`


def audit(cache: CacheSpec | str | Path, out: str | Path, config: AuditConfig | None = None, *,
          runs=(), echo: Log | None = None, **settings) -> dict:
    """What the cache tells you about the data, from its clean views (no backbone runs;
    featcache.evaluate.audit): label-issue candidates (out-of-fold probe probabilities ranked by cleanlab,
    `pip install 'featcache[audit]'`), exact and near duplicates within and across the splits, outliers.
    Writes label_issues.csv, duplicates.csv, outliers.csv, audit.html (thumbnails embedded) and
    audit.json to `out`; returns the tables, the summary and the files. `cache` is a cache file or the
    CacheSpec it was extracted from; `config` or AuditConfig's fields (folds, seed, test_labels, top).
    `runs`: run directories, folders of seeds or experiment folders whose mistakes to show
    (featcache.evaluate.mistakes): their `top` highest-loss test images and most-confused class pairs,
    also in top_losses.csv and most_confused.csv."""
    import json
    import time

    import numpy as np

    from ..csvfiles import csv_text
    from ..errors import FeatcacheError
    from ..evaluate import audit as tables
    from ..evaluate.audit_page import audit_html
    from ..files import remove, write_file

    from ..evaluate.mistakes import read_mistakes, summarise

    config = built(AuditConfig, config, settings, "audit")
    require("cache", cache, (CacheSpec, str, Path), "a cache file's path or a featcache.CacheSpec")
    require("out", out, (str, Path), "a folder's path")
    started = time.perf_counter()
    tables.require_cleanlab()  # before minutes of work, not after
    mistakes = read_mistakes(as_paths("runs", runs), config.top)  # a bad run folder: before the work too
    losses = [row for mistake in mistakes for row in mistake["losses"]]
    confused = [row for mistake in mistakes for row in mistake["confused"]]
    path = cache.locate()[2] if isinstance(cache, CacheSpec) else Path(cache)
    views = tables.read_clean_views(path)
    echo = echo or (lambda line: None)
    classes = len(views.classes)
    C, grid = tables.choose_c(views.features["train"], views.labels["train"], config.seed)
    probabilities = tables.probe_probabilities(views.features["train"], views.labels["train"], classes, config.folds,
                                               config.seed, C)
    accuracy = float((probabilities.argmax(1) == views.labels["train"]).mean())
    echo(f"probe: out-of-fold accuracy {accuracy:.4f} over {len(views.labels['train'])} training images "
         f"({config.folds} folds, C = {C:g} chosen on a validation split)")
    label_issues = tables.label_issue_rows(views, "train", probabilities)
    if config.test_labels and len(views.labels["test"]):
        from ..train.logreg import probe_pipeline

        model = probe_pipeline(C).fit(views.features["train"], views.labels["train"])
        test = np.zeros((len(views.labels["test"]), classes))
        test[:, model.classes_] = model.predict_proba(views.features["test"])
        label_issues += tables.label_issue_rows(views, "test", test)
    duplicates = tables.duplicate_rows(views, config.top)
    outliers = tables.outlier_rows(views, config.top)
    kinds = [row["kind"] for row in duplicates]
    summary = {"cache": str(path), "key": views.key, "images": {split: len(ids) for split, ids in views.ids.items()},
               "probe": {"folds": config.folds, "seed": config.seed, "C": C, "C_grid": grid,
                         "out_of_fold_accuracy": accuracy},
               "label_issues": {"train": sum(row["split"] == "train" for row in label_issues),
                                "test": sum(row["split"] == "test" for row in label_issues) if config.test_labels
                                else None},
               "duplicates": {"exact": kinds.count("exact"), "near": kinds.count("near"),
                              "near_cosine": tables.NEAR_COSINE,
                              "leaked": sum(row["scope"] == "train-test" and row["kind"] != "similar"
                                            for row in duplicates),
                              "basis": "file digest" if views.files is not None else "clean-view features"},
               "image_files": views.files_source,
               "outliers": len(outliers),
               "runs": summarise(mistakes, {name: views.classes[label] for name, label in
                                            zip(views.ids["test"], views.labels["test"].tolist())}),
               "seconds": time.perf_counter() - started}
    index = {split: dict(zip(ids, files)) for split, ids, files in
             ((split, views.ids[split], views.files[split]) for split in views.ids)} if views.files else None
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FeatcacheError(f"cannot write the audit to {out}: {error.strerror}") from None
    contents = {
        "label_issues.csv": csv_text(["rank", "split", "path", "given", "suggested", "given_probability",
                                      "suggested_probability"], label_issues),
        "duplicates.csv": csv_text(["scope", "kind", "cosine", "a_split", "a", "a_label", "b_split", "b", "b_label",
                                    "basis", "path"], duplicates),
        "outliers.csv": csv_text(["rank", "split", "path", "label", "distance"], outliers),
        "audit.html": audit_html(summary, label_issues, duplicates, outliers,
                                 lambda split, name: index[split].get(name) if index else None, losses, confused),
        "audit.json": json.dumps({"summary": summary, "label_issues": label_issues, "duplicates": duplicates,
                                  "outliers": outliers, "top_losses": losses, "most_confused": confused},
                                 indent=2) + "\n",
    }
    if mistakes:
        contents["top_losses.csv"] = csv_text(["run", "rank", "split", "path", "given", "predicted", "loss",
                                               "given_probability", "predicted_probability", "correct", "in_cache"],
                                              losses)
        contents["most_confused.csv"] = csv_text(["run", "given", "predicted", "count", "share_of_given", "seeds"],
                                                 confused)
    names = [*(name for name in contents if name not in AUDIT_FILES), *AUDIT_FILES]  # audit.json last
    for name in RUN_FILES:
        remove(out / name)  # a previous audit's, with --run: never beside a summary without its runs
    for name in names:
        write_file(out / name, contents[name].encode())
    echo(f"label issues: {summary['label_issues']['train']} training"
         + (f", {summary['label_issues']['test']} test" if config.test_labels else "")
         + f"; duplicates: {summary['duplicates']['exact']} exact, {summary['duplicates']['near']} near, "
         f"{summary['duplicates']['leaked']} across training and test"
         + "".join(f"; {run['run']}: {run['wrong']} of {run['test_images'] * run['seeds']} test predictions wrong"
                   for run in summary["runs"]) + f"; written to {out}")
    return {"label_issues": label_issues, "duplicates": duplicates, "outliers": outliers, "top_losses": losses,
            "most_confused": confused, "summary": summary, "files": {name: out / name for name in names}}

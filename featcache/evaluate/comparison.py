"""What compare says about runs: groups of seeds, their summary rows with intervals, paired
comparisons with a verdict in words, and per-class results, all from run directories alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .runs import balanced_accuracy, is_seed_folder, read_predictions, read_run, read_seeds
from .tables import markdown_table


def summary_row(run: dict) -> dict:
    return {
        "approach": run["approach"],
        "final_train_acc": run["train_acc"][-1],
        "final_test_acc": run["test_acc"][-1],
        "best_test_acc_on_test_set": max(run["test_acc"]),  # picked on the test set: optimistic
        "train_test_gap": run["train_acc"][-1] - run["test_acc"][-1],
        "trainable_params": run.get("trainable_params", ""),
        "wall_time_s": float(run.get("wall_time_s", float("nan"))),
        "extract_time_s": run.get("extract_wall_time_s", ""),  # a cached head's one-off extraction cost
        "device": run.get("device", ""),
        "run_dir": run["run_dir"],
    }


def run_label(run: dict) -> str:
    name = Path(run["run_dir"]).name
    return run["approach"] if name == run["approach"] else f"{run['approach']} ({name})"


def load_group(folder: Path) -> dict:
    """A run directory as a group of one run, or a folder of seeds (seeds.json, seed-<k>/) as the group
    of its runs, in seed order, with each run's stored predictions (None where it stored none), read once."""
    folder = Path(folder)
    if is_seed_folder(folder):
        record = read_seeds(folder)
        runs = [read_run(folder / f"seed-{seed}") for seed in record["seeds"]]
        name, approach = folder.name, record["approach"]
        label = approach if name == approach else f"{approach} ({name})"
        return {"approach": approach, "label": label, "runs": runs, "seeds": record["seeds"], "folder": str(folder),
                "predictions": [read_predictions(Path(run["run_dir"])) for run in runs]}
    run = read_run(folder)
    return {"approach": run["approach"], "label": run_label(run), "runs": [run],
            "seeds": [run.get("config", {}).get("seed")], "folder": str(folder),
            "predictions": [read_predictions(folder)]}


def correctness(group: dict) -> tuple[list[str], np.ndarray] | None:
    """(test ids, per-image correctness [seeds, images]) from the runs' stored predictions, aligned by
    id; None when a run of the group stored none."""
    rows, ids = [], None
    for predictions in group["predictions"]:
        if predictions is None:
            return None
        order = np.argsort(predictions["ids"], kind="stable")
        if ids is None:
            ids = predictions["ids"][order]
        elif not np.array_equal(predictions["ids"][order], ids):  # seeds tested on other images: no pairing
            return None
        rows.append((predictions["predicted"] == predictions["labels"])[order])
    return list(ids), np.stack(rows)


def group_row(group: dict) -> dict:
    """A summary row: the run's own numbers, or the means over seeds, with both 95% intervals."""
    from .stats import ACCURACY, bootstrap_interval, interval_text, t_interval

    rows = [summary_row(run) for run in group["runs"]]
    if len(rows) == 1:
        row = dict(rows[0])
    else:
        row = {key: float(np.mean([r[key] for r in rows])) if isinstance(rows[0][key], (int, float))
               and not isinstance(rows[0][key], bool) and key != "trainable_params" else rows[0][key] for key in rows[0]}
        row["run_dir"] = group["folder"]
    seeds = t_interval([r["final_test_acc"] for r in rows], bounds=ACCURACY)
    row.update(seeds=len(rows), test_acc_std=seeds["std"] if seeds["std"] is not None else "",
               test_acc_ci95_seeds=interval_text(seeds),
               test_acc_ci95_test_images="")
    correct = correctness(group)
    if correct is not None:
        interval = bootstrap_interval(correct[1])
        row["test_acc_ci95_test_images"] = f"[{interval['low']:.4f}, {interval['high']:.4f}]"
    row["final_test_balanced_acc"] = balanced_mean(group)
    return row


def balanced_mean(group: dict) -> float | str:
    """The group's final balanced test accuracy (the mean over seeds), from the stored predictions ('' where
    a run stored none)."""
    stored = group["predictions"]
    if not stored or any(predictions is None for predictions in stored):
        return ""
    return float(np.mean([balanced_accuracy(p["labels"], p["predicted"], p["probabilities"].shape[1])
                          for p in stored]))


def paired_comparisons(groups: list[dict]) -> list[dict]:
    """Every pair of groups with stored predictions on the same test images: the difference in final
    test accuracy with a paired bootstrap over test images, a paired t-interval over seeds when both
    have the same several seeds, McNemar's test when both are single runs, and a verdict in words."""
    from .stats import mcnemar, paired_bootstrap, paired_seed_interval

    results = []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            first, second = groups[a], groups[b]
            correct_a, correct_b = correctness(first), correctness(second)
            if correct_a is None or correct_b is None or correct_a[0] != correct_b[0]:
                continue
            row = {"a": first["label"], "b": second["label"], "bootstrap": paired_bootstrap(correct_a[1], correct_b[1])}
            if len(first["runs"]) > 1 and first["seeds"] == second["seeds"]:
                row["seeds"] = paired_seed_interval([r["test_acc"][-1] for r in first["runs"]],
                                                    [r["test_acc"][-1] for r in second["runs"]])
            if len(first["runs"]) == len(second["runs"]) == 1:
                row["mcnemar"] = mcnemar(correct_a[1][0], correct_b[1][0])
            row["several_seeds"] = len(first["runs"]) > 1 or len(second["runs"]) > 1
            row["verdict"] = verdict(row)
            results.append(row)
    return results


def _excludes_zero(interval: dict) -> bool:
    return interval["low"] is not None and (interval["low"] > 0 or interval["high"] < 0)


def verdict(row: dict) -> str:
    """What the data support about a - b, in words: supported only when every interval excludes 0."""
    boot, seeds = row["bootstrap"], row.get("seeds")
    better, worse = (row["a"], row["b"]) if boot["difference"] > 0 else (row["b"], row["a"])
    size = f"{100 * abs(boot['difference']):.1f} points"
    if not _excludes_zero(boot):
        return f"no difference shown: the test-image interval [{boot['low']:+.4f}, {boot['high']:+.4f}] includes 0"
    several = row.get("several_seeds", False)
    if several and seeds is None:
        return (f"{better} ahead by {size} on these test images; seed spread not assessed (the two have different "
                f"seeds): not established")
    if seeds is not None and seeds["low"] is not None and not _excludes_zero(seeds):
        return (f"{better} ahead by {size} on these test images, but not consistently across the {seeds['n']} seeds "
                f"(seed interval [{seeds['low']:+.4f}, {seeds['high']:+.4f}] includes 0): not supported")
    if "mcnemar" in row and row["mcnemar"]["p_value"] >= 0.05:
        return f"{better} ahead by {size}, but McNemar's p = {row['mcnemar']['p_value']:.3f}: not supported"
    return f"{better} is better than {worse} by {size}: supported (every interval excludes 0)"


def comparisons_markdown(comparisons: list[dict]) -> str:
    if not comparisons:
        return ""
    rows = []
    for row in comparisons:
        boot, seeds = row["bootstrap"], row.get("seeds")
        rows.append({"a - b": f"{row['a']} - {row['b']}", "difference": f"{boot['difference']:+.4f}",
                     "95% interval, test images": f"[{boot['low']:+.4f}, {boot['high']:+.4f}]",
                     "95% interval, seeds": (f"[{seeds['low']:+.4f}, {seeds['high']:+.4f}] ({seeds['n']} seeds)"
                                             if seeds and seeds["low"] is not None else ""),
                     "McNemar p": f"{row['mcnemar']['p_value']:.3g}" if "mcnemar" in row else "",
                     "what the data support": row["verdict"]})
    methods = sorted({row["bootstrap"]["method"] for row in comparisons}
                     | {row["seeds"]["method"] for row in comparisons if row.get("seeds")})
    return ("\n## Paired comparisons (final test accuracy)\n\n" + markdown_table(rows, list(rows[0]))
            + "\n\nMethods: " + "; ".join(methods) + ". Intervals are 95%; a difference counts as supported only "
            "when every interval shown excludes 0. Few seeds give wide seed intervals (3 seeds: mean ± 4.30 "
            "standard errors).\n")


def per_class_results(groups: list[dict]) -> dict:
    """Each group's confusion matrix (rows: true class, columns: predicted; summed over its seeds) and
    per-class test accuracy, from the predictions its runs stored at their last epoch; groups without
    stored predictions are listed apart."""
    from sklearn.metrics import confusion_matrix

    results, missing = [], []
    for group in groups:
        classes = group["runs"][0].get("classes")
        stored = group["predictions"]
        if any(predictions is None for predictions in stored) or not classes:
            missing.append(group["label"])
            continue
        matrix = sum(confusion_matrix(p["labels"], p["predicted"], labels=range(len(classes))) for p in stored)
        seeds = f" ({len(stored)} seeds, summed)" if len(stored) > 1 else ""
        results.append({"label": group["label"] + seeds, "approach": group["approach"], "classes": list(classes),
                        "confusion": matrix, "test_images": np.bincount(stored[0]["labels"], minlength=len(classes)),
                        "accuracy": {name: (matrix[k, k] / matrix[k].sum() if matrix[k].sum() else float("nan"))
                                     for k, name in enumerate(classes)}})
    return {"runs": results, "without_predictions": missing}

"""A trained run's mistakes, from the test predictions it stored at its last epoch (predictions.npz), as
fastai's ClassificationInterpretation shows them: the top losses (`plot_top_losses`) and the
most-confused class pairs (`most_confused`). Any run directory will do (train-head, finetune, scratch),
a folder of seeds, or an experiment folder (its approaches). No torch here.

A group of seeds is read as one model: each test image's probabilities are the mean of its seeds'
(the seeds test the same images), its loss the cross-entropy of that mean, and its confusions are summed
over the seeds, as compare's confusion matrix.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError
from .comparison import load_group
from .runs import APPROACHES, HISTORY, is_seed_folder


def run_groups(folder: str | Path) -> list[dict]:
    """The groups (comparison.load_group) a folder holds: itself where it is a run or a folder of seeds,
    else each approach's folder of an experiment."""
    folder = Path(folder)
    if (folder / HISTORY).is_file() or is_seed_folder(folder):
        return [load_group(folder)]
    parts = [folder / name for name in APPROACHES if (folder / name / HISTORY).is_file() or is_seed_folder(folder / name)]
    if not parts:
        raise FeatcacheError(f"{folder} is not a featcache run directory, a folder of seeds or an experiment folder "
                             f"(no {HISTORY}, seeds.json or {', '.join(APPROACHES)} folders)")
    return [load_group(part) for part in parts]


def read_mistakes(folders: list, top: int) -> list[dict]:
    """Per run group of `folders` (each folder once): its top losses and most-confused pairs. Labels are
    told apart by folder where two share a name, and printable (a label comes from a stranger's file and
    is echoed to a terminal)."""
    groups, seen = [], set()
    for folder in folders:
        for group in run_groups(folder):
            if os.path.realpath(group["folder"]) not in seen:
                seen.add(os.path.realpath(group["folder"]))
                groups.append(group)
    labels = [group["label"] for group in groups]
    for group in groups:
        label = group["folder"] if labels.count(group["label"]) > 1 else group["label"]
        group["label"] = "".join(character if character.isprintable() else "?" for character in label)
    means = [mean_predictions(group) for group in groups]  # checks too: predictions stored, the same images
    return [{"group": group, "mean": mean, "losses": top_losses(group, mean, top), "confused": most_confused(group)}
            for group, mean in zip(groups, means)]


def summarise(mistakes: list[dict], test: dict[str, str]) -> list[dict]:
    """Each run's summary; marks each top loss `in_cache` where the cache's test split (`test`: id to class
    name) holds that path with that label, the only images the page shows for it."""
    rows = []
    for mistake in mistakes:
        group, predictions = mistake["group"], mistake["mean"]
        name = class_names(group, predictions["probabilities"].shape[1])
        for row in mistake["losses"]:
            row["in_cache"] = test.get(row["path"]) == row["given"]
        rows.append({"run": group["label"], "folder": group["folder"], "seeds": len(group["runs"]),
                     "test_images": len(predictions["ids"]),
                     "in_this_cache": sum(test.get(str(identity)) == name(label)
                                          for identity, label in zip(predictions["ids"], predictions["labels"])),
                     "wrong": sum(row["count"] for row in mistake["confused"])})
    return rows


def mean_predictions(group: dict) -> dict:
    """(ids, labels, probabilities) of a group: its seeds' probabilities averaged image by image."""
    stored = group["predictions"]
    if any(predictions is None for predictions in stored):
        raise FeatcacheError(f"{group['folder']} stored no test predictions (predictions.npz): it was trained by "
                             "a featcache that did not store them; train it again to see its mistakes")
    first = stored[0]
    order = np.argsort(first["ids"], kind="stable")
    probabilities = np.zeros(first["probabilities"].shape, dtype=np.float64)
    for predictions in stored:
        mine = np.argsort(predictions["ids"], kind="stable")
        if (predictions["probabilities"].shape != first["probabilities"].shape
                or not np.array_equal(predictions["ids"][mine], first["ids"][order])
                or not np.array_equal(predictions["labels"][mine], first["labels"][order])):
            raise FeatcacheError(f"the seeds of {group['folder']} were tested on different images")
        probabilities[order] += predictions["probabilities"][mine]
    return {"ids": first["ids"], "labels": first["labels"], "probabilities": probabilities / len(stored)}


def class_names(group: dict, count: int):
    """name(k): the run's class names (history.json's), or class <k> where it recorded none of that count
    (made on demand: a crafted file's class count allocates nothing)."""
    names = group["runs"][0].get("classes")
    if isinstance(names, list) and len(names) == count and all(isinstance(name, str) for name in names):
        return lambda k: names[k]
    return lambda k: f"class {k}"


def top_losses(group: dict, predictions: dict, top: int) -> list[dict]:
    """The `top` test images of highest loss (cross-entropy of the given label) by the group's mean
    predictions (mean_predictions), highest first."""
    labels, probabilities = predictions["labels"], predictions["probabilities"]
    name = class_names(group, probabilities.shape[1])
    given = probabilities[np.arange(len(labels)), labels]
    losses = -np.log(np.maximum(given, 1e-12))
    predicted = probabilities.argmax(1)
    rows = []
    for rank, index in enumerate(np.argsort(-losses, kind="stable")[:top].tolist(), start=1):
        rows.append({"run": group["label"], "rank": rank, "split": "test", "path": str(predictions["ids"][index]),
                     "given": name(labels[index]), "predicted": name(predicted[index]),
                     "loss": float(losses[index]), "given_probability": float(given[index]),
                     "predicted_probability": float(probabilities[index, predicted[index]]),
                     "correct": bool(predicted[index] == labels[index])})
    return rows


def most_confused(group: dict) -> list[dict]:
    """Every (given, predicted) pair of distinct classes the run confused, most often first: the count
    summed over its seeds and its share of the given class's test images (counted from the pairs that
    occur: no classes x classes matrix). For a group mean_predictions has checked."""
    stored = group["predictions"]
    name = class_names(group, stored[0]["probabilities"].shape[1])
    labels = np.concatenate([predictions["labels"] for predictions in stored])
    predicted = np.concatenate([predictions["predicted"] for predictions in stored])
    wrong = labels != predicted
    pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], axis=1), axis=0, return_counts=True)
    given_classes, totals = np.unique(labels, return_counts=True)
    total = dict(zip(given_classes.tolist(), totals.tolist()))
    order = sorted(range(len(counts)), key=lambda k: (-counts[k], *pairs[k].tolist()))
    return [{"run": group["label"], "given": name(pairs[k][0]), "predicted": name(pairs[k][1]),
             "count": int(counts[k]), "share_of_given": int(counts[k]) / total[int(pairs[k][0])],
             "seeds": len(stored)} for k in order]

"""A trained run's mistakes, from the test predictions it stored at its last epoch (predictions.npz), as
fastai's ClassificationInterpretation shows them: the top losses (`plot_top_losses`) and the
most-confused class pairs (`most_confused`). Any run directory will do (train-head, finetune, scratch),
a folder of seeds, or an experiment folder (its approaches). No torch here.

A group of seeds is read as one model: each test image's probabilities are the mean of its seeds'
(the seeds test the same images), its loss the cross-entropy of that mean, and its confusions are summed
over the seeds, as compare's confusion matrix.
"""
from __future__ import annotations

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


def class_names(group: dict, count: int) -> list[str]:
    """The run's class names (history.json's), or class <k> where it recorded none of that count."""
    names = group["runs"][0].get("classes")
    if isinstance(names, list) and len(names) == count and all(isinstance(name, str) for name in names):
        return names
    return [f"class {k}" for k in range(count)]


def top_losses(group: dict, top: int) -> list[dict]:
    """The `top` test images of highest loss (cross-entropy of the given label), highest first."""
    predictions = mean_predictions(group)
    labels, probabilities = predictions["labels"], predictions["probabilities"]
    classes = class_names(group, probabilities.shape[1])
    given = probabilities[np.arange(len(labels)), labels]
    losses = -np.log(np.maximum(given, 1e-12))
    predicted = probabilities.argmax(1)
    rows = []
    for rank, index in enumerate(np.argsort(-losses, kind="stable")[:top].tolist(), start=1):
        rows.append({"run": group["label"], "rank": rank, "split": "test", "path": str(predictions["ids"][index]),
                     "given": classes[labels[index]], "predicted": classes[predicted[index]],
                     "loss": float(losses[index]), "given_probability": float(given[index]),
                     "predicted_probability": float(probabilities[index, predicted[index]]),
                     "correct": bool(predicted[index] == labels[index])})
    return rows


def most_confused(group: dict) -> list[dict]:
    """Every (given, predicted) pair of distinct classes the run confused, most often first: the count
    summed over its seeds and its share of the given class's test images."""
    stored = group["predictions"]
    mean_predictions(group)  # the same checks: predictions stored, the same images
    count = stored[0]["probabilities"].shape[1]
    classes = class_names(group, count)
    matrix = np.zeros((count, count), dtype=np.int64)
    for predictions in stored:
        np.add.at(matrix, (predictions["labels"], predictions["predicted"]), 1)
    totals = matrix.sum(1)
    pairs = [(int(matrix[a, b]), a, b) for a in range(count) for b in range(count) if a != b and matrix[a, b]]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [{"run": group["label"], "given": classes[a], "predicted": classes[b], "count": number,
             "share_of_given": number / totals[a], "seeds": len(stored)} for number, a, b in pairs]

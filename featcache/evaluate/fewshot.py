"""Few-shot curves from one cache: k training images per class, many seeded trials, three probes.

Trial t at k shots draws k training images of each class without replacement from
numpy.random.default_rng([seed, k, t]): subsets come from the training split only, are the same for
every probe and are reproducible from the seed. Each probe is evaluated on the whole test split.

- linear: the reference head (Adam, lr 1e-3, batch 32, epoch e on augmented view 1 + e % V) for a fixed
  budget of the reference head's steps (FEWSHOT_LINEAR_STEPS) whatever k is (at 1 shot an epoch is one
  step), so that small k is not also undertrained; the trials of one k train in lockstep in train-head's loop
  (featcache.train.heads.train_heads), each with its own subset, init and shuffle.
- logreg: train-head's probe (featcache.train.logreg.logreg_probe) on clean views: C chosen on a validation
  split of the subset when every class has at least MIN_PER_CLASS_TO_CHOOSE (5) images, else C = 1.0.
- knn: featcache.train.knn on clean views, k chosen on a validation split of the subset when every class has
  at least 5 images, else 1-NN.
logreg and knn share the threshold (featcache.train.config.MIN_PER_CLASS_TO_CHOOSE): below it a validation split holds
too few images to rank settings.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import FeatcacheError
from ..train.heads import LinearHeads, cached_batches, train_heads
from ..train.logreg import logreg_probe
from ..train.knn import knn_probe
from ..train.config import FEWSHOT_LINEAR_STEPS, MIN_PER_CLASS_TO_CHOOSE, EpochConfig
from ..train.loop import seeded_linear
from .config import PROBES
from .stats import ACCURACY, t_interval
from ..files import write_file

LINEAR_LR, LINEAR_BATCH = 1e-3, 32


def draw_subsets(labels: np.ndarray, shots: int, trials: int, seed: int) -> np.ndarray:
    """[trials, shots * C] training indices: `shots` per class, without replacement, class by class."""
    classes = int(labels.max()) + 1
    members = [np.flatnonzero(labels == c) for c in range(classes)]
    fewest = min(len(m) for m in members)
    if shots > fewest:
        raise FeatcacheError(f"`shots` {shots} is more than the {fewest} training images of the smallest class")
    rows = []
    for trial in range(trials):
        rng = np.random.default_rng([seed, shots, trial])
        rows.append(np.concatenate([rng.choice(m, shots, replace=False) for m in members]))
    return np.stack(rows)


def linear_probes(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                  test_labels: torch.Tensor, subsets: np.ndarray, seed: int) -> np.ndarray:
    """Test accuracy of one linear head per subset (init and shuffle seeded seed + trial), trained in
    lockstep by train-head's loop, each on its own subset, for FEWSHOT_LINEAR_STEPS steps."""
    trials, count = subsets.shape
    classes = int(train_labels.max()) + 1
    seeds = [seed + trial for trial in range(trials)]
    heads = LinearHeads([seeded_linear(train_features.shape[-1], classes, each) for each in seeds], [LINEAR_LR] * trials,
                        [0.0] * trials)
    batch = min(LINEAR_BATCH, count)
    epochs = math.ceil(FEWSHOT_LINEAR_STEPS / math.ceil(count / batch))
    config = EpochConfig(epochs=epochs, batch_size=batch, seed=seed)
    train_heads(heads, cached_batches(train_features), train_labels, config, seeds=seeds,
                rows=torch.from_numpy(subsets), max_steps=FEWSHOT_LINEAR_STEPS)
    return heads.accuracy(test_features, test_labels).numpy()


def logreg_probes(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                  test_labels: np.ndarray, subsets: np.ndarray, seed: int) -> np.ndarray:
    """Test accuracy of train-head's logreg probe (featcache.train.logreg.logreg_probe) on each subset, its
    validation split seeded seed + trial as kNN's is."""
    from sklearn.exceptions import ConvergenceWarning

    accuracies = []
    for trial, subset in enumerate(subsets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # hundreds of fits on a few images: noise
            model = logreg_probe(train_features[subset][:, None], train_labels[subset], seed=seed + trial)["model"]
        accuracies.append(model.score(test_features, test_labels))
    return np.array(accuracies)


def knn_probes(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
               test_labels: torch.Tensor, subsets: np.ndarray, seed: int, temperature: float | None = None) -> np.ndarray:
    classes = int(train_labels.max()) + 1
    return np.array([knn_probe(train_features[subset], train_labels[subset], test_features, test_labels,
                               seed=seed + trial, temperature=temperature, classes=classes)["test_acc"]
                     for trial, subset in enumerate(subsets)])


def fewshot_rows(cache, shots=(1, 2, 5, 10, 20, 50), trials: int = 20, seed: int = 0, probes=PROBES,
                 log=None, knn_temperature: float | None = None) -> list[dict]:
    """One row per (probe, shots): mean test accuracy over `trials` subsets with its 95% t-interval (the
    settings as featcache.evaluate.config.FewshotConfig checks them)."""
    labels = cache.train_labels.numpy()
    fewest = int(np.bincount(labels).min())
    if max(shots) > fewest:  # before any work
        raise FeatcacheError(f"`shots` {max(shots)} is more than the {fewest} training images of the smallest class")
    clean = cache.train_features[:, 0]
    rows = []
    for k in shots:
        subsets = draw_subsets(labels, k, trials, seed)
        for probe in probes:
            if probe == "linear":
                accuracies = linear_probes(cache.train_features, cache.train_labels, cache.test_features,
                                           cache.test_labels, subsets, seed)
            elif probe == "logreg":
                accuracies = logreg_probes(clean.numpy(), labels, cache.test_features.numpy(),
                                           cache.test_labels.numpy(), subsets, seed)
            else:
                accuracies = knn_probes(clean, cache.train_labels, cache.test_features, cache.test_labels, subsets, seed,
                                        knn_temperature)
            interval = t_interval(accuracies, bounds=ACCURACY)
            rows.append({"probe": probe, "shots": k, "trials": trials, "mean_test_acc": interval["mean"],
                         "std": interval["std"], "ci95_low": interval["low"], "ci95_high": interval["high"],
                         "ci95_clipped": interval["clipped"],
                         "setting": {"linear": f"{FEWSHOT_LINEAR_STEPS} Adam steps "
                                               f"(batch {min(LINEAR_BATCH, k * len(np.unique(labels)))})",
                                     "logreg": "C by validation" if k >= MIN_PER_CLASS_TO_CHOOSE else "C=1.0",
                                     "knn": "k by validation" if k >= MIN_PER_CLASS_TO_CHOOSE else "1-NN"}[probe]})
            if log is not None:
                log(f"{probe} {k}-shot: {interval['mean']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]")
    return rows


def plot_fewshot(rows: list[dict], path):
    """fewshot.png: mean test accuracy against k per probe, with its 95% band; returns the Figure."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for probe, colour in zip(PROBES, ("blue", "purple", "orange")):
        mine = [row for row in rows if row["probe"] == probe]
        if not mine:
            continue
        shots = [row["shots"] for row in mine]
        axis.plot(shots, [row["mean_test_acc"] for row in mine], marker="o", color=colour, label=probe)
        axis.fill_between(shots, [row["ci95_low"] for row in mine], [row["ci95_high"] for row in mine],
                          color=colour, alpha=0.2)
    axis.set_xscale("log")
    axis.set_xticks(sorted({row["shots"] for row in rows}), [str(s) for s in sorted({row["shots"] for row in rows})])
    axis.minorticks_off()  # a log axis labels its minor ticks too (2x10^0, 3x10^0 ...): the shots alone
    axis.set_xlabel("training images per class (k)")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"Few-shot: mean of {rows[0]['trials']} trials, 95% band")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    write_file(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    return figure


def write_fewshot(rows: list[dict], out: Path, trials: int, seed: int, cache_path, seconds: float) -> dict:
    """fewshot.md, fewshot.csv, fewshot.json and fewshot.png in `out`; returns the Markdown and the paths."""
    import json

    from ..csvfiles import csv_text
    from .tables import markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["probe", "shots", "trials", "mean_test_acc", "ci95_low", "ci95_high", "ci95_clipped", "std", "setting"]
    markdown = (markdown_table(rows, columns) + f"\n\nMean test accuracy over {trials} trials per k (subsets "
                f"seeded by {seed}, the same for every probe), 95% t-interval over trials; the linear probe "
                f"takes {FEWSHOT_LINEAR_STEPS} Adam steps whatever k is. Cache: {cache_path}.\n")
    write_file(out / "fewshot.md", markdown.encode())
    write_file(out / "fewshot.csv", csv_text(columns, rows).encode())
    write_file(out / "fewshot.json", (json.dumps({"cache": str(cache_path), "seed": seed, "seconds": seconds,
                                                  "rows": rows}, indent=2) + "\n").encode())
    plot_fewshot(rows, out / "fewshot.png")
    return {"markdown": markdown, "md": out / "fewshot.md", "csv": out / "fewshot.csv", "json": out / "fewshot.json",
            "png": out / "fewshot.png"}

"""The logistic-regression probe, the one train-head (--head logreg) and few-shot both use: scikit-learn's
StandardScaler + LogisticRegression on cached features, C chosen on featcache's validation split when
every class has MIN_PER_CLASS_TO_CHOOSE images (as kNN's k), else scikit-learn's default C = 1.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..cache.reader import FeatureCache
from .config import MIN_PER_CLASS_TO_CHOOSE
from .heads import validation_split

DEFAULT_LOGREG_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
FALLBACK_C = 1.0  # scikit-learn's default C, for subsets too small to choose it


def probe_pipeline(C: float):
    """The probe's model: StandardScaler + LogisticRegression (max_iter 2000) at C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def logreg_probe(features: np.ndarray, labels: np.ndarray, Cs=DEFAULT_LOGREG_CS, val_fraction: float = 0.2,
                 seed: int = 0) -> dict:
    """The logistic-regression probe, train-head's and few-shot's: StandardScaler + LogisticRegression
    (max_iter 2000) on features [N, R, D], R rows per image of which row 0 is the clean view.

    C is the best of Cs (first of equals: the smaller C) fitted on validation_split(labels, val_fraction,
    seed) and scored on the held-out clean views, when every class has at least MIN_PER_CLASS_TO_CHOOSE images, the
    threshold at which kNN chooses its k; below it a split leaves too few images to rank Cs, so C is
    FALLBACK_C. The chosen C is then refitted on every image. Returns the model, the grid, the best row and
    how C was chosen (as knn_probe says how k was).
    """
    def fit(C, indices):
        model = probe_pipeline(C)
        rows = features[indices]
        return model.fit(rows.reshape(-1, rows.shape[-1]), np.repeat(labels[indices], rows.shape[1]))

    grid, best, chosen = [], {"C": FALLBACK_C, "val_acc": None}, f"fixed (fewer than {MIN_PER_CLASS_TO_CHOOSE} images in a class)"
    if np.bincount(labels).min() >= MIN_PER_CLASS_TO_CHOOSE:
        chosen = "validation split"
        fit_idx, val_idx = validation_split(torch.from_numpy(labels), val_fraction, seed)
        for C in Cs:
            model = fit(C, fit_idx)
            grid.append({"C": C, "val_acc": float(model.score(features[val_idx, 0], labels[val_idx]))})
        best = max(grid, key=lambda row: row["val_acc"])
    return {"grid": grid, "best": best, "chosen": chosen, "model": fit(best["C"], np.arange(len(labels)))}


def logistic_regression_probe(cache: FeatureCache, use_views: str = "clean", Cs=DEFAULT_LOGREG_CS,
                              val_fraction: float = 0.2, seed: int = 0) -> dict:
    """train-head's logreg: logreg_probe on a cache's training images, scored on them and on the test split.

    use_views: "clean" fits on view 0 only; "all" adds every augmented view as extra training rows.
    """
    from sklearn.metrics import log_loss

    features, labels = cache.train_features.numpy(), cache.train_labels.numpy()
    probe = logreg_probe(features if use_views == "all" else features[:, :1], labels, Cs, val_fraction, seed)
    final = probe["model"]
    return {
        **probe,
        "train_acc": float(final.score(features[:, 0], labels)),
        "test_acc": float(final.score(cache.test_features.numpy(), cache.test_labels.numpy())),
        "test_probabilities": final.predict_proba(cache.test_features.numpy()),
        "train_loss": float(log_loss(labels, final.predict_proba(features[:, 0]), labels=final.classes_)),
    }


def logreg_as_linear(pipeline, classes: int) -> nn.Linear:
    """The fitted scaler + logistic regression as one equivalent Linear(D, C) head.

    Softmax over the returned logits equals predict_proba, so the probe can seed `finetune --init-head`.
    """
    scaler, model = pipeline[0], pipeline[-1]
    coef = torch.tensor(model.coef_ / scaler.scale_, dtype=torch.float32)
    intercept = torch.tensor(model.intercept_, dtype=torch.float32) - coef @ torch.tensor(
        scaler.mean_, dtype=torch.float32)
    if coef.shape[0] == 1:  # binary: p(1) = sigmoid(z) = softmax([0, z])[1]
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros(1), intercept])
    head = nn.Linear(coef.shape[1], classes)
    with torch.no_grad():
        head.weight.copy_(coef)
        head.bias.copy_(intercept)
    return head

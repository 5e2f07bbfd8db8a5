"""Heads trained on cached features: a linear head, a batched sweep of heads, a logistic-regression probe.

Features are in-memory tensors, so a head trains in well under a second: no DataLoader, no images.
Selection (sweep, logreg's C) uses a validation split carved from the training images, never the test set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from . import FeatcacheError
from .backbone import FEATURE_DIM
from .cache import FeatureCache
from .train import EpochConfig, accuracy, run_epochs, seeded_linear

DEFAULT_SWEEP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_SWEEP_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
DEFAULT_LOGREG_CS = (0.001, 0.01, 0.1, 1.0, 10.0)


def view_for_epoch(epoch: int, views: int) -> int:
    """Epoch e trains on augmented view 1 + e % V: a fresh augmentation every epoch while V >= epochs."""
    return 1 + epoch % views


def train_linear_head(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, config: EpochConfig, lr: float = 1e-3,
                      weight_decay: float = 0.0, log=None) -> tuple[nn.Linear, dict]:
    """A Linear(512, C) head on cached views [N, 1+V, 512], with the reference loop and defaults."""
    views = train_features.shape[1] - 1
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    head = seeded_linear(FEATURE_DIM, classes, config.seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    history = run_epochs(
        head, optimizer, train_labels,
        lambda epoch, indices: train_features[indices, view_for_epoch(epoch, views)],
        lambda: accuracy(head, lambda window: test_features[window], test_labels), config, log=log)
    return head, history


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, validation) indices of the training samples."""
    if not 0 < fraction < 1:
        raise FeatcacheError(f"--val-fraction must be between 0 and 1, got {fraction}")
    indices = np.arange(len(labels))
    try:
        fit, val = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels.numpy())
    except ValueError as error:
        raise FeatcacheError(f"cannot carve a validation split of {fraction} from {len(labels)} "
                             f"training images: {error}") from None
    return np.sort(fit), np.sort(val)


@dataclass
class SweepResult:
    grid: list[dict]  # one row per (lr, weight_decay): val_acc, final train loss
    best: dict


def sweep_heads(train_features: torch.Tensor, train_labels: torch.Tensor, lrs, weight_decays,
                config: EpochConfig, val_fraction: float = 0.2) -> SweepResult:
    """Train one head per (lr, weight decay) at once and pick the best on a validation split.

    All heads see the same batches; their weights are stacked so each step is one batched matmul, and
    Adam's per-group lr/weight_decay gives each head its own setting. Test data is not an argument.
    """
    if not lrs or not weight_decays:
        raise FeatcacheError("a sweep needs at least one learning rate and one weight decay")
    if not all(lr > 0 and math.isfinite(lr) for lr in lrs):
        raise FeatcacheError(f"sweep learning rates must be positive and finite, got {list(lrs)}")
    if any(wd < 0 for wd in weight_decays):
        raise FeatcacheError(f"sweep weight decays must be non-negative, got {list(weight_decays)}")
    settings = [(lr, wd) for lr in lrs for wd in weight_decays]
    fit, val = validation_split(train_labels, val_fraction, config.seed)
    classes = int(train_labels.max()) + 1
    heads = [seeded_linear(FEATURE_DIM, classes, config.seed) for _ in settings]
    optimizer = torch.optim.Adam([{"params": head.parameters(), "lr": lr, "weight_decay": wd}
                                  for head, (lr, wd) in zip(heads, settings)])
    views = train_features.shape[1] - 1
    fit_features, fit_labels = train_features[fit], train_labels[fit]

    class StackedHeads(nn.Module):
        def forward(self, x):  # [B, 512] -> [G, B, C]
            weight = torch.stack([h.weight for h in heads])
            bias = torch.stack([h.bias for h in heads])
            return torch.einsum("bd,gcd->gbc", x, weight) + bias[:, None]

    stacked = StackedHeads()
    generator = torch.Generator().manual_seed(config.seed)
    final_loss = torch.zeros(len(settings))
    for epoch in range(config.epochs):
        order = torch.randperm(len(fit), generator=generator)
        loss_sum = torch.zeros(len(settings))
        for start in range(0, len(fit), config.batch_size):
            indices = order[start:start + config.batch_size]
            logits = stacked(fit_features[indices, view_for_epoch(epoch, views)])
            target = fit_labels[indices].repeat(len(settings))
            losses = nn.functional.cross_entropy(logits.flatten(0, 1), target, reduction="none")
            per_head = losses.view(len(settings), -1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            per_head.sum().backward()  # heads share no parameters: each gets its own gradient
            optimizer.step()
            loss_sum += per_head.detach() * len(indices)
        final_loss = loss_sum / len(fit)
    with torch.no_grad():
        val_predictions = stacked(train_features[val, 0]).argmax(-1)
    val_acc = (val_predictions == train_labels[val]).float().mean(1)
    grid = [{"lr": lr, "weight_decay": wd, "val_acc": float(acc), "final_train_loss": float(loss)}
            for (lr, wd), acc, loss in zip(settings, val_acc, final_loss)]
    best = max(grid, key=lambda row: row["val_acc"])  # first of equals: lower lr, lower decay
    return SweepResult(grid, best)


def logistic_regression_probe(cache: FeatureCache, use_views: str = "clean", Cs=DEFAULT_LOGREG_CS,
                              val_fraction: float = 0.2, seed: int = 0) -> dict:
    """scikit-learn LogisticRegression on the cached features, C chosen on a validation split.

    use_views: "clean" fits on view 0 only; "all" adds every augmented view as extra training rows.
    """
    if use_views not in ("clean", "all"):
        raise FeatcacheError(f"--logreg-views must be 'clean' or 'all', got {use_views}")
    features, labels = cache.train_features.numpy(), cache.train_labels.numpy()

    def rows(indices):
        chosen = features[indices] if use_views == "all" else features[indices, :1]
        return chosen.reshape(-1, FEATURE_DIM), np.repeat(labels[indices], chosen.shape[1])

    def fit(C, indices):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        return model.fit(*rows(indices))

    fit_idx, val_idx = validation_split(cache.train_labels, val_fraction, seed)
    grid = []
    for C in Cs:
        model = fit(C, fit_idx)
        grid.append({"C": C, "val_acc": float(model.score(features[val_idx, 0], labels[val_idx]))})
    best = max(grid, key=lambda row: row["val_acc"])
    final = fit(best["C"], np.arange(len(labels)))
    return {
        "grid": grid, "best": best, "model": final,
        "train_acc": float(final.score(features[:, 0], labels)),
        "test_acc": float(final.score(cache.test_features.numpy(), cache.test_labels.numpy())),
        "train_loss": float(log_loss(labels, final.predict_proba(features[:, 0]), labels=final.classes_)),
    }


def logreg_as_linear(pipeline, classes: int) -> nn.Linear:
    """The fitted scaler + logistic regression as one equivalent Linear(512, C) head.

    Softmax over the returned logits equals predict_proba, so the probe can seed `finetune --init-head`.
    """
    scaler, model = pipeline[0], pipeline[-1]
    coef = torch.tensor(model.coef_ / scaler.scale_, dtype=torch.float32)
    intercept = torch.tensor(model.intercept_, dtype=torch.float32) - coef @ torch.tensor(
        scaler.mean_, dtype=torch.float32)
    if coef.shape[0] == 1:  # binary: p(1) = sigmoid(z) = softmax([0, z])[1]
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros(1), intercept])
    head = nn.Linear(FEATURE_DIM, classes)
    with torch.no_grad():
        head.weight.copy_(coef)
        head.bias.copy_(intercept)
    return head

"""Heads trained on cached features: a linear head, a batched sweep of heads, heads of several seeds.

Features are in-memory tensors, so a head trains in well under a second: no DataLoader, no images; a
cache larger than the memory budget is streamed from the file instead (featcache.cache.streaming).
Selection (sweep, logreg's C, kNN's k) uses validation_split, carved from the training images, never the
test set. Few-shot (featcache.evaluate.fewshot) trains its linear probes with the same loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import FeatcacheError
from ..cache.reader import view_for_epoch
from .config import EpochConfig
from .loop import log_epoch, seeded_linear


class LinearHeads:
    """G heads Linear(D, C) with softmax cross-entropy, trained by Adam in lockstep on the same batches.

    The gradient of cross-entropy through a linear layer is written out ((softmax - onehot)^T x / B)
    and the update is torch.optim.Adam's (L2 weight decay, bias correction), on one [G, C, D+1] tensor
    whose last column is the bias. Measured on the reference head (1,500 images, 15 epochs, 2-core
    CPU): about 0.09 s against 0.26 s for nn.Linear + autograd + torch.optim.Adam, the difference that
    takes train-head past 1000x the end-to-end loop. tests/test_heads.py checks it against torch's.
    """

    def __init__(self, init: list[nn.Linear], lrs, weight_decays, betas=(0.9, 0.999), eps=1e-8):
        self.params = torch.stack([torch.cat([h.weight.detach(), h.bias.detach()[:, None]], 1) for h in init])
        self.lrs = torch.tensor(lrs, dtype=torch.float32).view(-1, 1, 1)
        self.weight_decays = torch.tensor(weight_decays, dtype=torch.float32).view(-1, 1, 1)
        self.decay = bool((self.weight_decays > 0).any())
        self.betas, self.eps, self.steps = betas, eps, 0
        self.exp_avg = torch.zeros_like(self.params)
        self.exp_avg_sq = torch.zeros_like(self.params)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """[B, D] or [B, D+1] (with bias column) -> log-probabilities [G, B, C]."""
        if features.shape[-1] == self.params.shape[-1]:
            return torch.matmul(features, self.params.transpose(1, 2)).log_softmax(-1)
        weight, bias = self.params[..., :-1], self.params[..., -1]
        return (torch.matmul(features, weight.transpose(1, 2)) + bias[:, None]).log_softmax(-1)

    def step(self, features: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """One Adam step on a batch [B, D+1] (bias column included), or [G, B, D+1] when each head has its
        own batch; returns the pre-step log-probs."""
        log_probs = self.log_probs(features)
        grad = torch.matmul((log_probs.exp() - onehot).transpose(1, 2), features).div_(features.shape[-2])
        if self.decay:
            grad.add_(self.params * self.weight_decays)
        self.steps += 1
        beta1, beta2 = self.betas
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** self.steps)).add_(self.eps)
        self.params.sub_(self.exp_avg / denom * (self.lrs / (1 - beta1 ** self.steps)))
        return log_probs

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Accuracy of each head, [G]: in float64, so that it is exactly correct / count, as run_epochs reports it."""
        return (self.log_probs(features).argmax(-1) == labels).double().mean(-1)

    def as_linear(self, index: int = 0) -> nn.Linear:
        classes, width = self.params.shape[1], self.params.shape[2] - 1
        head = nn.Linear(width, classes)
        with torch.no_grad():
            head.weight.copy_(self.params[index, :, :-1])
            head.bias.copy_(self.params[index, :, -1])
        return head


def feature_width(train_features) -> int:
    """D of cached views [N, 1+V, D] or of a BlockStream: the cache's, whatever backbone wrote it."""
    return train_features.shape[-1] if isinstance(train_features, torch.Tensor) else train_features.dim


def with_bias_column(features: torch.Tensor) -> torch.Tensor:
    return nn.functional.pad(features, (0, 1), value=1.0)


def train_heads(heads: LinearHeads, epoch_batches, labels: torch.Tensor, config: EpochConfig,
                test_accuracy=None, log=None, seeds: list[int] | None = None, epoch_order=None,
                progress: bool = False, rows: torch.Tensor | None = None, max_steps: int | None = None) -> dict:
    """The reference epoch loop (seeded shuffle, batches, per-epoch train loss and accuracy on the
    batches as trained, test accuracy) for G heads at once.

    epoch_batches(epoch, order, batch_size) yields the feature batches [B, D+1] of the samples in
    `order`, batch by batch. Histories hold one value per head per epoch; the shuffle is run_epochs'
    with config.seed, or with `seeds` one shuffle per head (order [G, N], batches [G, B, D+1]): head k
    then sees exactly the batches a single head of seed seeds[k] would. `epoch_order(epoch)`, when
    given, replaces the shuffle (a streamed cache's block order: featcache.cache.streaming). `progress`: a
    tqdm bar in rows/s (for streamed caches, which take minutes).

    `rows` [G, n] (with `seeds`) gives each head its own training rows, indices into `labels` and the
    features: head k shuffles rows[k] alone, so it trains as a single head on those rows would (few-shot
    trials, each on its own subset, in lockstep). `max_steps` stops after that many optimizer steps,
    mid-epoch if it falls there (a budget in steps, not epochs: few-shot heads on 3 or 600 images get the
    same number of updates); the last epoch's history then covers the rows it trained on.
    """
    if rows is not None and (seeds is None or epoch_order is not None or len(rows) != len(seeds)):
        raise FeatcacheError("per-head `rows` need one seed per head and the in-memory shuffle")
    onehot = torch.eye(heads.params.shape[1])  # class -> one-hot row, gathered per batch: no [G, N, C] state
    generators = [torch.Generator().manual_seed(seed) for seed in (seeds if seeds is not None else [config.seed])]
    history = {"train_loss": [], "train_acc": [], "test_acc": []}
    count = len(labels) if rows is None else rows.shape[-1]
    bar = tqdm(total=config.epochs * count, unit="row", desc="train", disable=not progress, dynamic_ncols=True)
    steps = 0
    for epoch in range(config.epochs):
        if epoch_order is not None:
            order = epoch_order(epoch)
        else:
            orders = [torch.randperm(count, generator=generator) for generator in generators]
            order = torch.stack(orders) if seeds is not None else orders[0]
            if rows is not None:
                order = rows.gather(1, order)
        ordered_labels = labels[order]  # [N] or [G, N]: 8 bytes a row a head, at any number of classes
        totals = torch.zeros(2, len(heads.params), dtype=torch.float64)  # summed loss, correct count
        pending, start = [], 0
        for features in epoch_batches(epoch, order, config.batch_size):
            stop = start + features.shape[-2]
            pending.append((heads.step(features, onehot[ordered_labels[..., start:stop]]), start, stop))
            if (stop - pending[0][1]) * onehot.shape[1] * len(heads.params) >= SCORE_ELEMENTS:
                totals += _scores(pending, ordered_labels)
                pending = []
            bar.update(stop - start)
            start, steps = stop, steps + 1
            if steps == max_steps:
                break
        totals += _scores(pending, ordered_labels)
        history["train_loss"].append((totals[0] / start).tolist())
        history["train_acc"].append((totals[1] / start).tolist())
        history["test_acc"].append(test_accuracy().tolist() if test_accuracy is not None else None)
        if log is not None:
            log(log_epoch(epoch, config.epochs, history["train_loss"][-1][0], history["train_acc"][-1][0],
                          history["test_acc"][-1][0]))
        if steps == max_steps:
            break
    bar.close()
    return history


SCORE_ELEMENTS = 1 << 22  # batches' log-probabilities kept for scoring at once: 16 MB, whatever N is


def _scores(pending: list, ordered_labels: torch.Tensor) -> torch.Tensor:
    """[summed cross-entropy, correct count] per head over pending (log-probs [G, B, C], start, stop)
    batches: scored together, not batch by batch, because per-batch scoring costs as much as the step."""
    if not pending:
        return torch.zeros(2, 1, dtype=torch.float64)
    log_probs = torch.cat([batch for batch, _, _ in pending], 1)
    batch_labels = ordered_labels[..., pending[0][1]:pending[-1][2]].expand(log_probs.shape[:2])
    loss = -log_probs.gather(-1, batch_labels[..., None]).sum((-2, -1)).double()
    return torch.stack([loss, (log_probs.argmax(-1) == batch_labels).sum(-1).double()])


def cached_batches(features: torch.Tensor):
    """epoch_batches over cached views [N, 1+V, D]: one gather per epoch, then slices (no per-batch copies)."""
    views = features.shape[1] - 1

    def batches(epoch, order, batch_size):
        epoch_features = with_bias_column(features[order, view_for_epoch(epoch, views)])  # [(G,) N, D+1]
        return (epoch_features[..., start:start + batch_size, :] for start in range(0, order.shape[-1], batch_size))
    return batches


def training_source(train, seed: int, seeds: list[int] | None = None, positions=None) -> dict:
    """train_heads' epoch_batches and epoch_order for training views in memory ([N, 1+V, D]: a seeded
    randperm, one gather per epoch) or streamed from the file (a streaming.BlockStream: block order),
    restricted to `positions` (the rows of a validation split's fit part) when given."""
    if isinstance(train, torch.Tensor):
        return {"epoch_batches": cached_batches(train if positions is None else train[positions])}
    stream = train.with_rows(np.arange(len(train)) if positions is None else positions, seed, seeds)
    return {"epoch_batches": stream.batches, "epoch_order": stream.order}


def clean_accuracy(heads: "LinearHeads", train, positions: np.ndarray, labels: torch.Tensor) -> torch.Tensor:
    """Each head's accuracy on the clean views of training rows `positions`, block by block when streamed."""
    if isinstance(train, torch.Tensor):
        return heads.accuracy(train[positions, 0], labels[positions])
    correct = torch.zeros(len(heads.params), dtype=torch.float64)
    for chosen, features in train.clean_blocks(positions):
        correct += (heads.log_probs(features).argmax(-1) == labels[chosen]).double().sum(-1)
    return correct / len(positions)


def single_head_history(history: dict) -> dict:
    return {key: [values[0] for values in per_epoch] for key, per_epoch in history.items()}


def train_linear_head(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, config: EpochConfig, lr: float = 1e-3,
                      weight_decay: float = 0.0, log=None, progress: bool = False) -> tuple[nn.Linear, dict]:
    """A Linear(D, C) head on cached views [N, 1+V, D] (or a BlockStream), with the reference loop."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    heads = LinearHeads([seeded_linear(feature_width(train_features), classes, config.seed)], [lr], [weight_decay])
    last = {}  # the latest epoch's test log-probabilities: the run stores its last epoch's predictions

    def test_accuracy():
        last["log_probs"] = heads.log_probs(test_features)
        return (last["log_probs"].argmax(-1) == test_labels).double().mean(-1)

    history = train_heads(heads, labels=train_labels, config=config, test_accuracy=test_accuracy, log=log,
                          progress=progress, **training_source(train_features, config.seed))
    return heads.as_linear(), {**single_head_history(history), "test_probabilities": last["log_probs"][0].exp()}


def train_seeded_heads(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor, config: EpochConfig, seeds: list[int], lr: float = 1e-3,
                       weight_decay: float = 0.0, progress: bool = False) -> list[tuple[nn.Linear, dict]]:
    """One head per seed (its own init and shuffle), all trained in lockstep as one LinearHeads: for
    each seed, what train_linear_head with that seed gives, within float rounding."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    heads = LinearHeads([seeded_linear(feature_width(train_features), classes, seed) for seed in seeds], [lr] * len(seeds),
                        [weight_decay] * len(seeds))
    last = {}

    def test_accuracy():
        last["log_probs"] = heads.log_probs(test_features)
        return (last["log_probs"].argmax(-1) == test_labels).double().mean(-1)

    history = train_heads(heads, labels=train_labels, config=config, test_accuracy=test_accuracy, seeds=seeds,
                          progress=progress, **training_source(train_features, seeds[0], seeds))
    return [(heads.as_linear(k), {**{key: [values[k] for values in per_epoch] for key, per_epoch in history.items()},
                                  "test_probabilities": last["log_probs"][k].exp()}) for k in range(len(seeds))]


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, validation) indices of the training samples."""
    from sklearn.model_selection import train_test_split  # scikit-learn costs a second to import: only here

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
                config: EpochConfig, val_fraction: float = 0.2, progress: bool = False) -> SweepResult:
    """Train one head per (lr, weight decay) at once and pick the best on a validation split.

    All heads see the same batches as one LinearHeads: each step is one batched matmul and each head
    has its own lr and weight decay. Test data is not an argument.
    """
    settings = [(lr, wd) for lr in lrs for wd in weight_decays]
    fit, val = validation_split(train_labels, val_fraction, config.seed)
    classes = int(train_labels.max()) + 1
    heads = LinearHeads([seeded_linear(feature_width(train_features), classes, config.seed)] * len(settings),
                        [lr for lr, _ in settings], [wd for _, wd in settings])
    history = train_heads(heads, labels=train_labels[fit], config=config, progress=progress,
                          **training_source(train_features, config.seed, positions=fit))
    val_acc = clean_accuracy(heads, train_features, val, train_labels)
    grid = [{"lr": lr, "weight_decay": wd, "val_acc": float(acc), "final_train_loss": loss}
            for (lr, wd), acc, loss in zip(settings, val_acc, history["train_loss"][-1])]
    best = max(grid, key=lambda row: row["val_acc"])  # first of equals: lower lr, lower decay
    return SweepResult(grid, best)

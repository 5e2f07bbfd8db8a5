"""The epoch loop every approach trains with, and its configuration.

`run_epochs` is the loop of the reference notebook (and of torchvision's references/classification):
shuffle with a seeded generator, Adam step per batch of 32, per-epoch train loss, train accuracy (on
the batches as they were trained) and test accuracy. Linear heads (cached or end to end) run the same
schedule with a written-out step, heads.train_heads: same shuffle generator, same batches, same
history; tests/test_heads.py checks that the two give the same weights. Needs torch alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from .errors import FeatcacheError

EVAL_BATCH = 128


@dataclass
class EpochConfig:
    epochs: int = 15
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise FeatcacheError(f"`epochs` must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise FeatcacheError(f"`batch_size` must be at least 1, got {self.batch_size}")


def check_learning_rate(name: str, value: float) -> float:
    if not (value > 0 and value < float("inf")):
        raise FeatcacheError(f"`{name}` must be a positive finite number, got {value}")
    return value


def seeded_linear(in_features: int, classes: int, seed: int) -> nn.Linear:
    """A new head whose init depends on the seed alone, not on global RNG history."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(in_features, classes)


def log_epoch(epoch: int, epochs: int, loss: float, train_acc: float, test_acc: float) -> str:
    return (f"Epoch {epoch + 1}/{epochs} - Train Loss: {loss:.4f}, Train Acc: {100 * train_acc:.2f}%, "
            f"Test Acc: {100 * test_acc:.2f}%")


def run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, labels: torch.Tensor,
               batch_inputs: Callable[[int, torch.Tensor], torch.Tensor], test_accuracy: Callable[[], float],
               config: EpochConfig, set_train_mode: Callable[[], None] = lambda: None,
               log: Callable[[str], None] | None = tqdm.write, progress: bool = False) -> dict:
    """Train for config.epochs; batch_inputs(epoch, indices) gives the model's inputs for a batch.

    Each epoch's line goes to `log` (tqdm.write keeps it above an active progress bar)."""
    history = {"train_loss": [], "train_acc": [], "test_acc": []}
    generator = torch.Generator().manual_seed(config.seed)
    criterion = nn.CrossEntropyLoss()
    count = len(labels)
    bar = tqdm(total=config.epochs * count, unit="img", desc="train", disable=not progress, dynamic_ncols=True)
    for epoch in range(config.epochs):
        set_train_mode()
        order = torch.randperm(count, generator=generator)
        loss_sum = torch.zeros((), device=labels.device)
        correct = torch.zeros((), dtype=torch.long, device=labels.device)
        for start in range(0, count, config.batch_size):
            indices = order[start:start + config.batch_size]
            target = labels[indices.to(labels.device)]
            logits = model(batch_inputs(epoch, indices))
            loss = criterion(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(indices)
            correct += (logits.detach().argmax(1) == target).sum()
            bar.update(len(indices))
        history["train_loss"].append(loss_sum.item() / count)
        history["train_acc"].append(correct.item() / count)
        history["test_acc"].append(test_accuracy())
        if log is not None:
            log(log_epoch(epoch, config.epochs, *(history[k][-1] for k in ("train_loss", "train_acc", "test_acc"))))
    bar.close()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Callable[[slice], torch.Tensor], labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(accuracy, class probabilities [N, C] on the CPU) of model over all samples, in evaluation
    batches; inputs(slice) gives a batch. The probabilities are what a run stores of its last epoch."""
    correct, probabilities = 0, []
    for start in range(0, len(labels), EVAL_BATCH):
        window = slice(start, start + EVAL_BATCH)
        logits = model(inputs(window)).float()
        correct += (logits.argmax(1) == labels[window].to(labels.device)).sum().item()
        probabilities.append(logits.softmax(1).cpu())
    return correct / len(labels), torch.cat(probabilities)


def accuracy(model: nn.Module, inputs: Callable[[slice], torch.Tensor], labels: torch.Tensor) -> float:
    """Accuracy of model over all samples, in evaluation batches; inputs(slice) gives a batch."""
    return evaluate(model, inputs, labels)[0]

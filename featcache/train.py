"""End-to-end training: one epoch loop shared by every approach, and the three end-to-end trainers.

`run_epochs` is the loop of the reference notebook (and of torchvision's references/classification):
shuffle with a seeded generator, Adam step per batch of 32, per-epoch train loss, train accuracy (on
the batches as they were trained) and test accuracy. Linear heads (cached or end to end) use the
same loop with a faster step, heads.train_heads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet18
from tqdm import tqdm

from . import FeatcacheError
from .augment import make_views
from .backbone import FEATURE_DIM, STAGES, load_backbone

EVAL_BATCH = 128


@dataclass
class EpochConfig:
    epochs: int = 15
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise FeatcacheError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise FeatcacheError(f"--batch-size must be at least 1, got {self.batch_size}")


def check_learning_rate(name: str, value: float) -> float:
    if not (value > 0 and value < float("inf")):
        raise FeatcacheError(f"{name} must be a positive finite number, got {value}")
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
def accuracy(model: nn.Module, inputs: Callable[[slice], torch.Tensor], labels: torch.Tensor) -> float:
    """Accuracy of model over all samples, in evaluation batches; inputs(slice) gives a batch."""
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        window = slice(start, start + EVAL_BATCH)
        correct += (model(inputs(window)).argmax(1) == labels[window].to(labels.device)).sum().item()
    return correct / len(labels)


@dataclass
class ImageData:
    """Decoded images of both splits (uint8, resized once) and everything needed to make their views."""

    train_images: list[torch.Tensor]
    train_labels: torch.Tensor
    test_images: list[torch.Tensor]
    test_labels: torch.Tensor
    classes: list[str]
    image_size: int
    view_seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def views(self, split: str, indices: list[int], view: int) -> torch.Tensor:
        images = self.train_images if split == "train" else self.test_images
        return make_views([images[i] for i in indices], indices, view, split, self.view_seed,
                          self.image_size, self.device)

    def test_batch(self, window: slice) -> torch.Tensor:
        return self.views("test", list(range(len(self.test_images)))[window], 0)


def build_finetune_model(weights: str, classes: int, seed: int, unfreeze: list[str]) -> nn.Module:
    """Pretrained ResNet-18, everything frozen but a new seeded head and the `unfreeze` stages."""
    unknown = [stage for stage in unfreeze if stage not in STAGES]
    if unknown:
        raise FeatcacheError(f"--unfreeze: unknown stage {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    model = load_backbone(weights, seed)
    model.fc = seeded_linear(FEATURE_DIM, classes, seed)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in ("fc", *unfreeze):
        for parameter in getattr(model, name).parameters():
            parameter.requires_grad_(True)
    return model


def split_trunk(model: nn.Module, unfreeze: list[str]) -> tuple[nn.Sequential, nn.Sequential]:
    """(frozen trunk, trainable rest) of a torchvision ResNet, split before the first unfrozen stage."""
    order = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    first = min(order.index(stage) for stage in unfreeze) if unfreeze else len(order)
    trunk = nn.Sequential(*(getattr(model, name) for name in order[:first]))
    rest = nn.Sequential(*(getattr(model, name) for name in order[first:]), nn.Flatten(1), model.fc)
    return trunk, rest


def finetune(data: ImageData, weights: str, config: EpochConfig, lr_head: float = 1e-3,
             lr_backbone: float = 1e-5, unfreeze: tuple[str, ...] = ("layer4",), frozen_bn: str = "eval",
             init_head: dict | None = None, log=tqdm.write, progress: bool = False) -> tuple[nn.Module, dict]:
    """Fine-tune the `unfreeze` stages and a new head with two learning rates.

    frozen_bn="eval" keeps frozen modules in eval mode (BatchNorm statistics never change), which also
    makes the frozen trunk's output on the test images fixed: computed once, reused every epoch.
    frozen_bn="train" reproduces the notebook (whole model in train mode).
    """
    if frozen_bn not in ("eval", "train"):
        raise FeatcacheError(f"--frozen-bn must be 'eval' or 'train', got {frozen_bn}")
    unfreeze = list(unfreeze)
    model = build_finetune_model(weights, len(data.classes), config.seed, unfreeze)
    if init_head is not None:
        try:
            model.fc.load_state_dict(init_head)
        except RuntimeError as error:
            raise FeatcacheError(f"--init-head does not fit this head ({len(data.classes)} classes): {error}") from None
    model = model.to(data.device).to(memory_format=torch.channels_last)
    trunk, rest = split_trunk(model, unfreeze)
    backbone_params = [p for name in unfreeze for p in getattr(model, name).parameters()]
    optimizer = torch.optim.Adam([{"params": model.fc.parameters(), "lr": lr_head},
                                  {"params": backbone_params, "lr": lr_backbone}])

    def set_train_mode():
        if frozen_bn == "train":
            model.train()
            return
        model.eval()
        for name in ("fc", *unfreeze):  # only modules with trainable parameters train
            getattr(model, name).train()

    def train_inputs(epoch, indices):
        with torch.no_grad():  # nothing below the first unfrozen stage needs gradients
            return trunk(data.views("train", indices.tolist(), 1 + epoch))

    test_labels = data.test_labels.to(data.device)
    if frozen_bn == "eval":
        trunk.eval()
        with torch.no_grad():
            test_trunk = torch.cat([trunk(data.test_batch(slice(s, s + EVAL_BATCH)))
                                    for s in range(0, len(test_labels), EVAL_BATCH)])

        def test_accuracy():
            rest.eval()
            return accuracy(rest, lambda window: test_trunk[window], test_labels)
    else:
        def test_accuracy():
            model.eval()
            return accuracy(nn.Sequential(trunk, rest), data.test_batch, test_labels)

    history = run_epochs(rest, optimizer, data.train_labels.to(data.device), train_inputs, test_accuracy,
                         config, set_train_mode, log, progress)
    return model, history


def scratch(data: ImageData, config: EpochConfig, lr: float = 1e-3, log=tqdm.write,
            progress: bool = False) -> tuple[nn.Module, dict]:
    """ResNet-18 from a seeded random init, everything trained, same loop and augmentation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = resnet18(num_classes=len(data.classes))
    model = model.to(data.device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    test_labels = data.test_labels.to(data.device)

    def test_accuracy():
        model.eval()
        return accuracy(model, data.test_batch, test_labels)

    history = run_epochs(model, optimizer, data.train_labels.to(data.device),
                         lambda epoch, indices: data.views("train", indices.tolist(), 1 + epoch),
                         test_accuracy, config, model.train, log, progress)
    return model, history


def timed(function, *args, **kwargs):
    """(result, seconds) of a call, synchronising CUDA so GPU work is counted."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


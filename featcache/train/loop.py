"""The epoch loop every approach trains with, and its configuration.

`run_epochs` is the loop of the reference notebook (and of torchvision's references/classification):
shuffle with a seeded generator, Adam step per batch of 32, per-epoch train loss, train accuracy (on
the batches as they were trained) and test accuracy. Linear heads (cached or end to end) run the same
schedule with a written-out step, heads.train_heads: same shuffle generator, same batches, same
history; tests/test_heads.py checks that the two give the same weights. Needs torch alone.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from .config import EpochConfig

EVAL_BATCH = 128


def seeded_linear(in_features: int, classes: int, seed: int) -> nn.Linear:
    """A new head whose init depends on the seed alone, not on global RNG history."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(in_features, classes)


def log_epoch(epoch: int, epochs: int, loss: float, train_acc: float, test_acc: float) -> str:
    return (f"Epoch {epoch + 1}/{epochs} - Train Loss: {loss:.4f}, Train Acc: {100 * train_acc:.2f}%, "
            f"Test Acc: {100 * test_acc:.2f}%")


def run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, labels: torch.Tensor,
               epoch_inputs: Callable[[int, list[torch.Tensor]], Iterable[torch.Tensor]], test_accuracy: Callable[[], float],
               config: EpochConfig, set_train_mode: Callable[[], None] = lambda: None,
               log: Callable[[str], None] | None = tqdm.write, progress: bool = False, ranks=None,
               checkpoint=None, saved: nn.Module | None = None, test_images: int = 0) -> dict:
    """Train for config.epochs; epoch_inputs(epoch, batches) gives the model's inputs for each list of
    sample indices in turn (an iterator, so that the next batches can be decoded while one trains).

    The progress bar counts every image an epoch goes through, its training images and the
    `test_images` test_accuracy evaluates, and shows the rate averaged over the whole run: its rate
    and ETA stay right through the test pass between epochs, which per-update smoothing would take
    for a stall.

    Under torchrun, `ranks` (featcache.train.ddp) gives each rank its share of every global batch and sums the
    metrics; `model` is then DDP-wrapped. `checkpoint` (featcache.train.ddp.Checkpoint) saves the state after
    every epoch, of `saved` (default: the unwrapped model; the whole network when only part of it
    trains, as its frozen BatchNorm may still update), and restores a saved one first. Each epoch's line goes to `log` (tqdm.write keeps it
    above an active progress bar).

    What a model draws at random while training (dropout, stochastic depth: torchvision's EfficientNet
    and ConvNeXt, timm's drop_path) comes from torch's global generator, seeded at each epoch by
    (seed, epoch, rank) and restored afterwards: the same command gives the same numbers, a resumed
    run those of an unbroken one; N ranks draw other masks than one process (each its own rows)."""
    from .ddp import Ranks

    ranks = ranks or Ranks()
    history = {"train_loss": [], "train_acc": [], "test_acc": []}
    generator = torch.Generator().manual_seed(config.seed)
    criterion = nn.CrossEntropyLoss()
    count = len(labels)
    first, saved = 0, saved if saved is not None else ranks.unwrap(model)
    if checkpoint is not None and (state := checkpoint.load()) is not None:
        problem = optimizer_problem(optimizer, state["optimizer"])
        if problem:
            raise checkpoint.ranks.error(f"cannot resume from {checkpoint.path}: {problem}")
        try:  # its layout was checked by Checkpoint.load; the shapes are this run's network's
            saved.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            raise checkpoint.ranks.error(f"cannot resume from {checkpoint.path}: its state does not fit this run "
                                         f"({' '.join(str(error).split())[:160]})") from None
        history, first = state["history"], state["epoch"] + 1
    bar = tqdm(total=(config.epochs - first) * (count + test_images), unit="img", desc="train+test", smoothing=0,
               disable=not progress, dynamic_ncols=True)
    with torch.random.fork_rng(devices=[labels.device] if labels.device.type == "cuda" else []):
        for epoch in range(first, config.epochs):
            torch.manual_seed(hash((config.seed, epoch, ranks.rank)) & (2**63 - 1))  # ints hash alike in every process
            set_train_mode()
            order = torch.randperm(count, generator=generator)
            loss_sum = torch.zeros((), device=labels.device)
            correct = torch.zeros((), dtype=torch.long, device=labels.device)
            batches = [order[start:start + config.batch_size] for start in range(0, count, config.batch_size)]
            shares = [ranks.batch_share(batch) for batch in batches]
            for batch, indices, inputs in zip(batches, shares, epoch_inputs(epoch, shares)):
                target = labels[indices.to(labels.device)]
                logits = model(inputs)
                if ranks.world_size == 1:
                    loss = criterion(logits, target)
                    share_loss = loss.detach() * len(indices)
                else:  # DDP averages over ranks: scaled so the step is the global batch's mean loss
                    share_loss = nn.functional.cross_entropy(logits, target, reduction="sum")
                    loss = share_loss * (ranks.world_size / len(batch))
                    share_loss = share_loss.detach()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += share_loss
                correct += (logits.detach().argmax(1) == target).sum()
                bar.update(len(batch))
            history["train_loss"].append(ranks.sum(loss_sum).item() / count)
            history["train_acc"].append(ranks.sum(correct).item() / count)
            history["test_acc"].append(test_accuracy())
            bar.update(test_images)
            if log is not None:
                log(log_epoch(epoch, config.epochs, *(history[k][-1] for k in ("train_loss", "train_acc", "test_acc"))))
            if checkpoint is not None:
                state = {"epoch": epoch, "history": history, "model": saved.state_dict(),
                         "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
                ranks.on_main(lambda: checkpoint.save(state))
    bar.close()
    return history


def optimizer_problem(optimizer, saved) -> str | None:
    """What keeps a checkpoint's optimizer state from being this run's optimizer's, or None: the same
    groups with the same settings (a file's learning rate never replaces the run's), and per parameter
    tensors of its shape (a scalar step): load_state_dict would take a misshapen one and fail later."""
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"} or not isinstance(saved["state"], dict):
        return "its optimizer state is not an optimizer's"
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]) or any(
            not isinstance(theirs, dict) or theirs != mine for theirs, mine in zip(groups, fresh["param_groups"])):
        return "its optimizer settings (parameter groups, learning rates) are not this run's"
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    for index, values in saved["state"].items():
        if type(index) is not int or not 0 <= index < len(parameters) or not isinstance(values, dict) or not all(
                isinstance(value, torch.Tensor) and value.shape == (() if key == "step" else parameters[index].shape)
                for key, value in values.items()):
            return f"its optimizer state for parameter {index!r} does not fit this run's network"
    return None


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Callable[[slice], torch.Tensor], labels: torch.Tensor,
             ranks=None) -> tuple[float, torch.Tensor]:
    """(accuracy, class probabilities [N, C] on the CPU) of model over all samples, in evaluation
    batches; inputs(slice) gives a batch. The probabilities are what a run stores of its last epoch.
    Under torchrun each rank evaluates its contiguous share and every rank gets all probabilities:
    each sample is evaluated exactly once."""
    if ranks is not None and ranks.world_size > 1:
        first, stop = ranks.own(len(labels))
        probabilities = [model(inputs(slice(start, min(start + EVAL_BATCH, stop)))).float().softmax(1).cpu()
                         for start in range(first, stop, EVAL_BATCH)]
        probabilities = ranks.gather_rows(torch.cat(probabilities) if probabilities else torch.empty(0))  # a share may be empty
        correct = (probabilities.argmax(1) == labels.cpu()).sum().item()
        return correct / len(labels), probabilities
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

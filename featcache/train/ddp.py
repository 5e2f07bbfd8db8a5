"""End-to-end training on several processes (torchrun): N ranks compute what one process would.

- Every rank draws the single-process run's seeded shuffle; each global batch of `batch_size` is cut
  into N contiguous shares (torch.tensor_split: sizes differ by at most one, the last batch of an
  epoch included). Not DistributedSampler: its own shuffle and padding would change the numbers.
- A rank's loss is its share's summed cross-entropy x N / global batch size: DDP averages gradients
  over ranks, so the step is the gradient of the global batch's mean loss however the batch splits.
- Trainable BatchNorm layers normalise with statistics over all ranks: torch's SyncBatchNorm on GPUs;
  on CPUs (gloo), where SyncBatchNorm refuses CPU tensors, and for BatchNorm subclasses (timm's
  BatchNormAct2d), GlooSyncBatchNorm below.
- What a model draws at random (dropout, stochastic depth) each rank draws for its own share: for such
  a model N ranks do not compute bit for bit what one does (featcache.train.loop.run_epochs).
- Training metrics are summed over ranks; the test set is cut into N contiguous shares, each image
  evaluated once, and the probabilities gathered in order (no padding duplicates).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..ranks import ProcessGroup, SingleProcess, env_world_size, local_device
from ..errors import FeatcacheError
from ..files import write_file
from ..npz import check_torch_file
from ..settings import DEFAULT_BACKBONE


class Ranks(SingleProcess):
    """One process (rank 0 of 1): the single-process loop, unchanged. The tensor operations training
    adds to featcache.ranks' questions are identities here."""

    def batch_share(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch."""
        start, stop = self.own(len(indices))
        return indices[start:stop]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        return local

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        return model

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module


class DistributedRanks(Ranks):
    """The torchrun process group, for DistributedDataParallel training."""

    def __init__(self, device: torch.device, batch_size: int):
        self.group = ProcessGroup(device, "the last epoch's checkpoint is kept: re-run with `resume`")
        self.rank, self.world_size, self.device = self.group.rank, self.group.world_size, device
        self.dist = self.group.dist
        if batch_size % self.world_size:
            self.close()
            raise self.error(f"`batch_size` {batch_size} does not divide among {self.world_size} ranks: the "
                             f"global batch stays {batch_size}, so use a multiple of {self.world_size}")

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        self.dist.all_reduce(value)
        return value

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order (shares may differ in length, or be empty)."""
        parts = [None] * self.world_size
        self.dist.all_gather_object(parts, local.cpu())
        return torch.cat([part for part in parts if part.numel()])

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """Every BatchNorm layer of the whole model synced (frozen ones are in eval mode: plain BatchNorm);
        on the whole model, so that a stage shared with a trainable part is replaced everywhere. torch's
        SyncBatchNorm on GPUs, unless the model has BatchNorm subclasses (timm's BatchNormAct2d, whose
        activation torch's conversion drops): those, and every BatchNorm on CPUs, GlooSyncBatchNorm."""
        plain = all(type(module) is nn.BatchNorm2d for module in model.modules() if isinstance(module, nn.BatchNorm2d))
        return (nn.SyncBatchNorm.convert_sync_batchnorm(model) if self.device.type == "cuda" and plain
                else GlooSyncBatchNorm.convert(model))

    def wrap(self, module: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module.module

    def on_main(self, make):
        return self.group.on_main(make)

    def gather(self, value) -> list:
        return self.group.gather(value)

    def wait_for_all(self, poll) -> None:
        self.group.wait_for_all(poll)

    def close(self) -> None:
        self.group.close()


def training_ranks(device: torch.device, batch_size: int) -> tuple[Ranks, torch.device]:
    """(ranks, this rank's device): a process group when torchrun started several processes."""
    if env_world_size() == 1:
        return Ranks(), device
    device = local_device(device)
    return DistributedRanks(device, batch_size), device


class SummedOverRanks(torch.autograd.Function):
    """A differentiable all-reduce (sum) on torch.distributed's public all_reduce: the gradient of every
    rank's input is the sum of every rank's output gradient. What the deprecated
    torch.distributed.nn.functional.all_reduce did; its suggested replacement lives in the private
    torch.distributed._functional_collectives, whose autograd support depends on the torch release."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        summed = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        return SummedOverRanks.apply(gradient)


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every rank's batch, on CPU tensors (gloo).

    Two differentiable all-reduces (SummedOverRanks): sums and counts for the mean, then squared
    deviations for the variance, the two-pass form torch's own kernel computes on one process.
    Evaluation mode is plain BatchNorm2d. It keeps the module it replaced (`replaced`): a subclass that
    does more after normalising (timm's BatchNormAct2d: dropout, activation) still does it, and
    revert_batchnorm gives it back with the trained state."""

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d) and not isinstance(child, cls):
                synced = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                synced.load_state_dict(child.state_dict())
                synced.to(next(iter(child.state_dict().values())).device)
                synced.__dict__["replaced"] = child  # not a submodule: its stale tensors get the trained state on revert
                synced.train(child.training)
                synced.requires_grad_(any(p.requires_grad for p in child.parameters()))
                setattr(module, name, synced)
            else:
                cls.convert(child)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalised = self.normalise(x)
        replaced = self.__dict__.get("replaced")
        if type(replaced) is not nn.BatchNorm2d and hasattr(replaced, "act"):  # timm's BatchNormAct2d
            normalised = replaced.act(replaced.drop(normalised))
        return normalised

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if self.momentum is None:
            raise FeatcacheError("GlooSyncBatchNorm needs a BatchNorm momentum (torchvision's ResNet has 0.1)")
        channels = x.shape[1]
        sums = SummedOverRanks.apply(torch.cat([x.sum((0, 2, 3)), x.new_full((1,), x.numel() // channels)]))
        count = sums[-1]
        if count < 2:  # as BatchNorm2d: one value per channel over all ranks has no variance
            raise FeatcacheError(f"BatchNorm in training needs more than one value per channel, got {int(count)}")
        mean = sums[:channels] / count
        centred = x - mean[None, :, None, None]
        var = SummedOverRanks.apply((centred * centred).sum((0, 2, 3))) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def revert_batchnorm(module: nn.Module) -> nn.Module:
    """Synced BatchNorm layers back to what they replaced (same state), for saving and single-process use."""
    for name, child in module.named_children():
        if isinstance(child, GlooSyncBatchNorm):
            original = child.__dict__["replaced"]
            original.load_state_dict(child.state_dict())
            original.train(child.training)
            original.requires_grad_(child.weight.requires_grad)
            setattr(module, name, original)
        elif isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(child.weight.device)
            plain.load_state_dict(child.state_dict())
            plain.train(child.training)
            plain.requires_grad_(child.weight.requires_grad)
            setattr(module, name, plain)
        else:
            revert_batchnorm(child)
    return module


CHECKPOINT = "checkpoint.pt"


def differing_options(saved: dict, current: dict) -> list[str]:
    """The names whose values differ between the options a run or checkpoint was saved with and these,
    compared as JSON holds them (tuples as lists, paths as text)."""
    saved, current = (json.loads(json.dumps(options, default=str)) for options in (saved, current))
    return sorted(key for key in {*saved, *current} if saved.get(key) != current.get(key))


CHECKPOINT_KEYS = {"epoch": int, "history": dict, "model": dict, "optimizer": dict, "generator": torch.Tensor,
                   "options": dict, "carry": dict}


MAX_NODES = 1 << 20  # values in a checkpoint's options, history and carry, counted as JSON would write them


def _small_tree(value) -> bool:
    """Whether `value`, walked as JSON would walk it (shared references counted every time), has at most
    MAX_NODES values; stops counting there."""
    pending, seen = [value], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > MAX_NODES:
            return False
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return True


HISTORY_KEYS = ("train_loss", "train_acc", "test_acc")


def _malformed_checkpoint(state, probabilities: tuple[int, int] | None) -> str | None:
    """What is wrong with a loaded checkpoint's layout (its keys, their types, a history of one number
    per epoch done, the last epoch's test probabilities of `probabilities`' shape), or None."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    missing = sorted(set(CHECKPOINT_KEYS) - set(state))
    if missing:
        return f"no {', '.join(missing)}"
    wrong = [key for key, kind in CHECKPOINT_KEYS.items() if not isinstance(state[key], kind)
             or (kind is int and isinstance(state[key], bool))]
    if wrong:
        return f"{', '.join(wrong)} of the wrong type"
    if not all(isinstance(value, torch.Tensor) for value in state["model"].values()):
        return "model holds something other than tensors"
    if not 0 <= state["epoch"] < MAX_NODES:
        return f"epoch {state['epoch']}"
    for key in ("options", "history", "carry"):  # compared and written as JSON: a pickle's shared references
        if not _small_tree(state[key]):  # (l = [l, l], repeated) would expand exponentially there
            return f"{key} holds over {MAX_NODES:,} values"
    history = state["history"]
    if set(history) != set(HISTORY_KEYS) or not all(
            isinstance(values, list) and len(values) == state["epoch"] + 1
            and all(type(value) in (int, float) for value in values)  # a diverged loss is NaN: still a history
            for values in history.values()):
        return f"its history is not {', '.join(HISTORY_KEYS)}: one number per epoch done"
    carried = state["carry"].get("probabilities")
    if set(state["carry"]) != {"probabilities"} or not isinstance(carried, torch.Tensor) \
            or not carried.is_floating_point() or (probabilities is not None and tuple(carried.shape) != probabilities):
        return f"its last test probabilities are not a {probabilities} float tensor"
    return None


class Checkpoint:
    """<run dir>/checkpoint.pt: the training state after every epoch (model, optimizer, shuffle generator,
    history, and `carry`, the caller's last-epoch results), written by rank 0 alone under a temporary
    name, then renamed. With `resume`, `load` returns it to every rank (the run directory is shared, as
    the cache folder is), refusing one saved for other options; the run removes it once written."""

    def __init__(self, folder: Path, options: dict, resume: bool, ranks: Ranks, carry: dict,
                 probabilities: tuple[int, int] | None = None):
        self.path, self.options, self.resume, self.ranks, self.carry = Path(folder) / CHECKPOINT, options, resume, ranks, carry
        self.probabilities = probabilities  # (test images, classes): the shape the carried probabilities have

    def load(self) -> dict | None:
        if not self.resume:
            return None
        if not self.path.is_file():
            raise self.ranks.error(
                f"nothing to resume: {self.path} does not exist (a run saves it after each epoch)")
        try:  # weights_only: tensors and plain containers, never code, whoever made the file
            check_torch_file(self.path)  # and nothing inflated past the file's size
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated, foreign or code-carrying file: torch raises several kinds
            raise self.ranks.error(
                f"cannot resume from {self.path}: {' '.join(str(error).split())[:200]}") from None
        malformed = _malformed_checkpoint(state, self.probabilities)
        if malformed:
            raise self.ranks.error(f"cannot resume from {self.path}: not a featcache checkpoint ({malformed})")
        differing = differing_options({"backbone": DEFAULT_BACKBONE, **state["options"]},  # saved before --backbone
                                      self.options)
        if differing:
            raise self.ranks.error(
                f"{self.path} was saved by a run with other options ({', '.join(differing)}); resume with the "
                "same options, or start afresh with `overwrite`")
        if state["epoch"] >= self.options.get("epochs", MAX_NODES):  # same options: a file that lies about its epoch
            raise self.ranks.error(f"cannot resume from {self.path}: not a featcache checkpoint (epoch "
                                   f"{state['epoch']} of {self.options.get('epochs')})")
        self.carry.update(state["carry"])
        return state

    def save(self, state: dict) -> None:
        """Rank 0 writes (call it through Ranks.on_main, so that a failure stops every rank)."""
        state = {**state, "options": self.options, "carry": dict(self.carry)}
        write_file(self.path, lambda handle: torch.save(state, handle), f"the checkpoint {self.path}",
                   "free space or choose another `out`, then `resume` from the last one")

    def remove(self) -> None:
        if self.ranks.rank == 0:
            self.path.unlink(missing_ok=True)

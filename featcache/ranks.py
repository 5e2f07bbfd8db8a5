"""Several processes (torchrun): who is rank 0, errors reported once, one process group, waits that cannot
time out. Extraction uses the group directly; training adds its tensor operations on top (featcache.train.ddp).

Extraction is a pure map over shards, so processes need to agree on only two things: which shards are
still to do (rank 0 scans the shard folder and broadcasts the list) and when all are written (a
barrier before rank 0 assembles). Ranks finish at very different times on uneven work, and NCCL's
default 10-minute timeout would kill the early ones, so both go through a gloo group with a timeout of
days; a rank that dies breaks gloo's connections and the others stop at once instead of waiting.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from .errors import FeatcacheError, ReportedElsewhere

if TYPE_CHECKING:  # importing torch here would make `import featcache` heavy
    import torch

PATIENCE = timedelta(days=7)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that reports, prints progress and writes
    results. From the environment, so that it holds before any process group exists."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def reported_once():
    """Around work on what every torchrun rank sees alike (the options, the run folder, the images): rank 0
    alone reports its FeatcacheError, the others stop quietly. Not around a rank's own work, whose
    failure only that rank may see."""
    try:
        yield
    except FeatcacheError as error:
        if is_main_process():
            raise
        raise ReportedElsewhere(str(error)) from None


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, one GPU per local rank: 'cuda' means cuda:LOCAL_RANK."""
    import torch

    if device.type == "cuda" and device.index is None:  # set_device needs an index in some torch versions
        local = int(os.environ.get("LOCAL_RANK", 0)) if env_world_size() > 1 else torch.cuda.current_device()
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' (CUDA when available, else the CPU), 'cpu', 'cuda' or 'cuda:N', checked."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise FeatcacheError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FeatcacheError(f"device {device} requested but CUDA is not available")
    return resolved


def share_range(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [start, stop) of `count` items: torch.tensor_split's cut, the
    one every share of a batch, of the test set or of the shards uses."""
    small, extra = divmod(count, world_size)
    start = rank * small + min(rank, extra)
    return start, start + small + (rank < extra)


class SingleProcess:
    """Rank 0 of 1. Every kind of work asks its ranks the same few things: this rank's share, an action
    rank 0 alone takes (on_main), an error every rank meets (error), everyone's value (gather), a wait
    for all (wait_for_all); ProcessGroup answers them for torchrun's processes."""

    rank, world_size = 0, 1

    def own(self, count: int) -> tuple[int, int]:
        """This rank's share [start, stop) of `count` items."""
        return share_range(count, self.rank, self.world_size)

    def on_main(self, make):
        """make() on rank 0; every rank returns its result, or raises the FeatcacheError it raised."""
        return make()

    def error(self, message: str) -> FeatcacheError:
        """The error for a failure every rank meets: rank 0 reports it, the others stop quietly."""
        return (FeatcacheError if self.rank == 0 else ReportedElsewhere)(message)

    def gather(self, value) -> list:
        return [value]

    def wait_for_all(self, poll) -> None:
        poll()

    def close(self) -> None:
        pass


class ProcessGroup(SingleProcess):
    """The torch.distributed process group torchrun describes: NCCL on GPUs, gloo on CPUs, plus a gloo
    group with a long timeout for featcache's own coordination."""

    def __init__(self, device: torch.device, rerun: str = "finished shards are kept: re-run the same command to resume"):
        import torch.distributed as dist

        self.rerun = rerun
        self.dist = dist
        self.owned = not dist.is_initialized()
        if self.owned:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=PATIENCE,
                                    device_id=device if device.type == "cuda" else None)
        self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=PATIENCE)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def on_main(self, make):
        """Rank 0 runs make(); every rank returns its result (broadcast), or raises the FeatcacheError it
        raised, reported by rank 0 alone."""
        payload = [None]
        if self.rank == 0:
            try:
                payload = [("ok", make())]
            except FeatcacheError as error:
                payload = [("error", str(error))]
        self._collective(lambda: self.dist.broadcast_object_list(payload, src=0, group=self.group))
        kind, value = payload[0]
        if kind == "error":
            raise self.error(value)
        return value

    def gather(self, value) -> list:
        """Every rank's `value` (picklable), in rank order."""
        values = [None] * self.world_size
        self._collective(lambda: self.dist.all_gather_object(values, value, group=self.group))
        return values

    def wait_for_all(self, poll) -> None:
        """Barrier, calling poll() about once a second while it waits (rank 0's progress bar)."""
        work = self._collective(lambda: self.dist.barrier(group=self.group, async_op=True))
        while not work.is_completed():
            poll()
            time.sleep(0.5)
        self._collective(work.wait)
        poll()

    def _collective(self, call):
        try:
            return call()
        except (RuntimeError, ValueError) as error:  # gloo: a peer closed its connections
            raise FeatcacheError(f"another rank stopped ({' '.join(str(error).split())[:200]}); {self.rerun}") from None

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


def coordinator(device: torch.device):
    """A process group when torchrun (or Slurm with its variables) started several processes."""
    return ProcessGroup(device) if env_world_size() > 1 else SingleProcess()

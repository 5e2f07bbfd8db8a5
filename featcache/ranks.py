"""Extraction on several processes: torchrun's environment, one process group, waits that cannot time out.

Extraction is a pure map over shards, so processes need to agree on only two things: which shards are
still to do (rank 0 scans the shard folder and broadcasts the list) and when all are written (a
barrier before rank 0 assembles). Ranks finish at very different times on uneven work, and NCCL's
default 10-minute timeout would kill the early ones, so both go through a gloo group with a timeout of
days; a rank that dies breaks gloo's connections and the others stop at once instead of waiting.
"""
from __future__ import annotations

import os
import time
from datetime import timedelta

import torch

from .errors import FeatcacheError, ReportedElsewhere

PATIENCE = timedelta(days=7)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, one GPU per local rank: 'cuda' means cuda:LOCAL_RANK."""
    if device.type == "cuda" and device.index is None:  # set_device needs an index in some torch versions
        local = int(os.environ.get("LOCAL_RANK", 0)) if env_world_size() > 1 else torch.cuda.current_device()
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


class SingleProcess:
    rank, world_size = 0, 1

    def share(self, make):
        return make()

    def gather(self, value) -> list:
        return [value]

    def wait_for_all(self, poll) -> None:
        poll()

    def close(self) -> None:
        pass


class ProcessGroup:
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

    def share(self, make):
        """Rank 0 runs make(); every rank returns its result, or raises the FeatcacheError it raised."""
        payload = [None]
        if self.rank == 0:
            try:
                payload = [("ok", make())]
            except FeatcacheError as error:
                payload = [("error", str(error))]
        self._collective(lambda: self.dist.broadcast_object_list(payload, src=0, group=self.group))
        kind, value = payload[0]
        if kind == "error":
            raise (FeatcacheError if self.rank == 0 else ReportedElsewhere)(value)
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

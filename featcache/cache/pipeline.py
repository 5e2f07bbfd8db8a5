"""What keeps extraction's device busy: host copies that overlap the next batch, shard commits on a
writer thread, and a clock of where the time goes (featcache.cache.writer runs them).

- HostCopies: on a GPU a batch's features are copied into pinned host memory without blocking and
  read only after their CUDA event completes, one batch later; on a CPU they are already in host memory
  and the same one-batch deferral runs (so the bookkeeping is the same code everywhere).
- ShardCommitter: shards are committed in order, on the calling thread or on one writer thread. Its
  error (a full disk) is raised on the calling thread at the next call; `on_committed` runs on the
  calling thread once a commit is durable; `drain` waits for every commit. When the run stops on an
  error or an interrupt, the shard being written is finished and the queued ones are dropped; a kill
  leaves finished shards and temporary files, which the next run removes. On a GPU up to three shards
  are in flight (two queued, one being written) where the inline commit had one.
- StageClock: seconds per stage, by host timers for host work and by CUDA events for device work,
  read once at the end (a host timer around asynchronous work measures only its queueing).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .shards import Shard, write_shard

COMMIT_THREAD = "FEATCACHE_COMMIT_THREAD"  # '1' or '0' overrides the default: a writer thread on GPUs only


def background_commits(device: torch.device) -> bool:
    """Whether shards are committed on a writer thread: on a GPU, whose work a commit would stall, not on
    a CPU, where the thread only competes with the backbone for cores (measured: no gain on 2 cores)."""
    setting = os.environ.get(COMMIT_THREAD)
    return setting == "1" if setting in ("0", "1") else device.type == "cuda"


class StageClock:
    """Seconds per named stage: host spans by perf_counter, device spans by CUDA events on a GPU (from
    the first work the host queued to the last the device finished; completed spans are folded in as
    the run goes, so a long run holds few events)."""

    FOLD_EVERY = 256  # device spans between folds

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host: dict[str, float] = defaultdict(float)
        self.events: dict[str, list] = defaultdict(list)
        self.spans = 0

    def add(self, stage: str, seconds: float) -> None:
        self.host[stage] += seconds

    @contextmanager
    def host_span(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.host[stage] += time.perf_counter() - started

    @contextmanager
    def device_span(self, stage: str):
        if not self.cuda:
            with self.host_span(stage):
                yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self.events[stage].append((start, end))
            self.spans += 1
            if self.spans % self.FOLD_EVERY == 0:
                self._fold(wait=False)

    def _fold(self, wait: bool) -> None:
        """Completed spans into the totals (all of them with `wait`, after the device has finished)."""
        if wait and self.events:
            torch.cuda.synchronize()
        for stage, spans in self.events.items():
            done = [span for span in spans if wait or span[1].query()]
            self.host[stage] += sum(start.elapsed_time(end) for start, end in done) / 1000
            self.events[stage] = [span for span in spans if span not in done]

    def seconds(self) -> dict[str, float]:
        """Every stage's seconds; on a GPU, after waiting for the device (call it on success only)."""
        if self.cuda:
            self._fold(wait=True)
        return dict(self.host)


class HostCopies:
    """Batches of features on their way to host memory, in the order they were put."""

    def __init__(self, device: torch.device, clock: StageClock):
        self.cuda, self.clock = device.type == "cuda", clock
        self.pending: deque = deque()

    def put(self, tag, features: torch.Tensor) -> None:
        """Queue one batch's features (float32) under `tag`; on a GPU the copy starts without blocking."""
        if not self.cuda:
            self.pending.append((tag, features, None))
            return
        host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
        host.copy_(features, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((tag, host, done))

    def ready(self, keep: int = 1):
        """(tag, features as a numpy array) of every queued batch but the newest `keep`, oldest first, each
        once its copy is complete: keep=1 lets the newest copy overlap the next batch; keep=0 drains."""
        while len(self.pending) > keep:
            tag, host, done = self.pending.popleft()
            if done is not None:
                with self.clock.host_span("to_host_wait"):
                    done.synchronize()
            yield tag, host.numpy()


class ShardCommitter:
    """Shards committed in the order submitted (write_shard), on this thread or on a writer thread."""

    def __init__(self, folder: Path, record: dict, background: bool, on_committed: Callable[[Shard], None],
                 clock: StageClock, depth: int = 2):
        self.folder, self.record, self.on_committed, self.clock = folder, record, on_committed, clock
        self.background, self.depth = background, depth
        self.error: BaseException | None = None
        self.abandoned = False
        self.finished: deque = deque()
        self.thread: threading.Thread | None = None  # started by the first submit, after the DataLoader's forks

    def submit(self, shard: Shard, features: np.ndarray, room_needed: int) -> None:
        """Commit `shard`: now, or queued for the writer thread (waiting while `depth` are queued)."""
        if not self.background:
            with self.clock.host_span("commit"):
                write_shard(self.folder, shard, features, self.record, room_needed)
            self.on_committed(shard)
            return
        if self.thread is None:  # at most `depth` shards wait in memory for the disk
            self.queue: queue.Queue = queue.Queue(maxsize=self.depth)
            self.thread = threading.Thread(target=self._write, name="featcache-shard-writer", daemon=True)
            self.thread.start()
        self.collect()
        with self.clock.host_span("commit_wait"):
            self.queue.put((shard, features, room_needed))

    def collect(self) -> None:
        """on_committed for every shard the writer thread has made durable; its error, if it failed."""
        error = self.error  # read first: shards finished before the failure are reported before it is raised
        while self.finished:
            self.on_committed(self.finished.popleft())
        if error is not None:
            raise error

    def drain(self) -> None:
        """Wait for every queued commit, then collect."""
        if self.thread is not None:
            with self.clock.host_span("commit_wait"):
                self.queue.join()
        self.collect()

    def close(self, abandon: bool = False) -> None:
        """Stop the writer thread: after what is queued, or with `abandon` (the run is stopping on an error
        or an interrupt) after the shard being written, the queued ones dropped."""
        if self.thread is not None and self.thread.is_alive():
            self.abandoned = abandon
            self.queue.put(None)
            self.thread.join()

    def _write(self) -> None:
        while (item := self.queue.get()) is not None:
            shard, features, room_needed = item
            try:
                if self.error is None and not self.abandoned:  # after a failure the rest are dropped
                    started = time.perf_counter()
                    write_shard(self.folder, shard, features, self.record, room_needed)
                    self.clock.add("commit_thread", time.perf_counter() - started)
                    self.finished.append(shard)
            except BaseException as error:  # raised again on the calling thread
                self.error = error
            finally:
                self.queue.task_done()
        self.queue.task_done()

"""Writing the feature cache: extraction in checksummed shards by any number of processes.

Extraction computes fixed shards of consecutive rows (featcache.cache.shards), dealt round-robin over the
processes; each shard is committed to its own file (featcache.cache.pipeline: on a writer thread on
GPUs). When all are done, rank 0 verifies them and copies them into `<name>.h5.<pid>.partial`, which is
renamed to `<name>.h5` only after the copy matches the shards' checksums: a reader never sees an
incomplete file under the final name, and a killed run loses at most the shards in flight.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from glob import escape as glob_escape
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .._version import __version__
from ..errors import FeatcacheError, warn
from ..locks import Busy, release, try_hold
from ..data.images import ViewPlan, decoded_chunks
from ..data.views import ImageBatch, make_views
from .pipeline import HostCopies, ShardCommitter, StageClock, background_commits
from ..data.datasets import Dataset
from ..ranks import coordinator, env_world_size, local_device
from .shards import (Shard, assemble, check_cut, environment_error, feature_bytes, free_bytes,
                     megabytes, plan_shards, scan_shards)
from .key import (FORMAT, FORMAT_VERSION, ExtractConfig, ExtractResult, cache_key, cache_path,
                  reusable_cache, shard_folder)

ASSEMBLY_ATTEMPTS = 3  # a shard damaged between its commit and assembly is recomputed; twice more is a bad disk


def cache_attributes(dataset: Dataset, provenance: dict, expected: dict, weights_source: str,
                     backbone_parameters: int) -> dict:
    """The file's attributes: provenance, layout, how the rows were cut (`expected`: shard size, batch
    size, threads; not in the key), where the weights were read from (`weights` is their identity,
    in the key; `weights_source` is the path, not in the key, for featcache export) and the backbone's
    parameter count (not in the key: what a head's run reports without building the network)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "featcache_version": __version__,
        "key": cache_key(provenance), "backbone": provenance["backbone"], "weights": provenance["weights"],
        "image_size": provenance["image_size"], "transform": json.dumps(provenance["transform"]),
        "views": provenance["views"], "seed": provenance["seed"], "precision": provenance["precision"],
        "classes": json.dumps(provenance["classes"]),
        "dataset": json.dumps({"name": dataset.name, "fingerprint": provenance["dataset_fingerprint"],
                               **dataset.description}),
        "shard_size": expected["shard_size"], "batch_size": expected["batch_size"], "threads": expected["threads"],
        "weights_source": weights_source, "backbone_parameters": backbone_parameters,
    }


def compute_threads(device: torch.device) -> int:
    """What a shard records of how its rows were computed beside the batch size: the intra-op thread
    count on a CPU (on Intel CPUs oneDNN rounds some convolutions differently by thread count), 0 on a
    GPU, where the CPU's threads do not touch the arithmetic."""
    return torch.get_num_threads() if device.type == "cpu" else 0


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the backbone when asked (fast on GPUs with bf16 units); fp32 otherwise (`precision`
    as CacheSpec checks it)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _batch_ranges(shards: list[Shard], batch_size: int) -> list[tuple[int, int]]:
    """Batches never cross a shard boundary, so a shard's numbers are the same whoever computes it."""
    return [(start, min(start + batch_size, shard.stop))
            for shard in shards for start in range(shard.start, shard.stop, batch_size)]


def _view_batches(split, split_name: str, ranges: list[tuple[int, int]], views: list[int], provenance: dict,
                  num_workers: int, device, clock: StageClock):
    """(batch start, view position, normalised views) for every (start, stop) range, every view; the
    views' parameters are drawn in the DataLoader workers beside the decode (ViewPlan)."""
    plan = ViewPlan(split_name, provenance["seed"], tuple(views))
    chunks = decoded_chunks(split, provenance["image_size"], ranges, num_workers, device, plan)
    while True:
        with clock.host_span("decode_wait"):
            chunk = next(chunks, None)
        if chunk is None:
            return
        if num_workers:  # else the decode ran inside decode_wait, on this thread
            clock.add("decode_in_workers", chunk.decode_seconds)
            clock.add("resize_in_workers", chunk.resize_seconds)
            clock.add("params_in_workers", chunk.params_seconds)
        indices = list(range(chunk.start, chunk.start + len(chunk.images)))
        with clock.device_span("to_device"):
            batch = ImageBatch(chunk.images, device)
        for position, view in enumerate(views):
            with clock.device_span("views"):
                made = make_views(batch, indices, view, split_name, provenance["seed"], provenance["image_size"],
                                  device, chunk.params.get(view))
            yield chunk.start, position, made


def _prepare_shards(final: Path, shards: list[Shard], expected: dict, views: int, force: bool):
    """Rank 0, before any process writes: check the room, then find the shards still to compute.

    The room counted is what this run still writes: the remaining shards and the assembled file,
    which exist side by side until assembly has verified its copy."""
    folder = shard_folder(final)
    try:
        for partial in final.parent.glob(glob_escape(final.name) + ".*.partial"):  # assemblies killed half-way
            partial.unlink(missing_ok=True)  # (under the lock: no other process is assembling)
        if force and folder.exists():
            shutil.rmtree(folder)
        if folder.exists():
            check_cut(folder, expected)
            todo, removed = scan_shards(folder, shards, expected)
        else:
            todo, removed = list(shards), []
        dim = expected["feature_dim"]
        shard_bytes, final_bytes = feature_bytes(todo, views, dim), feature_bytes(shards, views, dim)
        free = free_bytes(final.parent)
        if shard_bytes + final_bytes > free:
            raise FeatcacheError(
                f"not enough room in {final.parent}: this cache needs {megabytes(shard_bytes + final_bytes)} "
                f"({megabytes(shard_bytes)} of shards still to write, {megabytes(final_bytes)} for the assembled "
                f"file) and {megabytes(free)} is free")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise environment_error(error, final.parent, "preparing the shard folder") from None
    return todo, removed


def write_cache(dataset: Dataset, backbone: torch.nn.Module, provenance: dict, cache_dir: Path,
            batch_size: int = ExtractConfig.batch_size, shard_size: int = ExtractConfig.shard_size,
            device: torch.device | str = "cpu",
            num_workers: int = 0, force: bool = False, progress: bool = True,
            on_shard: Callable[[Shard], None] | None = None, weights_source: str = "") -> ExtractResult:
    """Run the frozen backbone once per view and cache the features; reuse or resume when possible.

    Under torchrun every process calls this with the same arguments: the shards still to do are dealt
    round-robin over the ranks, and rank 0 assembles the file when all are written. A shard found
    damaged at assembly is recomputed and assembly tried again. `on_shard(shard)` is called after each
    shard this process computed is safely on disk.
    """
    started = time.perf_counter()
    final = cache_path(Path(cache_dir), dataset, provenance)
    if not force and env_world_size() == 1 and reusable_cache(final, cache_key(provenance)):
        return ExtractResult(final, reused=True, seconds=time.perf_counter() - started)  # (ranks decide together)
    shards = plan_shards({"train": len(dataset.train), "test": len(dataset.test)}, shard_size)
    device = local_device(torch.device(device))
    expected = {"key": cache_key(provenance), "shard_size": shard_size, "batch_size": batch_size,
                "threads": compute_threads(device), "feature_dim": backbone.feature_dim}
    parameters = sum(parameter.numel() for parameter in backbone.parameters())
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    autotuning = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # autotuning could pick other kernels on other ranks
    group = coordinator(device)
    result = ExtractResult(final, reused=False, seconds=0.0, shards_total=len(shards), rank=group.rank,
                           world_size=group.world_size)
    try:
        _check_ranks_agree(group, expected["threads"])
        with one_extraction(final, group) as waited:
            result.waited_seconds = waited
            if not force and group.on_main(lambda: reusable_cache(final, expected["key"])):
                result.reused = True  # finished by the process this one waited for (or by another job's ranks)
            else:
                _extract_and_assemble(dataset, backbone, provenance, shards, expected, group, batch_size, num_workers,
                                      device, final, force, result, progress, on_shard, weights_source, parameters)
    finally:
        group.close()
        torch.backends.cudnn.benchmark = autotuning
    result.seconds = time.perf_counter() - started
    return result


WAIT_POLL_S = 2.0  # how often a waiting extraction tries the lock again: every rank takes part, briefly


@contextmanager
def one_extraction(final: Path, group):
    """Hold `<final>.lock` (rank 0, for the whole extraction): one extraction per key at a time. A
    second process waits, says so once, then goes on (finding the finished cache, or resuming from the
    shards of one that died). Under torchrun every rank takes part in each try, a quick broadcast every
    WAIT_POLL_S, so a long wait never reaches a process group's timeout. Yields the seconds waited."""
    path = final.with_name(final.name + ".lock")
    holder = [None]

    def attempt() -> bool:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            holder[0] = try_hold(path)
        except Busy:
            return False
        except OSError as error:
            raise environment_error(error, final.parent, "locking the cache") from None
        return True

    started, said = time.perf_counter(), False
    while not group.on_main(attempt):
        if group.rank == 0 and not said:
            print(f"waiting: another featcache process is extracting {final.name} (it holds {path.name}); this "
                  "one goes on when it is done", file=sys.stderr, flush=True)
        said = True  # on every rank: all take the same path after the wait
        time.sleep(WAIT_POLL_S)
    if group.rank == 0 and holder[0] is None:
        warn(f"{final.parent} has no working flock: two extractions of one cache at once could interfere")
    try:
        yield time.perf_counter() - started if said else 0.0
    except BaseException:
        folder = shard_folder(final)  # held: no other process is writing shards of this key
        if group.rank == 0 and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a run that failed before its first shard leaves nothing behind
        raise
    finally:
        if group.rank == 0:
            release(holder[0], path)


def _extract_and_assemble(dataset, backbone, provenance, shards, expected, group, batch_size, num_workers, device,
                          final, force, result, progress, on_shard, weights_source, parameters) -> None:
    """The shards still to do (this rank's share), then rank 0's assembly; damaged shards found at
    assembly are recomputed, up to ASSEMBLY_ATTEMPTS times."""
    for attempt in range(ASSEMBLY_ATTEMPTS):
        todo, removed = group.on_main(lambda: _prepare_shards(final, shards, expected, provenance["views"],
                                                            force and attempt == 0))
        if attempt == 0:
            result.shards_resumed = len(shards) - len(todo)
        result.shards_removed += removed
        _extract_shards(dataset, backbone, provenance, todo, group, batch_size, num_workers, device, final,
                        expected, result, progress, on_shard,
                        feature_bytes(shards, provenance["views"], expected["feature_dim"]))
        assembly_started = time.perf_counter()
        damaged = group.on_main(lambda: assemble(final, shards, expected, cache_attributes(
            dataset, provenance, expected, weights_source, parameters), _splits(dataset), provenance["views"]))
        result.assembly_seconds += time.perf_counter() - assembly_started
        result.shards_removed += damaged
        if not damaged:
            break
    else:
        raise FeatcacheError(f"shards in {shard_folder(final)} were damaged again after being recomputed "
                             f"({'; '.join(damaged)}): check the disk")


def _check_ranks_agree(group, threads: int) -> None:
    """Every rank computes with the same threads per process, so that the cache holds one setting's bytes
    (ranks on nodes with other OMP_NUM_THREADS would otherwise mix them); rank 0 reports a difference."""
    counts = group.gather(threads)

    def refuse():
        raise FeatcacheError(f"ranks compute with different thread counts ({', '.join(map(str, counts))} by rank), "
                             "which can round convolutions differently: set the same OMP_NUM_THREADS for every rank")

    if len(set(counts)) > 1:
        group.on_main(refuse)


def _splits(dataset: Dataset) -> dict:
    return {name: (split.labels, split.ids) for name, split in (("train", dataset.train), ("test", dataset.test))}


def _extract_shards(dataset: Dataset, backbone, provenance: dict, todo: list[Shard], group, batch_size: int,
                    num_workers: int, device: torch.device, final: Path, expected: dict, result: ExtractResult,
                    progress: bool, on_shard, assembled_bytes: int) -> None:
    """This rank's share of `todo`, then a wait for every rank; rank 0's bar counts all ranks' work."""
    views = provenance["views"]
    mine = todo[group.rank::group.world_size]
    others = {shard.name: shard for shard in todo if shard not in mine}
    folder = shard_folder(final)
    bar = tqdm(total=sum(shard.view_count(views) for shard in todo), unit="img", desc=f"extract {final.name}",
               disable=not progress or group.rank != 0, dynamic_ncols=True, delay=1)  # none for a quick failure
    last_poll = [0.0]

    def count_other_ranks_shards():
        """One listing of the shard folder at most once a second: the shards other ranks committed."""
        if group.rank != 0 or not others or time.perf_counter() - last_poll[0] < 1:
            return
        last_poll[0] = time.perf_counter()
        with os.scandir(folder) as entries:
            committed = {entry.name for entry in entries} & others.keys()
        for name in committed:
            bar.update(others.pop(name).view_count(views))

    with bar:  # closed before any error is printed, so the error has a line of its own
        _compute_shards(dataset, backbone, provenance, mine, batch_size, num_workers, device, final, expected,
                        result, bar, on_shard, count_other_ranks_shards, assembled_bytes)
        group.wait_for_all(count_other_ranks_shards)
        last_poll[0] = 0.0
        count_other_ranks_shards()
    result.images += sum(shard.view_count(views) for shard in (todo if group.rank == 0 else mine))


def _compute_shards(dataset: Dataset, backbone, provenance: dict, shards: list[Shard], batch_size: int,
                    num_workers: int, device: torch.device, final: Path, expected: dict, result: ExtractResult,
                    bar, on_shard, poll, assembled_bytes: int) -> None:
    """Compute and commit this process's shards, split by split, batch by batch: a batch's features
    reach the host while the next batch runs (HostCopies), and a finished shard is committed by the
    ShardCommitter (on a writer thread on GPUs) in the same order and bytes. For the message of a full
    disk, what is still to write is this process's uncommitted shards plus the assembled file."""
    clock = StageClock(device)
    uncommitted = list(shards)

    def committed(shard: Shard) -> None:  # on this thread, once the shard is durable
        if on_shard is not None:
            on_shard(shard)
        poll()

    committer = ShardCommitter(shard_folder(final), expected, background_commits(device), committed, clock)
    try:
        for split_name, split in (("train", dataset.train), ("test", dataset.test)):
            mine = [shard for shard in shards if shard.split == split_name]
            if mine:
                _compute_split(split_name, split, mine, backbone, provenance, batch_size, num_workers, device,
                               expected, bar, clock, committer, uncommitted, assembled_bytes)
        committer.drain()
    except BaseException:
        committer.close(abandon=True)  # the shard being written is finished, the queued ones dropped
        raise
    committer.close()
    for stage, seconds in clock.seconds().items():
        result.stage_seconds[stage] = result.stage_seconds.get(stage, 0.0) + seconds
    result.backbone_seconds = result.stage_seconds.get("forward", 0.0)
    result.commit_seconds = sum(result.stage_seconds.get(stage, 0.0) for stage in ("commit", "commit_thread"))


def _compute_split(split_name: str, split, shards: list[Shard], backbone, provenance: dict,
                   batch_size: int, num_workers: int, device, expected: dict, bar, clock: StageClock,
                   committer: ShardCommitter, uncommitted: list[Shard], assembled_bytes: int) -> None:
    views = list(range(1 + provenance["views"])) if split_name == "train" else [0]
    owner = {start: shard for shard in shards for start, _ in _batch_ranges([shard], batch_size)}
    rows: dict[Shard, np.ndarray] = {}
    copies = HostCopies(device, clock)

    def store(tag, features: np.ndarray) -> None:  # a batch's features are on the host: into its shard's rows
        start, position = tag
        shard = owner[start]
        if shard not in rows:
            rows[shard] = np.empty((len(shard), len(views), expected["feature_dim"]), dtype=np.float32)
        rows[shard][start - shard.start:start - shard.start + len(features), position] = features
        if position == len(views) - 1 and start + len(features) == shard.stop:  # the shard's last batch
            still_to_write = feature_bytes(uncommitted, provenance["views"], expected["feature_dim"]) + assembled_bytes
            done = rows.pop(shard)
            committer.submit(shard, done if split_name == "train" else done[:, 0], still_to_write)
            uncommitted.remove(shard)

    for start, position, batch in _view_batches(split, split_name, _batch_ranges(shards, batch_size), views,
                                                provenance, num_workers, device, clock):
        with torch.inference_mode(), autocast(device, provenance["precision"]):
            with clock.device_span("forward"):
                features = backbone(batch).float()
            with clock.device_span("to_host"):
                copies.put((start, position), features)
        bar.update(len(batch))
        for tag, ready in copies.ready(keep=1):
            store(tag, ready)
        committer.collect()
    for tag, ready in copies.ready(keep=0):
        store(tag, ready)

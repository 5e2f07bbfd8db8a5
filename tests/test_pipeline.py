"""Extraction's pipeline (featcache.cache.pipeline): view parameters drawn beside the decode, features
reaching the host one batch late, shards committed on a writer thread, and the clock of its stages.
On a CPU every part runs the same code as on a GPU but the CUDA calls (pinned copies, events)."""
import threading

import numpy as np
import pytest
import torch

from featcache.backbone import load_backbone
from featcache.cache.key import cache_provenance
from featcache.cache.pipeline import HostCopies, ShardCommitter, StageClock
from featcache.cache.reader import load_cache
from featcache.cache.shards import Shard
from featcache.cache.writer import write_cache as extract
from featcache.data.datasets import load_dataset
from featcache.data.images import DecodedSplit
from featcache.data.views import make_views, views_params
from featcache.errors import FeatcacheError


def test_parameters_drawn_beside_the_decode_make_the_same_views(image_folder):
    dataset = load_dataset(str(image_folder))
    decoded = DecodedSplit(dataset.train, 32)
    indices = list(range(3, 15))
    images = [decoded[i] for i in indices]
    drawn = views_params(images, indices, [0, 1, 2], "train", 7)
    assert sorted(drawn) == [1, 2]  # the clean view draws nothing
    for view in (1, 2):
        assert torch.equal(make_views(images, indices, view, "train", 7, 32, params=drawn[view]),
                           make_views(images, indices, view, "train", 7, 32))
    assert not torch.equal(make_views(images, indices, 1, "train", 7, 32, params=drawn[2]),
                           make_views(images, indices, 1, "train", 7, 32))


def test_host_copies_come_back_in_order_one_batch_late():
    copies = HostCopies(torch.device("cpu"), StageClock(torch.device("cpu")))
    seen = []
    for k in range(4):
        copies.put(("batch", k), torch.full((2, 3), float(k)))
        seen += [(tag, float(array[0, 0])) for tag, array in copies.ready(keep=1)]
        assert len(copies.pending) == 1  # the newest batch's copy overlaps the next batch's work
    seen += [(tag, float(array[0, 0])) for tag, array in copies.ready(keep=0)]
    assert seen == [(("batch", k), float(k)) for k in range(4)] and not copies.pending


def test_a_writer_threads_failure_reaches_the_calling_thread(tmp_path, monkeypatch):
    """on_committed runs on the calling thread, in order, once a shard is durable; a failed commit is
    raised there at the next call, and the shards queued after it are not written."""
    import featcache.cache.pipeline as pipeline

    written, committed, caller = [], [], threading.get_ident()

    def write_shard(folder, shard, features, record, room_needed):
        if shard.index == 2:
            raise FeatcacheError("no room left in the test's folder")
        written.append((shard.index, threading.get_ident()))

    monkeypatch.setattr(pipeline, "write_shard", write_shard)
    committer = ShardCommitter(tmp_path, {}, True, lambda shard: committed.append((shard.index, threading.get_ident())),
                               StageClock(torch.device("cpu")))
    shards = [Shard("train", k, k, k + 1) for k in range(5)]
    with pytest.raises(FeatcacheError, match="no room left"):
        for shard in shards:
            committer.submit(shard, np.zeros((1, 2)), 0)
        committer.drain()
    committer.close()
    assert [index for index, _ in written] == [0, 1] and all(thread != caller for _, thread in written)
    assert committed == [(0, caller), (1, caller)]
    assert not committer.thread.is_alive()


def test_a_writer_thread_writes_the_same_cache(image_folder, tmp_path, monkeypatch, run_cli):
    """The same shards in the same order and bytes, whichever thread commits them; the stage clock
    accounts for the work (each stage's seconds, none above the run's)."""
    dataset = load_dataset(str(image_folder))
    provenance = cache_provenance(dataset, "random", 0, 32, 2)
    results = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("FEATCACHE_COMMIT_THREAD", setting)
        results[setting] = extract(dataset, load_backbone("random", 0), provenance, tmp_path / setting, batch_size=5,
                                   shard_size=7, progress=False)  # shards of 7 rows in batches of 5: no cut aligns
    inline, threaded = (load_cache(results[setting].path) for setting in ("0", "1"))
    assert torch.equal(inline.train_features, threaded.train_features)
    assert torch.equal(inline.test_features, threaded.test_features)
    assert run_cli("verify", results["1"].path).exit_code == 0
    stages = results["1"].stage_seconds
    assert {"decode_wait", "to_device", "views", "forward", "to_host", "commit_thread", "commit_wait"} <= set(stages)
    assert "decode_in_workers" not in stages  # no workers: the decode ran inside decode_wait, counted once
    assert "commit" in results["0"].stage_seconds and "commit_thread" not in results["0"].stage_seconds
    assert all(0 <= seconds <= results["1"].seconds for seconds in stages.values())
    assert results["1"].backbone_seconds == stages["forward"] > 0


@pytest.mark.slow
def test_the_profile_script_prints_the_breakdown_and_the_old_loop_agrees():
    """scripts/profile_extraction.py at a CPU size: every stage in its table, and the pre-0.3 loop it keeps
    for the before/after run computes bit-identical features."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "scripts/profile_extraction.py", "--images", "30", "--views", "1",
                          "--image-size", "32", "--batch-size", "5", "--shard-size", "7", "--num-workers", "1",
                          "--old"], capture_output=True, text=True, timeout=300, cwd=root)
    assert run.returncode == 0, run.stderr
    assert "features bit-identical: yes" in run.stdout, run.stdout
    for stage in ("decode", "resize", "view parameters", "backbone forward", "view making",
                  "shard commits on the main thread", "assembly"):
        assert f"| {stage}" in run.stdout, run.stdout

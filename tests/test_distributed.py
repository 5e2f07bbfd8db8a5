"""Extraction under torchrun (gloo on CPU): any number of processes, one result, bit for bit, where every
process computes with the same threads (torchrun gives each rank 1: so does the one-process reference)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featcache.backbone import load_backbone
from featcache.cache.reader import load_cache
from featcache.cache.writer import write_cache as extract
from featcache.data.datasets import load_dataset
from featcache.cache.key import cache_provenance
from conftest import torch_threads

pytestmark = pytest.mark.slow


def one_process(data, cache_dir, shard_size, batch_size=3, threads=1, **kwargs):
    dataset = load_dataset(str(data))
    with torch_threads(threads):
        return extract(dataset, load_backbone("random", 0), cache_provenance(dataset, "random", 0, 32, 2), cache_dir,
                       batch_size=batch_size, shard_size=shard_size, progress=False, **kwargs)


def rank_env() -> dict:
    """This process's environment (a test's FEATCACHE_COMMIT_THREAD too) with torchrun's default of one
    thread per rank, kept whatever the suite runs with."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(processes, data, cache_dir, shard_size, batch_size=3, start_only=False):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "featcache", "extract", "--data", str(data), "--cache-dir", str(cache_dir), "--weights", "random",
               "--image-size", "32", "--views", "2", "--batch-size", str(batch_size), "--shard-size", str(shard_size)]
    return command if start_only else subprocess.run(command, capture_output=True, text=True, timeout=300,
                                                      env=rank_env())


def assert_bit_identical(path, reference_path):
    result, reference = load_cache(path), load_cache(reference_path)
    assert path.name == reference_path.name and result.key == reference.key
    assert torch.equal(result.train_features, reference.train_features)
    assert torch.equal(result.test_features, reference.test_features)


def test_two_ranks_write_the_same_bytes_as_one_process(image_folder, tmp_path, commit_thread):
    # 24 training and 12 test rows in shards of 5: neither split is a multiple of the shard size
    reference = one_process(image_folder, tmp_path / "one", shard_size=5).path
    run = torchrun(2, image_folder, tmp_path / "two", shard_size=5)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    # rank 0 alone prints: the images found, the work and its estimate, what was written
    assert len(lines) == 3 and lines[0].startswith("tiny (split folders") and lines[1].startswith("work: extraction")
    assert "over 2 processes" in lines[1] and "2 processes" in lines[2] and "84 views" in lines[2]
    assert_bit_identical(tmp_path / "two" / reference.name, reference)
    assert not list((tmp_path / "two").glob("*.shards"))


def test_fewer_shards_than_ranks(image_folder, tmp_path):
    reference = one_process(image_folder, tmp_path / "one", shard_size=64).path  # one shard per split
    run = torchrun(3, image_folder, tmp_path / "three", shard_size=64)
    assert run.returncode == 0, run.stderr
    assert_bit_identical(tmp_path / "three" / reference.name, reference)


def test_resume_where_one_ranks_shards_were_done(image_folder, tmp_path):
    reference = one_process(image_folder, tmp_path / "one", shard_size=5).path
    done = []

    def stop_after_four(shard):
        done.append(shard)
        if len(done) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        one_process(image_folder, tmp_path / "two", shard_size=5, on_shard=stop_after_four)
    [folder] = (tmp_path / "two").glob("*.shards")
    for name in ("train-000000.h5", "train-000002.h5"):  # what rank 0 of 2 had done is lost; rank 1's is kept
        (folder / name).unlink()
    run = torchrun(2, image_folder, tmp_path / "two", shard_size=5)
    assert run.returncode == 0, run.stderr
    assert "resumed: 2 of 8 shards were already done" in run.stdout
    assert_bit_identical(tmp_path / "two" / reference.name, reference)


def _rank_process(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank, found through /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PPid:\t{parent}\n" in status and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finding torchrun's workers needs /proc")
def test_a_killed_rank_loses_only_its_shard_in_flight(make_image_folder, tmp_path):
    data = make_image_folder(40, 4)  # 24 training shards: rank 1 is far from done
    reference = one_process(data, tmp_path / "one", shard_size=5).path
    command = torchrun(2, data, tmp_path / "two", shard_size=5, start_only=True)
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=rank_env())
    deadline = time.time() + 120
    while not list((tmp_path / "two").glob("*.shards/train-000001.h5")) and time.time() < deadline:
        time.sleep(0.01)
    victim = _rank_process(launcher.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert not list((tmp_path / "two").glob("*.h5"))
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env=rank_env())
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed: " in rerun.stdout  # the shards both ranks committed before the kill were kept
    assert_bit_identical(tmp_path / "two" / reference.name, reference)

"""Two extractions of one key at once: one computes, the other waits (and says so), then reuses the
finished cache, or resumes from the shards of one killed. The overlap is forced: the first process
sleeps after each committed shard (injected by a wrapper around the CLI), and the second starts once
the first has committed a shard and is still running."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from featcache.cache.reader import load_cache
from conftest import SMALL_CACHE_BATCH, SMALL_CACHE_SHARD

SLOW_CLI = """
import os, sys, time
import featcache.cache.pipeline as pipeline
write = pipeline.write_shard
def slow(*args, **kwargs):
    write(*args, **kwargs)
    time.sleep(float(os.environ.get("SHARD_DELAY", "0")))
pipeline.write_shard = slow
from featcache.cli import main
main(sys.argv[1:], prog_name="featcache")
"""
VIEWS = {"train": 3, "test": 1}  # --views 2: a training row is 1 + 2 views
TOTAL = 24 * 3 + 12  # the shared image folder: 24 training and 12 test images
PLAN = ["train-000000.h5", "train-000001.h5", "train-000002.h5", "train-000003.h5", "test-000000.h5",
        "test-000001.h5"]  # the shards in the order one process computes them (SMALL_CACHE_SHARD = 7)


def arguments(image_folder, cache_dir):
    return ["extract", "--data", str(image_folder), "--cache-dir", str(cache_dir), "--weights", "random",
            "--image-size", "32", "--views", "2", "--batch-size", str(SMALL_CACHE_BATCH),
            "--shard-size", str(SMALL_CACHE_SHARD)]


def start(image_folder, cache_dir, work, name, delay):
    args = arguments(image_folder, cache_dir)
    env = {**os.environ, "SHARD_DELAY": str(delay), "OMP_NUM_THREADS": "1"}  # one cut for both: resumable
    out, err = open(work / f"{name}.out", "w"), open(work / f"{name}.err", "w")
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args], stdout=out, stderr=err, env=env, cwd=work)


def wait_for(condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def committed(cache_dir):
    return sorted(path.name for path in cache_dir.glob("*.shards/*.h5"))


def views_of(shard_names):
    """Views in committed shards (train-000000.h5 ...): shard k of a split holds rows [7k, 7k + 7)."""
    rows = {"train": 24, "test": 12}
    total = 0
    for name in shard_names:
        split, index = re.fullmatch(r"(train|test)-(\d+)\.h5", name).groups()
        start = int(index) * SMALL_CACHE_SHARD
        total += (min(start + SMALL_CACHE_SHARD, rows[split]) - start) * VIEWS[split]
    return total


def computed(text):
    """The views a finished extract says it computed."""
    match = re.search(r"wrote \S+: (\d+) views", text) or re.search(r"(0) views computed by this process", text)
    assert match, text
    return int(match.group(1))


def test_a_second_extract_waits_then_reuses_the_cache(image_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    first = start(image_folder, cache_dir, tmp_path, "first", delay=1.0)
    wait_for(lambda: committed(cache_dir) or first.poll() is not None, "the first shard")
    assert first.poll() is None, "the first process ended before the overlap"
    second = start(image_folder, cache_dir, tmp_path, "second", delay=0)
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0, \
        (tmp_path / "first.err").read_text() + (tmp_path / "second.err").read_text()
    outputs = [(tmp_path / f"{name}.out").read_text() for name in ("first", "second")]
    assert computed(outputs[0]) + computed(outputs[1]) == TOTAL, outputs
    assert computed(outputs[1]) == 0 and "waited" in outputs[1], outputs[1]
    assert "waiting: another featcache process is extracting" in (tmp_path / "second.err").read_text()
    cache = load_cache(next(cache_dir.glob("*.h5")))  # whole: every checksum holds
    assert len(cache.train_labels) == 24 and not list(cache_dir.glob("*.shards"))


def test_killing_the_first_extract_makes_the_second_finish_the_cache(image_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    first = start(image_folder, cache_dir, tmp_path, "first", delay=1.0)
    wait_for(lambda: committed(cache_dir) or first.poll() is not None, "the first shard")
    assert first.poll() is None, "the first process ended before the overlap"
    second = start(image_folder, cache_dir, tmp_path, "second", delay=0)
    wait_for(lambda: "waiting" in (tmp_path / "second.err").read_text(), "the second to wait")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.wait(timeout=300) == 0, (tmp_path / "second.err").read_text()
    output = (tmp_path / "second.out").read_text()
    resumed = int(re.search(r"resumed: (\d+) of 6 shards", output).group(1))  # the first's, committed in order
    done_by_first = views_of(PLAN[:resumed])
    assert 0 < done_by_first < TOTAL and computed(output) + done_by_first == TOTAL, (done_by_first, output)
    assert "waited" in output, output
    cache = load_cache(next(cache_dir.glob("*.h5")))
    assert len(cache.test_labels) == 12 and not list(cache_dir.glob("*.partial"))


@pytest.mark.slow
def test_two_torchrun_jobs_of_one_key(image_folder, tmp_path):
    """Two 2-rank gloo jobs: the second job's rank 0 waits on the lock while its rank 1 polls with it
    (a broadcast every 2 s, never one long collective), then both of its ranks reuse the cache."""
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    cache_dir = tmp_path / "cache"

    def job(name, delay):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
                   *arguments(image_folder, cache_dir)]
        env = {**os.environ, "SHARD_DELAY": str(delay), "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(command, stdout=open(tmp_path / f"{name}.out", "w"),
                                stderr=open(tmp_path / f"{name}.err", "w"), env=env, cwd=tmp_path)

    first = job("first", 4.0)  # 3 shards a rank: the second job starts up (torch, gloo) meanwhile
    wait_for(lambda: committed(cache_dir) or first.poll() is not None, "the first shard")
    assert first.poll() is None, "the first job ended before the overlap"
    second = job("second", 0)
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0, \
        (tmp_path / "first.err").read_text()[-2000:] + (tmp_path / "second.err").read_text()[-2000:]
    outputs = [(tmp_path / f"{name}.out").read_text() for name in ("first", "second")]
    assert "2 processes" in outputs[0] and computed(outputs[0]) + computed(outputs[1]) == TOTAL, outputs
    assert computed(outputs[1]) == 0, outputs[1]
    assert "waiting: another featcache process" in (tmp_path / "second.err").read_text()
    assert len(load_cache(next(cache_dir.glob("*.h5"))).train_labels) == 24

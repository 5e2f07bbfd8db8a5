"""Two extractions of one key at once: one computes, the other waits (and says so), then reuses the
finished cache, or resumes from the shards of one killed. The overlap is forced, not timed: the first
process (or each rank of the first torchrun job) blocks after its first committed shard until the test
creates a "go" file, which it does once the second has said it waits (injected by a wrapper around the
CLI)."""
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from featcache.cache.reader import load_cache
from conftest import SMALL_CACHE_BATCH, SMALL_CACHE_SHARD

HELD_CLI = """
import os, sys, time
from pathlib import Path
import featcache.cache.pipeline as pipeline
write = pipeline.write_shard
def held(*args, **kwargs):
    write(*args, **kwargs)
    go = os.environ.get("GO_FILE")
    while go and not Path(go).exists():  # after each committed shard, until the test says go
        time.sleep(0.05)
pipeline.write_shard = held
from featcache.cli import main
main(sys.argv[1:], prog_name="featcache")
"""
VIEWS = {"train": 3, "test": 1}  # --views 2: a training row is 1 + 2 views
TOTAL = 24 * 3 + 12  # the shared image folder: 24 training and 12 test images
SHARD_VIEWS = 7 * 3  # a first training shard (SMALL_CACHE_SHARD = 7 rows)


def arguments(image_folder, cache_dir):
    return ["extract", "--data", str(image_folder), "--cache-dir", str(cache_dir), "--weights", "random",
            "--image-size", "32", "--views", "2", "--batch-size", str(SMALL_CACHE_BATCH),
            "--shard-size", str(SMALL_CACHE_SHARD)]


@contextmanager
def processes(tmp_path, image_folder, ranks):
    """start(name, held) runs an extract (torchrun with `ranks` > 1), killed with its workers at the
    end whatever happens."""
    started = []
    script = tmp_path / "held_cli.py"
    script.write_text(HELD_CLI)

    def start(name, held):
        launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        "--nproc-per-node", str(ranks)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one cut for every process: resumable
        env.pop("GO_FILE", None)
        if held:
            env["GO_FILE"] = str(tmp_path / "go")
        process = subprocess.Popen([*launcher, str(script), *arguments(image_folder, tmp_path / "cache")],
                                   stdout=open(tmp_path / f"{name}.out", "w"), stderr=open(tmp_path / f"{name}.err", "w"),
                                   env=env, cwd=tmp_path)
        started.append(process)
        return process
    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                kill_with_children(process.pid)
                process.wait()


def kill_with_children(pid):
    """SIGKILL a process and every process below it (torchrun starts its workers in sessions of their
    own: a process group kill would miss them), found through /proc."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(re.search(r"PPid:\t(\d+)", (entry / "status").read_text()).group(1))
        except (OSError, ValueError, AttributeError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    pending, found = [pid], []
    while pending:
        found.append(pending.pop())
        pending.extend(children.get(found[-1], []))
    for each in found:
        with suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def wait_for(condition, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def committed(cache_dir):
    return sorted(path.name for path in cache_dir.glob("*.shards/*.h5"))


def computed(text):
    """The views a finished extract says it computed."""
    match = re.search(r"wrote \S+: (\d+) views", text) or re.search(r"(0) views computed by this process", text)
    assert match, text
    return int(match.group(1))


def overlapped(tmp_path, start, ranks):
    """The first extract holding after its first shard (each rank's), the second started and waiting."""
    first = start("first", held=True)
    wait_for(lambda: len(committed(tmp_path / "cache")) >= ranks or first.poll() is not None, "the first shards")
    assert first.poll() is None, (tmp_path / "first.err").read_text()
    second = start("second", held=False)
    wait_for(lambda: "waiting" in (tmp_path / "second.err").read_text() or second.poll() is not None,
             "the second to wait")
    assert first.poll() is None and second.poll() is None, (tmp_path / "second.err").read_text()
    return first, second


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["processes", "torchrun-jobs"])
def test_a_second_extract_waits_then_reuses_the_cache(image_folder, tmp_path, ranks):
    with processes(tmp_path, image_folder, ranks) as start:
        first, second = overlapped(tmp_path, start, ranks)
        (tmp_path / "go").touch()
        assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0, \
            (tmp_path / "first.err").read_text()[-2000:] + (tmp_path / "second.err").read_text()[-2000:]
    outputs = [(tmp_path / f"{name}.out").read_text() for name in ("first", "second")]
    assert computed(outputs[0]) + computed(outputs[1]) == TOTAL, outputs
    assert computed(outputs[1]) == 0 and "waited" in outputs[1], outputs[1]
    assert "waiting: another featcache process is extracting" in (tmp_path / "second.err").read_text()
    cache = load_cache(next((tmp_path / "cache").glob("*.h5")))  # whole: every checksum holds
    assert len(cache.train_labels) == 24 and not list((tmp_path / "cache").glob("*.shards"))


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["processes", "torchrun-jobs"])
def test_killing_the_first_extract_makes_the_second_finish_the_cache(image_folder, tmp_path, ranks):
    with processes(tmp_path, image_folder, ranks) as start:
        first, second = overlapped(tmp_path, start, ranks)
        kill_with_children(first.pid)  # the launcher and every rank: the kernel drops the lock
        first.wait()
        assert second.wait(timeout=300) == 0, (tmp_path / "second.err").read_text()[-2000:]
    output = (tmp_path / "second.out").read_text()
    done_by_first = ranks * SHARD_VIEWS  # each rank of the first held after its first training shard
    assert f"resumed: {ranks} of 6 shards" in output and "waited" in output, output
    assert computed(output) + done_by_first == TOTAL, output
    cache = load_cache(next((tmp_path / "cache").glob("*.h5")))
    assert len(cache.test_labels) == 12 and not list((tmp_path / "cache").glob("*.partial"))

"""Interleaved wall times and peak RSS of `python -m featcache train-head CACHE --out R --quiet` run from
two trees (each its own code, the current python), the order alternating each round; prints each
tree's median wall time and peak RSS per cache, and the ratios new / old. Every CACHE is timed in the
same rounds, so ratios between caches (a timm cache against a ResNet-18 one) are like for like; a CACHE
written new:PATH is run by the new tree only (an old tree that cannot read it).
Usage: python scripts/train_head_timing.py OLD_TREE NEW_TREE ROUNDS CACHE [CACHE ...]"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

old, new, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
caches = [str(Path(path.removeprefix("new:")).resolve()) for path in sys.argv[4:]]
new_only = {cache for cache, given in zip(caches, sys.argv[4:]) if given.startswith("new:")}
times = {(tree, cache): [] for tree in ("old", "new") for cache in caches}
peaks = {key: [] for key in times}


def run(tree_root: str, cache: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one train-head process."""
    out = Path(tempfile.mkdtemp()) / "run"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "featcache", "train-head", cache, "--out", str(out), "--quiet"],
                               cwd=tree_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    assert os.waitstatus_to_exitcode(status) == 0, f"train-head failed in {tree_root} on {cache}"
    shutil.rmtree(out.parent)
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


for round_ in range(rounds):
    order = (("old", old), ("new", new)) if round_ % 2 == 0 else (("new", new), ("old", old))
    for cache in caches:
        for name, tree in order:
            if name == "old" and cache in new_only:
                continue
            seconds, peak = run(tree, cache)
            times[name, cache].append(seconds)
            peaks[name, cache].append(peak)
for cache in caches:
    print(Path(cache).name)
    if cache in new_only:
        print(f"  new: median {statistics.median(times['new', cache]):.3f} s over {len(times['new', cache])}; "
              f"peak RSS median {statistics.median(peaks['new', cache]):.0f} MiB")
        continue
    for name in ("old", "new"):
        values = times[name, cache]
        print(f"  {name}: median {statistics.median(values):.3f} s over {len(values)} "
              f"({', '.join(f'{v:.2f}' for v in values)}); peak RSS median {statistics.median(peaks[name, cache]):.0f} MiB")
    print(f"  new / old: time {statistics.median(times['new', cache]) / statistics.median(times['old', cache]):.3f}, "
          f"peak RSS {statistics.median(peaks['new', cache]) / statistics.median(peaks['old', cache]):.3f}")
if len(caches) > 1:
    for cache in caches[1:]:
        print(f"new tree: {Path(cache).name} / {Path(caches[0]).name}: "
              f"{statistics.median(times['new', cache]) / statistics.median(times['new', caches[0]]):.3f}")

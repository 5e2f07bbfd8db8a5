"""Interleaved wall times of `python -m featcache train-head CACHE --out R --quiet` run from two trees
(each its own code, the current python), the order alternating each round; prints each tree's median
and the ratio. Usage: python scripts/train_head_timing.py OLD_TREE NEW_TREE CACHE [ROUNDS=7]"""
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

old, new, cache = sys.argv[1], sys.argv[2], str(Path(sys.argv[3]).resolve())
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 7
times = {"old": [], "new": []}
for round_ in range(rounds):
    order = (("old", old), ("new", new)) if round_ % 2 == 0 else (("new", new), ("old", old))
    for name, tree in order:
        out = Path(tempfile.mkdtemp()) / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "featcache", "train-head", cache, "--out", str(out), "--quiet"], cwd=tree,
                       check=True, capture_output=True)
        times[name].append(time.perf_counter() - started)
        shutil.rmtree(out.parent)
for name, values in times.items():
    print(f"{name}: median {statistics.median(values):.2f} s over {len(values)} ({', '.join(f'{v:.2f}' for v in values)})")
print(f"new / old: {statistics.median(times['new']) / statistics.median(times['old']):.3f}")

"""Heads at a million images: a synthetic cache of ROWS training rows x (1 clean + 2 augmented) views
trained with `featcache train-head --max-memory 1GB` (streamed), next to the in-memory path on a cache
that fits. Each run is its own process; peak RSS is its ru_maxrss (os.wait4), the baseline an
import-only child's. Prints a markdown table (docs/scale.md).

    python scripts/scale_heads.py /tmp/scale            # 1,000,000 rows: 6.1 GB of features
    python scripts/scale_heads.py /tmp/scale --rows 100000 --fits 20000
"""
import argparse
import json
import os
import subprocess
import sys
import time

from featcache.cache.synthetic import write_synthetic_cache

BASELINE = "import featcache, torch, h5py, featcache.train.heads, featcache.cache.streaming"


def child_run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one featcache process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({child.returncode})")
    return time.perf_counter() - started, usage.ru_maxrss * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--fits", type=int, default=100_000, help="rows of the cache the in-memory path trains on")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--max-memory", default="1GB")
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    caches = {}
    for rows in (args.fits, args.rows):
        path = os.path.join(args.folder, f"synthetic-{rows}.h5")
        if not os.path.exists(path):
            started = time.perf_counter()
            write_synthetic_cache(path, rows, views=2, test_rows=3000)
            print(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s")
        caches[rows] = path
    _, baseline = child_run(["-c", BASELINE])
    table = []
    for rows, budget in ((args.fits, None), (args.rows, args.max_memory)):
        out = os.path.join(args.folder, f"run-{rows}")
        command = ["-m", "featcache", "train-head", caches[rows], "--epochs", str(args.epochs), "--out", out,
                   "--overwrite", "--quiet"] + (["--max-memory", budget] if budget else [])
        wall, peak = child_run(command)
        with open(os.path.join(out, "history.json")) as handle:
            history = json.load(handle)
        train_s = history["wall_time_s"]
        table.append({"rows": rows, "path": "streamed" if history["config"]["streamed"] else "in memory",
                      "max_memory": budget or "default", "peak_rss_gb": peak / 1e9,
                      "above_baseline_gb": (peak - baseline) / 1e9, "process_s": wall, "train_s": train_s,
                      "rows_per_s": rows * args.epochs / train_s, "test_acc": history["test_acc"][-1]})
    print(f"baseline (imports only): {baseline / 1e9:.2f} GB peak RSS")
    columns = list(table[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in table:
        print("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()

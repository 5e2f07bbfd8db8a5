"""Interleaved cold extractions from two trees (each its own code, the current python) on one image
folder: random weights, 64 px, V=4, batch 64, shards of 256, a fresh cache each run, the order
alternating each round; prints each tree's median seconds and the throughput ratio.
Usage: python scripts/extract_timing.py OLD_TREE NEW_TREE DATA [ROUNDS=10]"""
import json
import statistics
import subprocess
import sys

old, new, data = sys.argv[1:4]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
RUN = r'''
import json, sys, tempfile
from pathlib import Path
from featcache.backbone import load_backbone
from featcache.cache.key import cache_provenance
from featcache.cache.writer import write_cache as extract
from featcache.data.datasets import load_dataset
dataset = load_dataset(sys.argv[1])
with tempfile.TemporaryDirectory() as folder:
    result = extract(dataset, load_backbone("random", 0), cache_provenance(dataset, "random", 0, 64, 4), Path(folder),
                     batch_size=64, shard_size=256, progress=False)
print(json.dumps({"seconds": result.seconds, "forward": result.backbone_seconds}))
'''
seconds = {"old": [], "new": []}
for round_ in range(rounds):
    for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
        tree = old if name == "old" else new
        done = subprocess.run([sys.executable, "-c", RUN, data], cwd=tree, env={"PYTHONPATH": tree, "PATH": "/usr/bin"},
                              capture_output=True, text=True, check=True)
        seconds[name].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
for name, values in seconds.items():
    print(f"{name}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
print(f"new / old throughput: {statistics.median(seconds['old']) / statistics.median(seconds['new']):.3f}")

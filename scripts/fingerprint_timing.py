"""Times finding a cache (CacheSpec.locate: listing, fingerprint, key) on a synthetic folder of tiny files,
cold (every file hashed) and warm (the stat table answers): the figures in docs/cache.md.

    python scripts/fingerprint_timing.py /tmp/f60k 20000     # 3 classes x 20,000 training files
    python scripts/fingerprint_timing.py /tmp/f1m 333330     # about a million
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import featcache


def make_folder(root: str, per_class: int) -> None:
    """train/{a,b,c}/ with `per_class` tiny files each and test/ with 10: contents only need to differ."""
    for split, count in (("train", per_class), ("test", 10)):
        for name in ("a", "b", "c"):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                with open(os.path.join(folder, f"{i:07d}.png"), "wb") as handle:
                    handle.write(b"x%d" % i)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("per_class", type=int)
    args = parser.parse_args()
    if not os.path.isdir(args.folder):
        make_folder(args.folder, args.per_class)
        time.sleep(2.5)  # past the racily-clean window, as files on a real disk are
    cache_dir = tempfile.mkdtemp()
    try:
        spec = featcache.CacheSpec(featcache.DataSpec(args.folder, per_class=None), weights="random", image_size=64,
                                   views=2, cache_dir=cache_dir)
        for label in ("cold", "warm", "warm"):
            started = time.perf_counter()
            spec.locate()
            print(f"{label}: locate {time.perf_counter() - started:.2f} s")
        whole = ("import featcache; featcache.CacheSpec(featcache.DataSpec(%r, per_class=None), weights='random', "
                 "image_size=64, views=2, cache_dir=%r).locate()" % (args.folder, cache_dir))
        for _ in range(2):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", whole], check=True)
            print(f"warm, whole process (start Python, import featcache, locate): {time.perf_counter() - started:.2f} s")
    finally:
        shutil.rmtree(cache_dir)


if __name__ == "__main__":
    main()

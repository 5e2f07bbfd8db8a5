#!/usr/bin/env bash
# Reproduces docs/performance.md: featcache bench at the reference size and at 224 px, and
# train-head's wall time on the reference cache (median of 5). About 10 minutes on 2 CPU cores.
# Run from the repository root with ../shared present, after scripts/results.sh (for the cache).
set -euo pipefail
DATA=../shared/data/cifar10-catdoghorse
FAR=../shared/weights/resnet18-cifar7-64px.pth
featcache bench --data "$DATA" --weights "$FAR" --image-size 64 --per-class 500 --test-per-class 1000 \
    --out runs/bench-64px-reference                                    # runs/bench-64px-reference/bench.md
featcache bench --data "$DATA" --weights "$FAR" --image-size 224 --per-class 40 --test-per-class 40 --views 4 \
    --no-end-to-end --out runs/bench-224px-throughput                  # runs/bench-224px-throughput/bench.md
CACHE=$(python -c "import featcache; print(featcache.CacheSpec(featcache.DataSpec('$DATA'), image_size=64, views=15,
    weights='../shared/weights/resnet18-cifar10src-64px.pth').locate()[2])")   # the experiment's cache
for run in 1 2 3 4 5; do
    /usr/bin/time -f "%e s" featcache train-head "$CACHE" --out runs/train-head-timing --overwrite --quiet
done 2>&1 | grep " s$" | sort -n | sed -n 3p | sed 's/^/train-head wall time, median of 5: /'

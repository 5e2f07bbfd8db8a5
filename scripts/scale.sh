#!/usr/bin/env bash
# Reproduces docs/scale.md's measurements on this machine: finding a cache among 60,000 and
# 1,000,000 tiny files, heads on a synthetic 1,000,000-row cache streamed under 1GB, streamed against
# in-memory heads on the reference cache, and decoding once against per batch. About 25 minutes on
# 2 CPU cores (writing a million files takes most of it) and 8 GB of free disk under $SCALE.
# Run from the repository root with ../shared present.
set -euo pipefail
SCALE=${SCALE:-/tmp/featcache-scale}
DATA=../shared/data/cifar10-catdoghorse
NEAR=../shared/weights/resnet18-cifar10src-64px.pth
python scripts/fingerprint_timing.py "$SCALE/files-60k" 20000
python scripts/fingerprint_timing.py "$SCALE/files-1m" 333330
python scripts/scale_heads.py "$SCALE/heads"
CACHE=$(python -c "import featcache; print(featcache.extract(featcache.CacheSpec(featcache.DataSpec('$DATA'),
    weights='$NEAR', image_size=64, views=15), progress=False).path)")   # the experiment's cache (found, or made)
python scripts/streamed_reference.py "$CACHE"
python scripts/decode_timing.py "$DATA" "$NEAR"

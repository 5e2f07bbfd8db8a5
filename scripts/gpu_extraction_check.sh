#!/usr/bin/env bash
# The GPU figures issue 20 asks for, in one run on a machine with CUDA (from a checkout: no install,
# no network, random weights, synthetic images made there). About 10 minutes on an H200, start-up included.
#   bash scripts/gpu_extraction_check.sh [WORKERS=12]
# Prints, for 10,000 32x32 PNGs and 3,000 500x375 JPEGs (landscape and portrait), 10 views each, 224 px,
# batch 256: the stage breakdown, extraction / bare forward in fp32 and bf16, and the old pipeline side by
# side in fp32 with its bit-identity check. Cold runs: each extraction writes a fresh cache.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-12}
COMMON="--views 10 --image-size 224 --batch-size 256 --shard-size 1024 --num-workers $WORKERS --device cuda"
python3 scripts/profile_extraction.py --images 10000 $COMMON --precision fp32 --old --rounds 2
python3 scripts/profile_extraction.py --images 10000 $COMMON --precision bf16
python3 scripts/profile_extraction.py --images 3000 --jpeg $COMMON --precision fp32 --old
python3 scripts/profile_extraction.py --images 3000 --jpeg $COMMON --precision bf16

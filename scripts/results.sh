#!/usr/bin/env bash
# Reproduces docs/results.md: the three-way experiment with the near- and the far-transfer
# stand-in weights, a sweep and the logistic-regression probe on the far-transfer cache, then the
# three-seed experiment, 20 cached heads and the few-shot curves on the near-transfer cache.
# About 55 minutes on 2 CPU cores. Run from the repository root with ../shared present.
set -euo pipefail
DATA=../shared/data/cifar10-catdoghorse
WEIGHTS=../shared/weights
featcache experiment --data "$DATA" --weights "$WEIGHTS/resnet18-cifar10src-64px.pth" --image-size 64 \
    --out runs/reference --overwrite                                   # runs/reference/summary.md
featcache experiment --data "$DATA" --weights "$WEIGHTS/resnet18-cifar7-64px.pth" --image-size 64 \
    --out runs/reference-cifar7-64px --overwrite                       # runs/reference-cifar7-64px/summary.md
FAR=(--data "$DATA" --weights "$WEIGHTS/resnet18-cifar7-64px.pth" --image-size 64 --views 15)
featcache train-head "${FAR[@]}" --sweep --out runs/fe-cifar7-sweep --overwrite --quiet
featcache train-head "${FAR[@]}" --head logreg --out runs/fe-cifar7-logreg --overwrite --quiet
NEAR=(--data "$DATA" --weights "$WEIGHTS/resnet18-cifar10src-64px.pth" --image-size 64)
featcache experiment "${NEAR[@]}" --seeds 3 --out runs/reference-seeds --overwrite --quiet   # runs/reference-seeds/summary.md
featcache train-head "${NEAR[@]}" --views 15 --seeds 0-19 --out runs/fe-seeds20 --overwrite
CACHE=$(python -c "import featcache; print(featcache.CacheSpec(featcache.DataSpec('$DATA'), image_size=64, views=15,
    weights='$WEIGHTS/resnet18-cifar10src-64px.pth').locate()[2])")
featcache fewshot "$CACHE" --shots 1,2,5,10,20,50 --trials 20 --out runs/fewshot                # runs/fewshot/fewshot.md

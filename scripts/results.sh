#!/usr/bin/env bash
# Reproduces the README's "Results": the three-way experiment with the near- and the far-transfer
# stand-in weights, then a sweep and the logistic-regression probe on the far-transfer cache.
# About 25 minutes on 2 CPU cores. Run from the repository root with ../shared present.
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

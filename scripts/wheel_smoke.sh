#!/usr/bin/env bash
# Usage: bash scripts/wheel_smoke.sh WORK_FOLDER
# What a user meets after `pip install featcache` (a wheel, not an editable checkout): run from WORK_FOLDER,
# outside the checkout, on tiny synthetic images with random weights, the commands a first session uses.
# .ci/run calls it after installing the built wheel. Exit status non-zero on the first failure.
set -euo pipefail
WORK=$1
mkdir -p "$WORK" && cd "$WORK"
python - <<'PY'
import sys
from pathlib import Path
import featcache
installed = Path(featcache.__file__).resolve()
assert "site-packages" in installed.parts, f"featcache imported from {installed}, not from an installed wheel"
print(f"featcache {featcache.__version__} from {installed.parent}")
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, count in (("train", 6), ("test", 3)):
    for label, name in enumerate(("ant", "bee", "cow")):
        folder = Path("data") / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(60 + 120 * (np.arange(3) == label) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
PY
common=(--data data --weights random --image-size 32)
featcache --help > /dev/null
featcache extract "${common[@]}" --views 2 --cache-dir cache
featcache train-head --quiet "${common[@]}" --views 2 --cache-dir cache --epochs 2 --out runs/fe
featcache finetune --quiet "${common[@]}" --epochs 1 --out runs/ft
featcache export runs/fe --out fe.pt2
featcache predict fe.pt2 data/test --out predictions.csv --quiet
python -c "import csv; rows = list(csv.DictReader(open('predictions.csv'))); assert len(rows) == 9, rows; print(len(rows), 'predictions')"
echo "wheel smoke: every command ran from $(pwd)"

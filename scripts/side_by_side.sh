#!/usr/bin/env bash
# Usage: bash scripts/side_by_side.sh OLD_TREE NEW_TREE WORK_FOLDER  (e.g. OLD_TREE a git worktree at an older commit)
# Runs the same commands from two trees (each its own code, cache dir and out) with the current python and
# compares what they write: the cache file name, every run's histories, predictions.npz and other history
# fields (wall times, dates and paths aside), and every command's --help. For "no behaviour change" checks.
set -euo pipefail
OLD=$1; NEW=$2; WORK=$3
DATA=${DATA:-$(realpath ../shared/data/cifar10-catdoghorse)}; WEIGHTS=${WEIGHTS:-$(realpath ../shared/weights/resnet18-cifar10src-64px.pth)}

for tree in old new; do
  [ "${COMPARE_ONLY:-}" = 1 ] && break  # outputs already in WORK: compare them again
  root=$([ $tree = old ] && echo $OLD || echo $NEW)
  out=$WORK/$tree; mkdir -p $out
  (cd $root && python -m featcache experiment --data $DATA --weights $WEIGHTS --image-size 64 --per-class 100 \
      --test-per-class 100 --epochs 3 --cache-dir $out/cache --out $out/exp --quiet > $out/experiment.txt)
  cache=$(ls $out/cache/*.h5)
  (cd $root && for head in "--sweep" "--head logreg" "--head knn" "--seeds 0-4"; do
     name=$(echo $head | tr -d ' -'); python -m featcache train-head $cache $head --out $out/$name --quiet > $out/$name.txt; done)
  (cd $root && for command in "" extract verify train-head finetune scratch compare export predict fewshot inspect experiment bench; do
     python -m featcache $command --help; done > $out/help.txt)
  basename $cache > $out/cache-name.txt
done
python - "$WORK" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
work = Path(sys.argv[1])
old, new = work / "old", work / "new"
assert (old / "cache-name.txt").read_text() == (new / "cache-name.txt").read_text(), "cache names differ"
print("cache file name:", (old / "cache-name.txt").read_text().strip(), "(same in both trees)")
runs = [p.parent.relative_to(old) for p in sorted(old.rglob("history.json"))]
for run in runs:
    a, b = (json.loads((tree / run / "history.json").read_text()) for tree in (old, new))
    same = all(a[k] == b[k] for k in ("train_loss", "train_acc", "test_acc"))
    pa, pb = (np.load(tree / run / "predictions.npz") for tree in (old, new))
    same_predictions = all(np.array_equal(pa[k], pb[k]) for k in ("ids", "labels", "probabilities"))
    ignore = {"wall_time_s", "created", "run_dir", "extract_wall_time_s"}
    def fields(record, tree, prefix=""):  # flattened, paths of the tree as TREE
        flat = {}
        for key, value in record.items():
            if isinstance(value, dict):
                flat.update(fields(value, tree, f"{prefix}{key}."))
            elif key not in ignore:
                flat[prefix + key] = json.dumps(value).replace(str(tree), "TREE")
        return flat
    fa, fb = fields(a, old), fields(b, new)
    differing = sorted(key for key in {*fa, *fb} if fa.get(key) != fb.get(key))
    print(f"{str(run):40s} histories {'equal' if same else 'DIFFER'}, predictions.npz {'equal' if same_predictions else 'DIFFER'}, "
          f"other fields {'equal' if not differing else 'differ: ' + ', '.join(differing)}")
print("--help of every command:", "identical" if (old / "help.txt").read_text() == (new / "help.txt").read_text() else "DIFFERS")
PY

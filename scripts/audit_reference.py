"""How well `featcache audit` finds planted problems (docs/audit.md): a copy of an image folder in split
folders with a share of training labels flipped at random (seeded) and test images copied into training,
re-encoded at another size; extracted with the given weights, audited, and scored against what was planted.

    python scripts/audit_reference.py ../shared/data/cifar10-catdoghorse WORK \
        --weights ../shared/weights/resnet18-cifar10src-64px.pth --image-size 64

Prints the probe's out-of-fold accuracy, precision and recall of the flipped images among the flagged and
among the top 5%, where the leaked copies rank among the train-test pairs, and the audit's wall time.

With --act, it then acts on the audit as a user would: a linear head (the reference settings: 15 epochs,
batch 32, Adam 1e-3) trained on the cache, its mistakes shown by `audit --run`; the top 5% of the
label-issue list and the train-test pairs marked exact or near written to one CSV with a path column,
given back as `--exclude`; the cache extracted again without them and the same head trained on it; both
heads compared on the same test images (a paired bootstrap, featcache.compare).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from PIL import Image

import featcache
from featcache.csvfiles import csv_text


def plant(source: Path, data: Path, flip: float, leaks: int, size: int, seed: int) -> dict:
    """Copy `source` to `data`, move `flip` of the training images to another class folder and copy `leaks`
    test images into training at `size` x `size` pixels (PNG): what was planted, by id."""
    shutil.copytree(source, data)
    rng = random.Random(seed)
    classes = sorted(path.name for path in (data / "train").iterdir() if path.is_dir())
    train = sorted(path for name in classes for path in (data / "train" / name).iterdir())
    flipped = []
    for path in rng.sample(train, int(flip * len(train))):
        other = rng.choice([name for name in classes if name != path.parent.name])
        target = data / "train" / other / f"flipped-{path.parent.name}-{path.name}"
        shutil.move(path, target)
        flipped.append(target.relative_to(data).as_posix())
    test = sorted(path for name in classes for path in (data / "test" / name).iterdir())
    leaked = []
    for path in rng.sample(test, leaks):
        with Image.open(path) as image:
            copy = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        target = data / "train" / path.parent.name / f"leaked-{path.stem}.png"
        copy.save(target)
        leaked.append((path.relative_to(data).as_posix(), target.relative_to(data).as_posix()))
    return {"flipped": flipped, "leaked": leaked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("work")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--leaks", type=int, default=30)
    parser.add_argument("--leak-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--act", action="store_true", help="train a head, exclude what the audit found, train again")
    args = parser.parse_args()
    work = Path(args.work)
    planted = plant(Path(args.source), work / "data", args.flip, args.leaks, args.leak_size, args.seed)
    spec = featcache.CacheSpec(featcache.DataSpec(str(work / "data")), weights=args.weights,
                               image_size=args.image_size, views=1, cache_dir=work / "cache")
    path = featcache.extract(spec, progress=False).path
    runs = []
    if args.act:
        featcache.train_head(path, out=work / "head", overwrite=True)
        runs = [work / "head"]
    started = time.perf_counter()
    result = featcache.audit(path, work / "audit", runs=runs)
    seconds = time.perf_counter() - started
    flipped = set(planted["flipped"])
    flagged = [row["path"] for row in result["label_issues"]]
    found = [name for name in flagged if name in flipped]
    top = flagged[:round(0.05 * result["summary"]["images"]["train"])]
    pairs = [row for row in result["duplicates"] if row["scope"] == "train-test"]
    leaked = set(planted["leaked"])
    ranks = [rank for rank, row in enumerate(pairs, start=1) if (row["a"], row["b"]) in leaked]
    others = [row["cosine"] for row in pairs if (row["a"], row["b"]) not in leaked]
    acted = act(work, spec, result, flipped, leaked) if args.act else None
    print(json.dumps({
        "training_images": result["summary"]["images"]["train"], "flipped": len(flipped),
        "probe": result["summary"]["probe"]["out_of_fold_accuracy"], "C": result["summary"]["probe"]["C"],
        "flagged": len(flagged), "precision": len(found) / max(len(flagged), 1), "recall": len(found) / len(flipped),
        "top_5_percent": len(top), "top_5_percent_precision": sum(name in flipped for name in top) / max(len(top), 1),
        "leaked": len(leaked), "leaked_found": len(ranks), "leaked_ranks": ranks,
        "leaked_min_cosine": min(pairs[rank - 1]["cosine"] for rank in ranks) if ranks else None,
        "best_other_train_test_cosine": max(others) if others else None,
        "near_pairs": result["summary"]["duplicates"]["near"], "audit_seconds": seconds,
        "run": result["summary"]["runs"], "most_confused": result["most_confused"][:3], "acted": acted}, indent=1))


def act(work: Path, spec, result: dict, flipped: set, leaked: set) -> dict:
    """Exclude the top 5% of the label issues and the exact or near train-test pairs, extract again, train
    the same head, compare."""
    top = result["label_issues"][:round(0.05 * result["summary"]["images"]["train"])]
    leaks = [row for row in result["duplicates"] if row["scope"] == "train-test" and row["kind"] != "similar"]
    chosen = work / "exclude.csv"
    chosen.write_text(csv_text(["path"], top + leaks))
    excluded = featcache.CacheSpec(featcache.DataSpec(spec.data.data, exclude=chosen), weights=spec.weights,
                                   image_size=spec.image_size, views=spec.views, cache_dir=spec.cache_dir)
    featcache.train_head(featcache.extract(excluded, progress=False).path, out=work / "head-excluded",
                         overwrite=True)
    comparison = featcache.compare([work / "head", work / "head-excluded"], work / "compare")
    names = {row["path"] for row in top + leaks}
    return {"excluded": len(names), "flips_excluded": len(names & flipped),
            "leaks_excluded": len(names & {copy for _, copy in leaked}),
            "before": comparison["rows"][0]["final_test_acc"], "after": comparison["rows"][1]["final_test_acc"],
            "paired": comparison["comparisons"]}


if __name__ == "__main__":
    main()

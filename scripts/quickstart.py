"""featcache from Python: extract, a cached head, a short fine-tuning, a comparison (the README's API section).

Defaults: the reference task and the near-transfer stand-in weights at 64 px (run from the repository
root, with ../shared present). The test suite runs it on synthetic images with --weights random.
"""
import argparse
from pathlib import Path

import featcache

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="../shared/data/cifar10-catdoghorse")
parser.add_argument("--weights", default="../shared/weights/resnet18-cifar10src-64px.pth")
parser.add_argument("--image-size", type=int, default=64)
parser.add_argument("--per-class", type=int, default=500)
parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
args = parser.parse_args()

# One spec names everything the features depend on: the backbone and the cache key both come from it.
data = featcache.DataSpec(args.data, per_class=args.per_class)
spec = featcache.CacheSpec(data, weights=args.weights, image_size=args.image_size, views=15, cache_dir=args.cache_dir)
extracted = featcache.extract(spec)  # finds the cache, or extracts it (in resumable, checksummed shards)
cache = featcache.open_cache(extracted.path)  # tensors, every byte checked against its sha256
head = featcache.train_head(cache, epochs=15, out=args.out / "feature-extraction", overwrite=True)
# head.model is the trained nn.Linear(512, C); cache.dataset("train", view=1) feeds your own DataLoader

images = featcache.load_images(data, image_size=args.image_size)  # decoded once, for end-to-end training
tuned = featcache.finetune(images, args.weights, epochs=1, out=args.out / "fine-tuning", overwrite=True)

comparison = featcache.compare([head.path, tuned.path], out=args.out)
for run in (head, tuned):
    print(f"{run.approach}: final test accuracy {run.final_test_acc:.4f}")
print(f"plot {comparison['png']}, table {comparison['markdown']}")

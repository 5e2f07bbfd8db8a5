"""The time guide of docs/own-images.md: extraction and fine-tuning images/s of ResNet-18 and
EfficientNet-Lite0 at 64 and 224 px on this machine, each beside featcache's own estimate (the warm-up
that `featcache extract`, `finetune` and `experiment` print before work: featcache/estimate.py).

    python scripts/time_guide.py FOLDER --resnet-weights W.pth --lite0-weights L.pth [--per-class 100]

FOLDER is a folder of class folders (a user's own images). Each configuration extracts a fresh cache
(--views, default 1) and fine-tunes for one epoch on the first --per-class training images of each class and the
first --test-per-class test images; it prints one Markdown row per configuration: the estimate, the
real time, their ratio, and the real images/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import featcache
from featcache.api.end_to_end import training_estimate
from featcache.backbone import load_backbone
from featcache.estimate import extraction
from featcache.ranks import resolve_device
from featcache.train.config import FinetuneConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--resnet-weights", required=True)
    parser.add_argument("--lite0-weights", required=True)
    parser.add_argument("--per-class", default="100", help="training images per class, or 'all'")
    parser.add_argument("--test-per-class", type=int, default=30, help="test images per class (0: all)")
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--views", type=int, default=1, help="augmented views extracted")
    parser.add_argument("--backbones", default="ResNet-18,EfficientNet-Lite0")
    args = parser.parse_args()
    data = featcache.DataSpec(args.folder, per_class=args.per_class, test_per_class=args.test_per_class or None)
    backbones = (("ResNet-18", "resnet18", args.resnet_weights),
                 ("EfficientNet-Lite0", "timm:tf_efficientnet_lite0", args.lite0_weights))
    print("| backbone | image size | work | estimated s | real s | real / estimated | real images/s |")
    print("|---|---|---|---|---|---|---|")
    for label, backbone, weights in (entry for entry in backbones if entry[0] in args.backbones.split(",")):
        for size in map(int, args.sizes.split(",")):
            with tempfile.TemporaryDirectory() as scratch:
                spec = featcache.CacheSpec(data, weights=weights, image_size=size, views=args.views, cache_dir=Path(scratch),
                                           backbone=backbone)
                dataset, _, _ = spec.locate()
                device = resolve_device("auto")
                guess = extraction(dataset.train, spec.views, len(dataset.test),
                                   load_backbone(weights, 0, backbone), size, 0, device,
                                   featcache.ExtractConfig().batch_size)
                result = featcache.extract(spec, progress=False)
                views = len(dataset.train) * (1 + args.views) + len(dataset.test)
                row(label, size, f"extraction, {views} views", guess.seconds, result.seconds, views)
                images = featcache.load_images(data, image_size=size)
                config = FinetuneConfig(weights=weights, backbone=backbone, epochs=1, image_size=size)
                guess = training_estimate(config, images)
                started = time.perf_counter()
                featcache.finetune(images, config=config, out=Path(scratch) / "ft")
                seconds = time.perf_counter() - started
                count = len(images.train_labels)
                row(label, size, f"fine-tuning, 1 epoch of {count} + {len(images.test_labels)} test", guess.seconds,
                    seconds, count)


def row(label: str, size: int, work: str, estimated: float, real: float, images: int) -> None:
    print(f"| {label} | {size} | {work} | {estimated:.1f} | {real:.1f} | {real / estimated:.2f} | "
          f"{images / real:.1f} |", flush=True)


if __name__ == "__main__":
    main()

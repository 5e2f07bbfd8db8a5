"""Where extraction's time goes, in one command, on synthetic images: featcache's pipeline stage by stage
(featcache.cache.pipeline.StageClock: CUDA events for device work on a GPU, host timers on a CPU),
against the bare backbone forward timed the same way (same batch, channels-last, many batches), and
with --old against the pipeline before 0.3 (scripts/old_pipeline.py: parameters drawn on the main
thread, blocking copies, commits inline), whose features must be bit-identical.

    python scripts/profile_extraction.py                      # CPU-sized: 300 32x32 PNGs, 64 px, V=4
    python scripts/profile_extraction.py --images 10000 --views 10 --image-size 224 --batch-size 256 \
        --num-workers 12 --precision bf16 --old               # the GPU run: 110,000 views
    python scripts/profile_extraction.py --jpeg ...           # 500x375 JPEGs, landscape and portrait

Runs from a checkout (PYTHONPATH=.) with random weights; nothing is downloaded.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
from featcache.backbone import bare_forward_throughput, load_backbone  # noqa: E402
from featcache.cache.checksums import verify_cache  # noqa: E402
from featcache.cache.key import cache_provenance  # noqa: E402
from featcache.cache.reader import load_cache  # noqa: E402
from featcache.cache.writer import autocast, write_cache as extract  # noqa: E402
from featcache.data.datasets import load_dataset  # noqa: E402
from featcache.ranks import resolve_device  # noqa: E402
from old_pipeline import old_pipeline  # noqa: E402  (beside this script)

STAGES = {  # in the order a batch meets them
    "decode_wait": "main thread waiting for decoded chunks (with no workers: the decode itself)",
    "decode_in_workers": "decode (DataLoader workers, in parallel)",
    "resize_in_workers": "resize (DataLoader workers, in parallel)",
    "params_in_workers": "view parameters (DataLoader workers, in parallel)",
    "to_device": "host-to-device copy and float conversion",
    "views": "view making (crop, flip, jitter, normalise)",
    "forward": "backbone forward",
    "to_host": "device-to-host copy",
    "to_host_wait": "main thread waiting for a device-to-host copy",
    "commit": "shard commits on the main thread",
    "commit_wait": "main thread waiting for the writer thread",
    "commit_thread": "shard commits on the writer thread (in parallel)",
}


def synthetic_images(root: Path, count: int, jpeg: bool) -> Path:
    """`count` training images over 3 classes and a tenth as many test images: 32x32 PNGs, or 500x375
    JPEGs alternating landscape and portrait."""
    rng = np.random.default_rng(0)
    for split, total in (("train", count), ("test", max(3, count // 10))):
        for k in range(total):
            label = k % 3
            width, height = ((500, 375) if k % 2 else (375, 500)) if jpeg else (32, 32)
            pixels = np.clip(rng.normal(60 + 60 * label, 40, (height, width, 3)), 0, 255).astype(np.uint8)
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{k:06d}.{'jpg' if jpeg else 'png'}")
    return root


def bare_forward(backbone, batch: torch.Tensor, batches: int) -> float:
    """Images/s of the backbone alone on one channels-last batch, after a warm-up: on a GPU between CUDA
    events (features left on the device), else featcache.backbone's host-timed loop."""
    if batch.device.type != "cuda":
        return bare_forward_throughput(backbone, batch, batches)
    with torch.inference_mode():
        backbone(batch)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batches):
            backbone(batch)
        end.record()
        end.synchronize()
    return batches * len(batch) / (start.elapsed_time(end) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="training images (test: a tenth)")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--jpeg", action="store_true", help="500x375 JPEGs instead of 32x32 PNGs")
    parser.add_argument("--old", action="store_true", help="also run the pipeline before 0.3, side by side")
    parser.add_argument("--rounds", type=int, default=1, help="with --old: cold runs of each, alternating; medians")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        made = time.perf_counter()
        dataset = load_dataset(str(synthetic_images(work / "data", args.images, args.jpeg)))
        print(f"made {len(dataset.train)} training and {len(dataset.test)} test images in "
              f"{time.perf_counter() - made:.1f} s; {device}, batch {args.batch_size}, {args.num_workers} workers, "
              f"{args.precision}, {args.image_size} px, V={args.views}")
        provenance = cache_provenance(dataset, "random", 0, args.image_size, args.views, args.precision)
        backbone = load_backbone("random", 0)
        runs, old_runs = [], []
        for round_ in range(args.rounds if args.old else 1):  # alternating, so that drift hits both alike
            for which in (("new", "old") if round_ % 2 == 0 else ("old", "new")) if args.old else ("new",):
                if which == "new":
                    runs.append(extract(dataset, backbone, provenance, work / f"cache-{round_}", batch_size=args.batch_size,
                                        shard_size=args.shard_size, device=device, num_workers=args.num_workers,
                                        progress=False))
                else:
                    (work / f"old-{round_}").mkdir()
                    old_runs.append(old_pipeline(dataset, backbone, provenance, work / f"old-{round_}", args.batch_size,
                                                 args.shard_size, args.num_workers, device))
        result = sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]  # the median run's breakdown
        probe = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        with autocast(device, args.precision):
            bare = bare_forward(backbone.to(device).eval().to(memory_format=torch.channels_last),
                                probe.to(memory_format=torch.channels_last), max(5, 2048 // args.batch_size))
        wall = result.seconds
        ranges, _ = verify_cache(result.path)  # catches a race in asynchronous copies: a damaged cache raises
        print(f"\nverify: all {ranges} checksummed ranges match")
        print(f"\nextraction: {result.images} views in {wall:.2f} s = {result.images / wall:.0f} images/s; bare forward "
              f"{bare:.0f} images/s; ratio {result.images / wall / bare:.3f}")
        print("\n| stage | seconds | share of the wall time |\n|---|---|---|")
        for stage, seconds in sorted(result.stage_seconds.items(), key=lambda item: list(STAGES).index(item[0])):
            print(f"| {STAGES[stage]} | {seconds:.3f} | {seconds / wall:.1%} |")
        print(f"| assembly (rank 0, after the last shard) | {result.assembly_seconds:.3f} | "
              f"{result.assembly_seconds / wall:.1%} |")
        if old_runs:
            cache = load_cache(result.path)
            same = all(np.array_equal(old_runs[0]["features"][name], getattr(cache, f"{name}_features").numpy()
                                      .reshape(old_runs[0]["features"][name].shape)) for name in ("train", "test"))
            new_s = sorted(run.seconds - run.assembly_seconds for run in runs)[len(runs) // 2]  # the old one has none
            old_s = sorted(run["seconds"] for run in old_runs)[len(old_runs) // 2]
            print(f"\nmedian of {len(runs)} cold runs each, assembly aside: new {result.images / new_s:.0f} images/s, old "
                  f"{result.images / old_s:.0f} images/s, new / old {old_s / new_s:.3f}; features bit-identical: "
                  f"{'yes' if same else 'NO'}")

if __name__ == "__main__":
    main()

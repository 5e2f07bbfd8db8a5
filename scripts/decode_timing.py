"""Fine-tuning with images decoded once into memory against decoded per batch by DataLoader workers,
side by side in one process (the same numbers either way; this measures only time).

    python scripts/decode_timing.py ../shared/data/cifar10-catdoghorse ../shared/weights/resnet18-cifar10src-64px.pth
"""
import argparse
import time

import featcache


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("weights")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    spec = featcache.DataSpec(args.data)
    rows = []
    for label, max_memory, workers in (("decoded once", None, 0), ("per batch, main process", 1, 0),
                                       ("per batch, 1 worker", 1, 1), ("per batch, 2 workers", 1, 2)):
        started = time.perf_counter()
        run = featcache.finetune(spec, args.weights, image_size=args.image_size, epochs=args.epochs,
                                 max_memory=max_memory, num_workers=workers, device="cpu")
        rows.append({"decoding": label, "seconds": round(time.perf_counter() - started, 1),
                     "final_test_acc": run.final_test_acc})
    print(featcache.markdown_table(rows, ["decoding", "seconds", "final_test_acc"]))


if __name__ == "__main__":
    main()

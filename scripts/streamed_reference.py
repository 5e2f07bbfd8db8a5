"""Streamed against in-memory heads on one cache, ten seeds each: does the block shuffle cost accuracy?
Budgets are chosen so that the shuffle buffer holds all, about two thirds, or one third of the rows.

    python scripts/streamed_reference.py cache/cifar10-catdoghorse-resnet18-64px-v15-s0-5992ef47d9cc41c5.h5
"""
import argparse
import statistics

import featcache


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--budgets", default="42.7MB,41.6MB,40.6MB")
    args = parser.parse_args()
    rows = []
    for budget in [None, *args.budgets.split(",")]:
        group = featcache.train_head_seeds(args.cache, args.seeds, max_memory=budget if budget else "100GB")
        accuracies = [run.final_test_acc for run in group.runs]
        config = group.runs[0].config
        rows.append({"max_memory": budget or "(in memory)", "buffer_rows": config.get("buffer_rows", "all"),
                     "block_rows": config.get("block_rows", "-"), "mean_test_acc": round(statistics.mean(accuracies), 4),
                     "std": round(statistics.stdev(accuracies), 4), "min": min(accuracies), "max": max(accuracies)})
    print(featcache.markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()

"""How sure a comparison is: intervals over seeds and over test images, with scipy.stats.

Two sources of uncertainty, reported apart:
- seed spread: a t-interval over the final accuracies of runs that differ only in their training seed
  (few seeds make it wide: with 3 seeds the 95% interval is mean +- 4.30 standard errors);
- test-set sampling: a bootstrap over test images from each run's stored per-image predictions, paired
  when two approaches are compared on the same images (which also works with a single seed), and
  McNemar's exact test for two single runs.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BATCH = 500  # resamples at a time: all 10,000 at once over 10,000 test images would take 1.6 GB


ACCURACY = (0.0, 1.0)  # where an accuracy, and so its interval, lies
FEW_SEEDS = 3  # below this, a t-interval is too wide to tell much (2 seeds: mean +- 12.7 standard errors)


def t_interval(values, confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample standard deviation and the t-interval of the mean over `values` (one per seed);
    no interval from a single value. With `bounds` (ACCURACY for accuracies) the interval is clipped to
    them, and `clipped` and the method say so; under FEW_SEEDS values the method says the interval
    tells little."""
    values = np.asarray(values, dtype=float)
    n, mean = len(values), float(values.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None, "clipped": False,
                "method": "single value: no interval"}
    std = float(values.std(ddof=1))
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / np.sqrt(n)) if std > 0 else (mean, mean)
    clipped = bounds is not None and (low < bounds[0] or high > bounds[1])
    if clipped:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    method = (f"t-interval over {n} seeds (t_{n - 1} = {stats.t.ppf((1 + confidence) / 2, n - 1):.2f})"
              + (f", clipped to [{bounds[0]:g}, {bounds[1]:g}]" if clipped else "")
              + (f"; with fewer than {FEW_SEEDS} seeds the interval tells little" if n < FEW_SEEDS else ""))
    return {"n": n, "mean": mean, "std": std, "low": float(low), "high": float(high), "clipped": bool(clipped),
            "method": method}


def interval_text(summary: dict) -> str:
    """A t_interval's bounds as a table shows them, marked where clipped to its bounds or from under
    FEW_SEEDS values; '' without an interval."""
    if summary["low"] is None:
        return ""
    notes = (["clipped"] if summary.get("clipped") else []) + (["tells little"] if summary["n"] < FEW_SEEDS else [])
    return f"[{summary['low']:.4f}, {summary['high']:.4f}]" + (f" ({', '.join(notes)})" if notes else "")


def bootstrap_interval(correct, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """Accuracy and its percentile bootstrap interval over test images; `correct` is [images] or
    [seeds, images] (then each image's correctness is averaged over seeds first)."""
    per_image = np.atleast_2d(np.asarray(correct, dtype=float)).mean(0)
    result = stats.bootstrap((per_image,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                             method="percentile", batch=BATCH, rng=np.random.default_rng(seed))
    return {"mean": float(per_image.mean()), "low": float(result.confidence_interval.low),
            "high": float(result.confidence_interval.high),
            "method": f"percentile bootstrap over {len(per_image)} test images ({BOOTSTRAP_RESAMPLES:,} resamples)"}


def paired_bootstrap(correct_a, correct_b, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """Difference in accuracy (a - b) and its paired percentile bootstrap interval: the same test
    images resampled for both. Inputs are [images] or [seeds, images] booleans on the same images."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=float)).mean(0)
    b = np.atleast_2d(np.asarray(correct_b, dtype=float)).mean(0)
    difference = a - b
    if not difference.any():  # identical per-image results: the interval is exactly zero
        return {"difference": 0.0, "low": 0.0, "high": 0.0, "method": "paired bootstrap (identical predictions)"}
    result = stats.bootstrap((difference,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                             method="percentile", batch=BATCH, rng=np.random.default_rng(seed))
    return {"difference": float(difference.mean()), "low": float(result.confidence_interval.low),
            "high": float(result.confidence_interval.high),
            "method": f"paired percentile bootstrap over {len(difference)} test images "
                      f"({BOOTSTRAP_RESAMPLES:,} resamples)"}


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's exact test of two single runs on the same images: a binomial test on the images
    exactly one of them gets right."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p, "method": "McNemar's exact test"}


def paired_seed_interval(accuracies_a, accuracies_b, confidence: float = CONFIDENCE) -> dict:
    """The t-interval of the per-seed differences a_k - b_k (seed k of each approach is a pair)."""
    result = t_interval(np.asarray(accuracies_a, dtype=float) - np.asarray(accuracies_b, dtype=float), confidence)
    return {**result, "difference": result["mean"],
            "method": result["method"].replace("t-interval", "paired t-interval of differences")}

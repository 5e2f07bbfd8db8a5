"""What the few-shot curves, the look at a backbone and its views, and the speed measurement take, as
validated configs (featcache.api.fewshot, inspect and bench); each field's type and constraint written
once (featcache.settings.setting). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from ..cache.key import CacheSpec, ExtractConfig
from ..settings import check_fields, like, setting
from ..train.config import FEWSHOT_LINEAR_STEPS, MIN_PER_CLASS_TO_CHOOSE, EpochConfig, HeadConfig

PROBES = ("linear", "logreg", "knn")


@dataclass(frozen=True)
class FewshotConfig:
    """Few-shot curves from a cache alone (featcache.api.fewshot)."""

    shots: tuple[int, ...] = setting((1, 2, 5, 10, 20, 50), "Training images per class (k) to sample, "
                                     "comma-separated.", minimum=1)
    trials: int = setting(20, "Subsets drawn per k (seeded, without replacement, the same for every probe).",
                          minimum=2)
    probes: tuple[str, ...] = setting(PROBES, f"linear (reference head, fixed budget of {FEWSHOT_LINEAR_STEPS} Adam "
                                      f"steps), logreg (train-head's probe: C on a validation split from "
                                      f"{MIN_PER_CLASS_TO_CHOOSE} shots, else C=1), knn (k on a validation split from "
                                      f"{MIN_PER_CLASS_TO_CHOOSE} shots, else 1-NN).", choices=PROBES)
    seed: int = setting(0, "Seeds the subsets, inits and shuffles.", minimum=0)
    knn_temperature: float | None = like(HeadConfig, "knn_temperature")

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class InspectConfig:
    """A backbone's parameters per module and a grid of its training views (featcache.api.inspect)."""

    image_size: int = like(CacheSpec, "image_size", "Crop size S.")
    seed: int = like(CacheSpec, "seed", "Seeds the augmented views shown.")
    count: int = setting(16, "Training images to show (spread over the classes).", minimum=1, maximum=64)
    view: int = setting(1, "Which view to show: 0 clean, 1.. augmented (as extract caches them).", minimum=0)
    backbone: str = like(CacheSpec, "backbone")

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class BenchConfig:
    """Every speed figure side by side in one process on one config (featcache.api.bench)."""

    weights: str = like(CacheSpec, "weights")
    image_size: int = like(CacheSpec, "image_size")
    seed: int = like(CacheSpec, "seed", "Seeds the augmented views, random weights, head init and shuffling.")
    device: str = like(ExtractConfig, "device")
    batch_size: int = like(EpochConfig, "batch_size", "Training batch size (head and end-to-end loop).")
    num_workers: int = like(ExtractConfig, "num_workers")
    epochs: int = like(EpochConfig, "epochs")
    views: int = like(CacheSpec, "views", "Augmented views to extract.")
    extract_batch_size: int = like(ExtractConfig, "batch_size", "Images per backbone forward, for extraction and the "
                                   "bare-forward ceiling.")
    backbone: str = like(CacheSpec, "backbone")
    end_to_end: bool = setting(True, "Run the (slow) end-to-end loop; --no-end-to-end: throughput figures only.",
                               option="--end-to-end/--no-end-to-end")
    command: str = setting("featcache bench", "The command line bench.md names.", cli=False)

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class AuditConfig:
    """What the cache tells you about your data (featcache.api.audit)."""

    folds: int = setting(5, "Folds of the out-of-sample probe whose probabilities rank the label issues.", minimum=2)
    seed: int = setting(0, "Seeds the folds.", minimum=0)
    test_labels: bool = setting(False, "Check the test labels too (a probe fitted on every training image): a wrong "
                                "test label moves every accuracy measured on it.")
    top: int = setting(50, "Pairs of each scope (train-test, train-train, test-test) listed whatever their "
                       "similarity (exact and near pairs are listed besides), outliers listed, and with --run each run's top "
                       "losses.",
                       minimum=1)

    def __post_init__(self):
        check_fields(self)

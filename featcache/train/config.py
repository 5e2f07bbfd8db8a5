"""What each kind of training takes, as one validated config: a head on a cache (HeadConfig), an
end-to-end run (FinetuneConfig, ScratchConfig) and the whole experiment (ExperimentConfig).

Each field's type and constraint is written once, in its setting (featcache.settings.setting), and
checked from there in __post_init__ (check_fields), before any model is built or image read, and by the
CLI's option at parse time; __post_init__ adds only the rules between fields. Torch-free.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..cache.key import DEFAULT_WEIGHTS, CacheSpec, ExtractConfig
from ..data.transform import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ..settings import DEVICES_HELP, ConfigError, as_seed_list, check_fields, check_memory, check_seeds, like, setting

HEADS = ("linear", "logreg", "knn")
DEFAULT_SWEEP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_SWEEP_WDS = (0.0, 1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class EpochConfig:
    """The reference schedule every approach shares: epochs of shuffled batches."""

    epochs: int = setting(15, "Training epochs.", minimum=1)
    batch_size: int = setting(32, "Training batch size.", minimum=1)
    seed: int = setting(0, "Seeds the model's init and the shuffle.", minimum=0)

    def __post_init__(self):
        check_fields(self)


MIN_PER_CLASS_TO_CHOOSE = 5  # training images per class a validation split needs to choose kNN's k or logreg's C
REFERENCE_TRAIN_IMAGES = 1_500  # the reference task: 3 classes x 500
FEWSHOT_LINEAR_STEPS = EpochConfig.epochs * math.ceil(REFERENCE_TRAIN_IMAGES / EpochConfig.batch_size)  # 705


@dataclass(frozen=True)
class HeadConfig(EpochConfig):
    """A feature-extraction head trained on a cache (featcache.api.train_head)."""

    head: str = setting("linear", "'linear': Linear(D, C) on the backbone's D features trained with Adam; 'logreg': scikit-learn "
                        "LogisticRegression probe; 'knn': k nearest neighbours by cosine similarity on clean "
                        "views, k chosen on the validation split (1-NN when a class has fewer than "
                        f"{MIN_PER_CLASS_TO_CHOOSE} training images).", choices=HEADS)
    lr: float = setting(1e-3, "Adam learning rate of the linear head.", above=0)
    weight_decay: float = setting(0.0, "Adam weight decay of the head.", minimum=0)
    sweep: bool = setting(False, "Train a grid of linear heads (--sweep-lrs x --sweep-wds) at once, pick the best "
                          "on a validation split of the training images, retrain it on all of them.")
    sweep_lrs: tuple[float, ...] = setting(DEFAULT_SWEEP_LRS, "Learning rates of the sweep grid.", above=0)
    sweep_wds: tuple[float, ...] = setting(DEFAULT_SWEEP_WDS, "Weight decays of the sweep grid.", minimum=0)
    val_fraction: float = setting(0.2, "Share of training images held out to choose the sweep setting, logreg's "
                                  "C or kNN's k.", above=0, below=1)
    logreg_views: str = setting("clean", "Fit the logreg probe on clean views only, or on clean plus every "
                                "augmented view.", choices=("clean", "all"))
    knn_temperature: float | None = setting(None, "kNN votes weighted by exp(similarity / T) (DINOv2 uses 0.07). "
                                            "Default: uniform votes.", above=0)
    max_memory: int | str | None = setting(
        None, "Memory for the cache's data above the process's baseline (e.g. 1GB, 512MiB). A cache that does not "
        "fit is streamed from the file in shuffled blocks (linear heads only). Default: half the available RAM.",
        metavar="SIZE", check=check_memory)
    extract_wall_time_s: float | None = setting(None, "Seconds the cache's extraction took, for history.json.",
                                                cli=False)
    cache_reused: bool | None = setting(None, "Whether the cache was found rather than written, for history.json.",
                                        cli=False)

    def __post_init__(self):
        super().__post_init__()
        if self.sweep and self.head != "linear":
            raise ConfigError(f"`sweep` trains linear heads; `head` {self.head} chooses its own setting on the "
                              "validation split")

    @property
    def heads_at_once(self) -> int:
        """Linear heads a sweep trains side by side (what a streamed cache's buffer is sized for)."""
        return len(self.sweep_lrs) * len(self.sweep_wds) if self.sweep else 1


@dataclass(frozen=True)
class EndToEndConfig(EpochConfig):
    """What fine-tuning and training from scratch share: the schedule and how images are decoded."""

    image_size: int | None = setting(None, "Crop size the images are decoded for. Default: 224 for a DataSpec; "
                                     "ImageData keep the size they were decoded at.", minimum=MIN_IMAGE_SIZE,
                                     maximum=MAX_IMAGE_SIZE)
    device: str | None = setting(None, DEVICES_HELP + " Default: 'auto' for a DataSpec; ImageData keep the "
                                 "device they were loaded on.")
    max_memory: int | str | None = setting(
        None, "Memory for decoded images, per process (e.g. 8GB). Splits that do not fit are decoded per batch by "
        "--num-workers workers instead of once; the numbers are the same. Default: half the available RAM, "
        "shared among the machine's ranks.", metavar="SIZE", check=check_memory)
    num_workers: int = setting(0, "DataLoader worker processes that decode images.", minimum=0)
    backbone: str = like(CacheSpec, "backbone", "The network to train: a torchvision classification model by its "
                         "registered name (resnet18, efficientnet_b0, convnext_tiny, ...) or a timm model as "
                         "timm:NAME.")



@dataclass(frozen=True)
class ScratchConfig(EndToEndConfig):
    """The backbone's network from a seeded random init, every parameter trained (featcache.api.scratch)."""

    lr: float = setting(1e-3, "Adam learning rate.", above=0)


@dataclass(frozen=True)
class FinetuneConfig(EndToEndConfig):
    """A pretrained backbone with a new head and the `unfreeze` modules trained (featcache.api.finetune)."""

    weights: str = setting(DEFAULT_WEIGHTS, "The pretrained backbone: 'imagenet', 'random' or a state dict's path.",
                           cli=False)
    lr_head: float = setting(1e-3, "Adam learning rate of the new head.", above=0)
    lr_backbone: float = setting(1e-5, "Adam learning rate of the unfrozen backbone modules.", above=0)
    unfreeze: tuple[str, ...] | None = setting(
        None, "Comma-separated modules of the backbone to train besides the new head, by their names in the "
        "model (layer3,layer4; features.7; blocks.6); the rest stay frozen. Default: its last stage (ResNet layer4; "
        "EfficientNet and MobileNet their last block stage and final convolution; ConvNeXt and ViT their last stage "
        "and final norm).", metavar="MODULES", check=lambda name, value: check_module_name(value))
    frozen_bn: str = setting("eval", "'eval': frozen modules stay in eval mode, their BatchNorm statistics never "
                             "change (and the frozen trunk's test outputs are computed once). 'train': the "
                             "notebook's behaviour, whole model in train mode.", choices=("eval", "train"))
    init_head: object = setting(None, "Start the head from a train-head run directory (or Run) instead of a "
                                "random init.")


def check_module_name(module: str) -> None:
    """An `unfreeze` module name in form only: featcache.backbone.check_unfreeze checks it on the network."""
    if not re.fullmatch(r"[A-Za-z_0-9]+(\.[A-Za-z_0-9]+)*", module):
        raise ConfigError(f"`unfreeze` names {module}, not a module name such as layer4 or features.7")


@dataclass(frozen=True)
class ExperimentConfig:
    """The three approaches side by side on the same views (featcache.api.experiment); the data,
    weights, image size, views and view seed are the experiment's CacheSpec."""

    epochs: int = like(EpochConfig, "epochs")
    batch_size: int = like(EpochConfig, "batch_size", "Training batch size (all three approaches).")
    lr: float = like(ScratchConfig, "lr", "Adam learning rate of scratch training and of the feature-extraction head.")
    lr_head: float = like(FinetuneConfig, "lr_head")
    lr_backbone: float = like(FinetuneConfig, "lr_backbone")
    unfreeze: tuple[str, ...] | None = like(FinetuneConfig, "unfreeze")
    frozen_bn: str = like(FinetuneConfig, "frozen_bn")
    extract_batch_size: int = like(ExtractConfig, "batch_size", "Images per backbone forward during extraction.")
    device: str = like(ExtractConfig, "device")
    num_workers: int = like(ExtractConfig, "num_workers")
    seeds: object = setting(None, "Train every approach once per training seed ('A-B', '0,3,7' or a count N: seeds "
                            "0..N-1) on the same views and cache: seed k of each approach is a pair. The summary "
                            "shows mean ± interval per approach and the paired differences.", check=check_seeds)

    def __post_init__(self):
        check_fields(self)

    @property
    def seed_list(self) -> list[int] | None:
        return as_seed_list(self.seeds) if self.seeds is not None else None


@dataclass(frozen=True)
class BackbonesConfig:
    """Backbones compared on one dataset (featcache.api.backbones): one cache per backbone, then every
    cached head over the same seeds on each."""

    heads: tuple[str, ...] = setting(HEADS, "Comma-separated heads trained on every backbone's cache: linear, "
                                     "logreg, knn.", choices=HEADS)
    seeds: object = setting("0-4", "Training seeds of every head ('A-B', '0,3,7' or a count N: seeds 0..N-1); seed "
                            "k of one backbone is paired with seed k of another.", check=check_seeds)
    epochs: int = like(EpochConfig, "epochs")
    batch_size: int = like(EpochConfig, "batch_size")
    lr: float = like(HeadConfig, "lr")
    extract_batch_size: int = like(ExtractConfig, "batch_size", "Images per backbone forward, for extraction and "
                                   "the forward timing.")
    device: str = like(ExtractConfig, "device")
    num_workers: int = like(ExtractConfig, "num_workers")

    def __post_init__(self):
        check_fields(self)

    @property
    def seed_list(self) -> list[int]:
        return as_seed_list(self.seeds)

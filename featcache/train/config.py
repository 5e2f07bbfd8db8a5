"""What each kind of training takes, as one validated config: a head on a cache (HeadConfig), an
end-to-end run (FinetuneConfig, ScratchConfig) and the whole experiment (ExperimentConfig).

Checked in __post_init__, before any model is built or image read; the API builds them from its
keyword arguments and the CLI derives each option's default and help from their fields
(featcache.settings.setting). Torch-free.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..cache.key import DEFAULT_WEIGHTS, CacheSpec, ExtractConfig, check_backbone_name
from ..data.transform import check_image_size
from ..errors import FeatcacheError
from ..settings import (DEVICES_HELP, as_seed_list, check_at_least, check_choice, check_positive, like, parse_memory,
                        setting)

HEADS = ("linear", "logreg", "knn")
DEFAULT_SWEEP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_SWEEP_WDS = (0.0, 1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class EpochConfig:
    """The reference schedule every approach shares: epochs of shuffled batches."""

    epochs: int = setting(15, "Training epochs.")
    batch_size: int = setting(32, "Training batch size.", minimum=1)
    seed: int = setting(0, "Seeds the model's init and the shuffle.")

    def __post_init__(self):
        check_at_least("epochs", self.epochs, 1)
        check_at_least("batch_size", self.batch_size, 1)


MIN_PER_CLASS_TO_CHOOSE = 5  # training images per class a validation split needs to choose kNN's k or logreg's C
REFERENCE_TRAIN_IMAGES = 1_500  # the reference task: 3 classes x 500
FEWSHOT_LINEAR_STEPS = EpochConfig.epochs * math.ceil(REFERENCE_TRAIN_IMAGES / EpochConfig.batch_size)  # 705


@dataclass(frozen=True)
class HeadConfig(EpochConfig):
    """A feature-extraction head trained on a cache (featcache.api.train_head)."""

    head: str = setting("linear", "'linear': Linear(512, C) trained with Adam; 'logreg': scikit-learn "
                        "LogisticRegression probe; 'knn': k nearest neighbours by cosine similarity on clean "
                        "views, k chosen on the validation split (1-NN when a class has fewer than "
                        f"{MIN_PER_CLASS_TO_CHOOSE} training images).", choices=HEADS)
    lr: float = setting(1e-3, "Adam learning rate of the linear head.")
    weight_decay: float = setting(0.0, "Adam weight decay of the head.")
    sweep: bool = setting(False, "Train a grid of linear heads (--sweep-lrs x --sweep-wds) at once, pick the best "
                          "on a validation split of the training images, retrain it on all of them.")
    sweep_lrs: tuple[float, ...] = setting(DEFAULT_SWEEP_LRS, "Learning rates of the sweep grid.")
    sweep_wds: tuple[float, ...] = setting(DEFAULT_SWEEP_WDS, "Weight decays of the sweep grid.")
    val_fraction: float = setting(0.2, "Share of training images held out to choose the sweep setting, logreg's "
                                  "C or kNN's k.")
    logreg_views: str = setting("clean", "Fit the logreg probe on clean views only, or on clean plus every "
                                "augmented view.", choices=("clean", "all"))
    knn_temperature: float | None = setting(None, "kNN votes weighted by exp(similarity / T) (DINOv2 uses 0.07). "
                                            "Default: uniform votes.")
    max_memory: int | str | None = setting(
        None, "Memory for the cache's data above the process's baseline (e.g. 1GB, 512MiB). A cache that does not "
        "fit is streamed from the file in shuffled blocks (linear heads only). Default: half the available RAM.",
        metavar="SIZE")
    extract_wall_time_s: float | None = setting(None, "Seconds the cache's extraction took, for history.json.",
                                                cli=False)
    cache_reused: bool | None = setting(None, "Whether the cache was found rather than written, for history.json.",
                                        cli=False)

    def __post_init__(self):
        super().__post_init__()
        check_choice("head", self.head, HEADS)
        if self.sweep and self.head != "linear":
            raise FeatcacheError(f"`sweep` trains linear heads; `head` {self.head} chooses its own setting on the "
                                 "validation split")
        check_positive("lr", self.lr)
        if not self.weight_decay >= 0:
            raise FeatcacheError(f"`weight_decay` must be non-negative, got {self.weight_decay}")
        if self.sweep:
            for name, values in (("sweep_lrs", self.sweep_lrs), ("sweep_wds", self.sweep_wds)):
                if not values:
                    raise FeatcacheError(f"`{name}` must name at least one value")
            for lr in self.sweep_lrs:
                check_positive("sweep_lrs", lr)
            if not all(decay >= 0 for decay in self.sweep_wds):
                raise FeatcacheError(f"`sweep_wds` must be non-negative, got {list(self.sweep_wds)}")
        if not 0 < self.val_fraction < 1:
            raise FeatcacheError(f"`val_fraction` must be between 0 and 1, got {self.val_fraction}")
        check_choice("logreg_views", self.logreg_views, ("clean", "all"))
        if self.knn_temperature is not None and not self.knn_temperature > 0:
            raise FeatcacheError(f"`knn_temperature` must be positive, got {self.knn_temperature}")
        if self.max_memory is not None:
            parse_memory(self.max_memory)

    @property
    def heads_at_once(self) -> int:
        """Linear heads a sweep trains side by side (what a streamed cache's buffer is sized for)."""
        return len(self.sweep_lrs) * len(self.sweep_wds) if self.sweep else 1


@dataclass(frozen=True)
class EndToEndConfig(EpochConfig):
    """What fine-tuning and training from scratch share: the schedule and how images are decoded."""

    image_size: int | None = setting(None, "Crop size the images are decoded for. Default: 224 for a DataSpec; "
                                     "ImageData keep the size they were decoded at.")
    device: str | None = setting(None, DEVICES_HELP + " Default: 'auto' for a DataSpec; ImageData keep the "
                                 "device they were loaded on.")
    max_memory: int | str | None = setting(
        None, "Memory for decoded images, per process (e.g. 8GB). Splits that do not fit are decoded per batch by "
        "--num-workers workers instead of once; the numbers are the same. Default: half the available RAM, "
        "shared among the machine's ranks.", metavar="SIZE")
    num_workers: int = setting(0, "DataLoader worker processes that decode images.", minimum=0)
    backbone: str = like(CacheSpec, "backbone", "The network to train: a torchvision classification model by its "
                         "registered name (resnet18, efficientnet_b0, convnext_tiny, ...) or a timm model as "
                         "timm:NAME.")

    def __post_init__(self):
        super().__post_init__()
        check_backbone_name(self.backbone)
        if self.image_size is not None:
            check_image_size(self.image_size)
        check_at_least("num_workers", self.num_workers, 0)
        if self.max_memory is not None:
            parse_memory(self.max_memory)


@dataclass(frozen=True)
class ScratchConfig(EndToEndConfig):
    """The backbone's network from a seeded random init, every parameter trained (featcache.api.scratch)."""

    lr: float = setting(1e-3, "Adam learning rate.")

    def __post_init__(self):
        super().__post_init__()
        check_positive("lr", self.lr)


@dataclass(frozen=True)
class FinetuneConfig(EndToEndConfig):
    """A pretrained backbone with a new head and the `unfreeze` modules trained (featcache.api.finetune)."""

    weights: str = setting(DEFAULT_WEIGHTS, "The pretrained backbone: 'imagenet', 'random' or a state dict's path.",
                           cli=False)
    lr_head: float = setting(1e-3, "Adam learning rate of the new head.")
    lr_backbone: float = setting(1e-5, "Adam learning rate of the unfrozen backbone modules.")
    unfreeze: tuple[str, ...] | None = setting(
        None, "Comma-separated modules of the backbone to train besides the new head, by their names in the "
        "model (layer3,layer4; features.7; blocks.6); the rest stay frozen. Default: its last stage (ResNet layer4; "
        "EfficientNet and MobileNet their last block stage and final convolution; ConvNeXt and ViT their last stage "
        "and final norm).", metavar="MODULES")
    frozen_bn: str = setting("eval", "'eval': frozen modules stay in eval mode, their BatchNorm statistics never "
                             "change (and the frozen trunk's test outputs are computed once). 'train': the "
                             "notebook's behaviour, whole model in train mode.", choices=("eval", "train"))
    init_head: object = setting(None, "Start the head from a train-head run directory (or Run) instead of a "
                                "random init.")

    def __post_init__(self):
        super().__post_init__()
        check_finetune_settings(self.lr_head, self.lr_backbone, self.unfreeze, self.frozen_bn)


def check_finetune_settings(lr_head: float, lr_backbone: float, unfreeze, frozen_bn: str) -> None:
    check_positive("lr_head", lr_head)
    check_positive("lr_backbone", lr_backbone)
    check_module_names(unfreeze)
    check_choice("frozen_bn", frozen_bn, ("eval", "train"))


def check_module_names(unfreeze) -> None:
    """`unfreeze`'s module names in form only: featcache.backbone.check_unfreeze checks them on the network."""
    if unfreeze is None:
        return
    malformed = [name for name in unfreeze if not re.fullmatch(r"[A-Za-z_0-9]+(\.[A-Za-z_0-9]+)*", str(name))]
    if malformed:
        raise FeatcacheError(f"`unfreeze`: {', '.join(map(str, malformed))} is not a module name such as layer4 or "
                             "features.7")


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
                            "shows mean ± interval per approach and the paired differences.")

    def __post_init__(self):
        EpochConfig(self.epochs, self.batch_size)
        check_positive("lr", self.lr)
        check_finetune_settings(self.lr_head, self.lr_backbone, self.unfreeze, self.frozen_bn)
        check_at_least("extract_batch_size", self.extract_batch_size, 1)
        check_at_least("num_workers", self.num_workers, 0)
        if self.seeds is not None:
            as_seed_list(self.seeds)

    @property
    def seed_list(self) -> list[int] | None:
        return as_seed_list(self.seeds) if self.seeds is not None else None


@dataclass(frozen=True)
class BackbonesConfig:
    """Backbones compared on one dataset (featcache.api.backbones): one cache per backbone, then every
    cached head over the same seeds on each."""

    heads: tuple[str, ...] = setting(HEADS, "Comma-separated heads trained on every backbone's cache: linear, "
                                     "logreg, knn.")
    seeds: object = setting("0-4", "Training seeds of every head ('A-B', '0,3,7' or a count N: seeds 0..N-1); seed "
                            "k of one backbone is paired with seed k of another.")
    epochs: int = like(EpochConfig, "epochs")
    batch_size: int = like(EpochConfig, "batch_size")
    lr: float = like(HeadConfig, "lr")
    extract_batch_size: int = like(ExtractConfig, "batch_size", "Images per backbone forward, for extraction and "
                                   "the forward timing.")
    device: str = like(ExtractConfig, "device")
    num_workers: int = like(ExtractConfig, "num_workers")

    def __post_init__(self):
        EpochConfig(self.epochs, self.batch_size)
        if not self.heads:
            raise FeatcacheError("`heads` must name at least one of " + ", ".join(HEADS))
        for head in self.heads:
            check_choice("heads", head, HEADS)
        check_positive("lr", self.lr)
        check_at_least("extract_batch_size", self.extract_batch_size, 1)
        check_at_least("num_workers", self.num_workers, 0)
        as_seed_list(self.seeds)

    @property
    def seed_list(self) -> list[int]:
        return as_seed_list(self.seeds)

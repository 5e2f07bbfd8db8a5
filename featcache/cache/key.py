"""What determines the cached numbers, and the cache key made of it; light enough to import without torch.

`featcache extract` run a second time only needs this module, the dataset listing and h5py to find
its finished cache, so it answers in well under a second instead of waiting for PyTorch to import.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np

from .._version import __version__
from ..data.datasets import Dataset, DataSpec
from ..data.transform import DEFAULT_IMAGE_SIZE, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, transform_description
from ..errors import FeatcacheError
from .layout import attributes_problem, layout_problem
from ..settings import DEFAULT_BACKBONE, DEVICES_HELP, ConfigError, check_fields, require, setting

FORMAT = "featcache"
FORMAT_VERSION = 2  # 2: sharded extraction, per-shard sha256 checksums, features chunked one view at a time
BACKBONE = "torchvision.resnet18"
FEATURE_DIM = 512
BACKBONE_PARAMETERS = 11_176_512  # torchvision resnet18 without fc; checked in tests/test_finetune.py
PRECISIONS = ("fp32", "bf16")
DEFAULT_WEIGHTS = "imagenet"
WEIGHTS_HELP = ("'imagenet' (the backbone's default torchvision weights, ResNet18_Weights.IMAGENET1K_V1 for "
                "resnet18, via torchvision's cache), 'random' (seeded init, for tests) or a path to a state dict of the "
                "backbone (its classifier is dropped).")


def weights_source(weights: str) -> str:
    """What a cache records of where its backbone came from: 'imagenet', 'random' or an absolute path."""
    return weights if weights in ("imagenet", "random") else str(Path(weights).resolve())


def check_backbone_name(name: str, backbone: str) -> None:
    """The form of a backbone name (a field's `check`), without importing torch: whether the model exists is
    checked when built."""
    if not re.fullmatch(r"(timm:)?[a-z][a-z0-9_.]*", str(backbone)):
        raise ConfigError(f"`{name}` must be a torchvision model name such as resnet50, or timm:NAME, got {backbone!r}")


def backbone_identity(backbone: str) -> str:
    """What the provenance records of the architecture: torchvision.NAME, or timm.NAME with its version."""
    if backbone.startswith("timm:"):
        return f"timm.{backbone.removeprefix('timm:')}:timm=={_timm_version()}"
    return f"torchvision.{backbone}"


def backbone_name(identity: str) -> str:
    """The `backbone` a provenance's identity was made from (backbone_identity's inverse)."""
    if identity.startswith("timm."):
        return "timm:" + identity.removeprefix("timm.").split(":")[0]
    return identity.removeprefix("torchvision.")


def _timm_version() -> str:
    try:
        return version("timm")
    except Exception:  # importlib.metadata.PackageNotFoundError
        raise FeatcacheError("a timm: backbone needs timm: pip install 'featcache[timm]'") from None


def weights_identity(weights: str, seed: int, backbone: str = DEFAULT_BACKBONE) -> str:
    """The weights' identity for the cache key: a file's content hash (never its path); for the
    built-in choices, what produces them (a seeded init depends on the torch version too; the
    architecture is the provenance's `backbone`)."""
    if weights == "random":
        return f"random:seed={seed}:torch=={version('torch')}:torchvision=={version('torchvision')}"
    if weights == "imagenet" and backbone == DEFAULT_BACKBONE:
        return f"imagenet:ResNet18_Weights.IMAGENET1K_V1:torchvision=={version('torchvision')}"
    if weights == "imagenet" and backbone.startswith("timm:"):  # timm's default pretrained tag for the name
        return f"imagenet:{backbone}:timm=={_timm_version()}"
    if weights == "imagenet":  # the model's DEFAULT weights, which the torchvision release fixes
        return f"imagenet:{backbone}:DEFAULT:torchvision=={version('torchvision')}"
    if not Path(weights).is_file():
        raise FeatcacheError(f"weights file {weights} does not exist (or pass `weights` imagenet or random)")
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def cache_provenance(dataset, weights: str, seed: int, image_size: int, views: int,
                     precision: str = "fp32", hashes=None, backbone: str = DEFAULT_BACKBONE) -> dict:
    """Everything that determines the cached numbers; the cache key is a hash of exactly this.
    `hashes` (fingerprint.FileHashes) remembers the files' content hashes between calls. Images left out
    (data.exclusions) enter it by their ids' hash, so a cache made with exclusions is never reused
    without them; without exclusions it is the key of every earlier release."""
    excluded = dataset.description.get("excluded")
    return {
        "format_version": FORMAT_VERSION,
        "backbone": backbone_identity(backbone),  # torchvision.resnet18: the key of every 0.2 cache
        "weights": weights_identity(weights, seed, backbone),
        "dataset_fingerprint": dataset.fingerprint(hashes),
        "classes": list(dataset.classes),
        "train_ids_count": len(dataset.train),
        "test_ids_count": len(dataset.test),
        "image_size": image_size,
        "transform": transform_description(image_size),
        "views": views,
        "seed": seed,
        "precision": precision,  # bf16 autocast changes the features: another cache
        **({"excluded": excluded["ids_sha256"]} if excluded and any(excluded["images"].values()) else {}),
    }


def cache_key(provenance: dict) -> str:
    return hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: Path, dataset, provenance: dict) -> Path:
    key = cache_key(provenance)
    backbone = provenance["backbone"].split(":")[0].removeprefix("torchvision.").replace(".", "-")  # the name alone
    name = f"{dataset.name}-{backbone}-{provenance['image_size']}px-v{provenance['views']}-s{provenance['seed']}"
    return Path(cache_dir) / f"{name}-{key[:16]}.h5"


def shard_folder(final: Path) -> Path:
    """Where the shards of the cache file `final` live until it is assembled."""
    return final.with_name(final.name + ".shards")


def open_complete_cache(path: Path) -> h5py.File:
    """The cache file opened for reading, checked to be featcache's, of this format and complete."""
    path = Path(path)
    if not path.is_file():
        shards = shard_folder(path)
        hint = f" (an unfinished extraction is at {shards}; re-run extract to finish it)" if shards.exists() else ""
        raise FeatcacheError(f"cache file {path} " + ("is not a file" if path.exists() else f"does not exist{hint}"))
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise FeatcacheError(f"{path} is not a readable HDF5 file: {error}") from None
    problem = attributes_problem(handle)
    if problem:
        handle.close()
        raise FeatcacheError(f"{path} is not a cache featcache can read safely: {problem}")
    version_found = handle.attrs.get("format_version", -1)
    version_found = version_found.item() if isinstance(version_found, np.generic) else version_found
    if handle.attrs.get("format") != FORMAT:
        problem = f"{path} is not a featcache cache file"
    elif type(version_found) is not int or version_found != FORMAT_VERSION:
        problem = (f"{path} is a featcache cache of format version {version_found!r}; this featcache "
                   f"({__version__}) reads version {FORMAT_VERSION}: re-run featcache extract")
    elif not handle.attrs.get("complete", False):
        problem = f"cache {path} is incomplete; re-run featcache extract to finish it"
    else:
        problem = layout_problem(handle)
        problem = problem and (f"{path} is not a cache featcache can read safely: {problem} (featcache extract "
                               "makes one from the images)")
    if problem:
        handle.close()
        raise FeatcacheError(problem)
    return handle


def complete_cache_key(path: Path) -> str:
    with open_complete_cache(path) as handle:
        return str(handle.attrs["key"])


def reusable_cache(final: Path, key: str) -> bool:
    """Whether the complete cache for `key` is already at `final`; a file there for other inputs is an error.

    Shards a killed run left after renaming the finished file into place are removed, if no process holds
    the key's lock (a --force extraction may be writing new ones beside the finished file)."""
    from ..locks import Busy, release, try_hold

    if not final.exists():
        return False
    cached_key = complete_cache_key(final)  # refuses a foreign or other-version file without touching it
    if cached_key != key:
        raise FeatcacheError(f"{final} holds a cache for other inputs (key {cached_key[:16]}); "
                             "move it away or pass `force` to overwrite it")
    if shard_folder(final).exists():
        lock = final.with_name(final.name + ".lock")
        try:
            holder = try_hold(lock)
        except (Busy, OSError, FeatcacheError):  # held (perhaps by this very process), or not ours to touch
            return True
        try:
            shutil.rmtree(shard_folder(final), ignore_errors=True)
        finally:
            release(holder, lock)
    return True


@dataclass
class ExtractResult:
    path: Path
    reused: bool
    seconds: float
    waited_seconds: float = 0.0  # waiting for another process's extraction of this key (cache/writer.py)
    images: int = 0  # views run through the backbone in this run (on rank 0: by all ranks)
    backbone_seconds: float = 0.0  # this process's
    commit_seconds: float = 0.0  # this process's shard writes
    assembly_seconds: float = 0.0  # rank 0's assembly (other ranks: waiting for it)
    stage_seconds: dict = field(default_factory=dict)  # this process's seconds per stage (cache.pipeline.StageClock)
    shards_total: int = 0
    shards_resumed: int = 0  # shards already done when this run started
    shards_removed: list = field(default_factory=list)  # damaged shard files found and recomputed
    rank: int = 0
    world_size: int = 1
    class_table: Path | None = None  # a user's images per class and split, beside the cache
    split_file: Path | None = None  # the test split featcache made for them, as a label file

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class CacheSpec:
    """Everything that determines cached features. Both the backbone and the cache key are built from
    it, so the features filed under a key are always those of the weights it names.

    `weights` is 'imagenet', 'random' (seeded, for tests) or a path to a state dict of `backbone`."""

    data: DataSpec = field(default_factory=DataSpec)
    weights: str = setting(DEFAULT_WEIGHTS, WEIGHTS_HELP)
    image_size: int = setting(DEFAULT_IMAGE_SIZE, "Crop size S; images are first resized to S*256/224, as the reference 256/224 "
                              "pipeline.", minimum=MIN_IMAGE_SIZE,
                              maximum=MAX_IMAGE_SIZE)
    views: int = setting(10, "Augmented views cached per training image (plus the clean view 0).", minimum=1)
    seed: int = setting(0, "Seeds the augmented views and random weights.", minimum=0)
    precision: str = setting("fp32", "Backbone arithmetic during extraction: fp32, or bf16 autocast (faster on GPUs "
                             "with bf16 units; `featcache bench` reports how far its features are from fp32's).",
                             choices=PRECISIONS)
    cache_dir: Path = setting(Path("cache"), "Folder of cache files.")
    backbone: str = setting(DEFAULT_BACKBONE, "A torchvision classification model by its registered name "
                            "(torchvision.models.list_models(): resnet50, efficientnet_b0, mobilenet_v3_small, "
                            "convnext_tiny, ...) or a timm model as timm:NAME (pip install 'featcache[timm]'): its "
                            "features are what its classifier sees. Normalisation: the timm model's own "
                            "(pretrained_cfg), else ImageNet's.", check=check_backbone_name)

    def __post_init__(self):
        require("data", self.data, DataSpec, "a featcache.DataSpec")
        check_fields(self)

    def locate(self, rehash: bool = False) -> tuple[Dataset, dict, Path]:
        """(dataset, provenance, the cache file's path), without importing torch. Files' content hashes
        are remembered in cache_dir under their stat, and class folders' listings under the folders'
        (featcache.data.fingerprint): a repeated call lists only changed folders and reads only changed
        files, or everything with `rehash`."""
        from ..data.fingerprint import FileHashes, FolderListings

        listings = FolderListings(self.cache_dir, rehash)
        hashes = FileHashes(self.cache_dir, rehash)
        dataset = self.data.load(listings, hashes)
        provenance = cache_provenance(dataset, self.weights, self.seed, self.image_size, self.views, self.precision,
                                      hashes, self.backbone)
        listings.save()
        hashes.save()
        return dataset, provenance, cache_path(self.cache_dir, dataset, provenance)


def write_split_files(cache_dir: Path, dataset, fingerprint: str) -> tuple[Path | None, Path]:
    """Beside the caches: <name>-<fingerprint>-classes.csv (images per class and split) and, where
    featcache made the test split, <name>-<fingerprint>-split.csv (path,label,split,id: a label file
    featcache reads back as the same split, data.layouts.SPLIT_FILE). Returns (the split file, None where
    featcache made no split; the class table). A folder that cannot be written only loses them."""
    from ..csvfiles import csv_text
    from ..data.datasets import class_table, split_rows
    from ..files import write_file

    stem = Path(cache_dir) / f"{dataset.name}-{fingerprint[:12]}"
    split_file, class_file = stem.with_name(stem.name + "-split.csv"), stem.with_name(stem.name + "-classes.csv")
    made = dataset.description.get("split_made")
    try:
        if made and not split_file.is_file():  # named by the fingerprint: written once
            write_file(split_file, csv_text(["path", "label", "split", "id"],
                                            split_rows(dataset, Path(cache_dir))).encode())
        if not class_file.is_file():
            write_file(class_file, csv_text(["class", "train", "test"], class_table(dataset)).encode())
    except FeatcacheError:
        pass
    return split_file if made else None, class_file


@dataclass(frozen=True)
class ExtractConfig:
    """How an extraction runs (featcache.api.extract): none of it enters the key. The bytes depend on
    the batch and shard sizes and the threads per process, which the shards and the file record."""

    batch_size: int = setting(64, "Images per backbone forward.", minimum=1)
    shard_size: int = setting(256, "Images per shard: extraction commits (and resumes, and deals out to torchrun "
                              "ranks) this many consecutive images at a time. Features are bit-identical for the "
                              "same --shard-size, --batch-size and threads per process (OMP_NUM_THREADS; torchrun "
                              "gives each rank 1).", minimum=1)  # measured: see docs/performance.md
    device: str = setting("auto", DEVICES_HELP)
    num_workers: int = setting(0, "DataLoader worker processes that decode images.", minimum=0)
    force: bool = setting(False, "Recompute even if a complete cache (or finished shards) exists.")
    rehash: bool = setting(False, "List every class folder and read every image file to fingerprint the dataset, "
                           "instead of trusting what --cache-dir remembers: content hashes of files whose size, "
                           "mtime, ctime and inode are unchanged, and listings of folders whose mtime and ctime are "
                           "unchanged.")

    def __post_init__(self):
        check_fields(self)

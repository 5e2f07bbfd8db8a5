"""Datasets as lists of samples: ids, labels, class names and a content fingerprint.

Images are decoded lazily (views.DecodedSplit) so that a DataLoader can spread decoding over
workers; everything that determines the numbers is fingerprinted up front for the cache key. No
torch here: finding an existing cache must not pay for importing it.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FeatcacheError
from ..settings import ConfigError, check_fields, setting

# The formats Image.open may detect, by content, not name: the decoders of IMAGE_EXTENSIONS. Not EPS (it
# runs Ghostscript), ICO or BLP (they decode an embedded image, at its own size, before the bound is checked).
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
CIFAR10_DEFAULT_CLASSES = ("cat", "dog", "horse")
DEFAULT_CIFAR_ROOT = Path(os.environ.get("FEATCACHE_DATA_ROOT", Path.home() / ".cache" / "featcache" / "data"))


@dataclass
class Split:
    """One split: per-sample ids and labels, and a way to read each sample's pixels."""

    ids: list[str]
    labels: np.ndarray
    paths: list[str] | None = None  # image folders (strings: a million Path objects cost seconds)
    arrays: np.ndarray | None = None  # CIFAR-10: uint8 [N, H, W, 3]

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> Image.Image:
        """The sample as an RGB PIL image; a corrupt file raises FeatcacheError naming it."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[index])
        return read_image(self.paths[index])


# The bound on an image featcache decodes, checked from its header before a pixel is decoded. Decoding
# costs 3 bytes a pixel and the clean view's float32 resize 12, so 2**26 pixels (a 64-megapixel photo)
# peaks near 1 GB; a longer side over 20 times the shorter is a strip, not a photo (a 1 x 20,000 PNG of
# about 100 bytes asked for 30 GB before this bound). The resized image adds 12 bytes x 20 x S**2 at
# most, S = resize_size(image size): 16 MB at 224 px, 1.3 GB at the largest size, 2,048 px.
MAX_PIXELS = 1 << 26
MAX_ASPECT = 20
IMAGE_BOUND = f"at most {MAX_PIXELS:,} pixels, longer side at most {MAX_ASPECT} times the shorter"


def check_image_size(width: int, height: int) -> str | None:
    """Why a width x height image is outside featcache's bound, or None."""
    if width < 1 or height < 1:
        return f"{width} x {height} pixels is empty"
    if width * height > MAX_PIXELS:
        return f"{width:,} x {height:,} pixels is over featcache's bound of {MAX_PIXELS:,} pixels"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"{width:,} x {height:,} pixels is over featcache's bound on aspect ratio ({MAX_ASPECT}:1)"
    return None


def read_image(path) -> Image.Image:
    """An image file as an RGB PIL image; a file PIL cannot read, or one outside featcache's bound
    (IMAGE_BOUND, read from the header before decoding), raises FeatcacheError naming it."""
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 megapixels; featcache's bound is lower and refuses those with its own line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as image:
                problem = check_image_size(*image.size)
                if problem is None:
                    return image.convert("RGB")
    except Image.DecompressionBombError:
        problem = f"over featcache's bound of {MAX_PIXELS:,} pixels"
    except Exception as error:  # damaged files raise OSError, SyntaxError, EOFError, zlib.error, ValueError...
        raise FeatcacheError(f"cannot read image {path}: {error}") from None
    raise FeatcacheError(f"cannot read image {path}: {problem}")


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: Split
    test: Split
    description: dict = field(default_factory=dict)

    def fingerprint(self, hashes=None) -> str:
        """sha256 over the selected samples' ids, labels and contents (each file's sha256, from `hashes`,
        a fingerprint.FileHashes that re-reads only changed files): what the pixels come from."""
        from .fingerprint import FileHashes

        hashes = hashes if hashes is not None else FileHashes()
        if self.train.paths is not None:  # one lookup over both splits: the table keeps it in this order
            contents = hashes.digests(self.train.paths + self.test.paths)
            contents = {"train": contents[:len(self.train)].tobytes(), "test": contents[len(self.train):].tobytes()}
        digest = hashlib.sha256(b"featcache fingerprint 2: per-file sha256 in hex")
        for split_name, split in (("train", self.train), ("test", self.test)):
            digest.update(split_name.encode())
            digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
            digest.update("\0".join(split.ids).encode())
            if split.arrays is not None:
                digest.update(np.ascontiguousarray(split.arrays).tobytes())
            else:
                digest.update(contents[split_name])
        return digest.hexdigest()


def load_dataset(
    data: str,
    classes: list[str] | None = None,
    per_class: int | None = 500,
    test_per_class: int | None = None,
    download: bool = False,
    data_root: Path | None = None,
    listings=None,
) -> Dataset:
    """`data` is "cifar10" (torchvision) or a folder with train/<class>/* and test/<class>/*.

    Keeps the first `per_class` training images of each class in dataset order (None: all) and all
    test images unless `test_per_class` says otherwise. Labels are 0..C-1 in the order of `classes`.
    `listings` (fingerprint.FolderListings) remembers class folders' listings between calls.
    """
    if classes is not None:
        if len(set(classes)) != len(classes):
            raise FeatcacheError(f"`classes` lists a class twice: {','.join(classes)}")
        if len(classes) < 2:
            raise FeatcacheError("`classes` needs at least two classes to classify")
    if data == "cifar10":
        return _load_cifar10(list(classes or CIFAR10_DEFAULT_CLASSES), per_class, test_per_class,
                             download, Path(data_root or DEFAULT_CIFAR_ROOT))
    return _load_folder(Path(data), classes, per_class, test_per_class, listings)


def _check_classes(wanted: list[str], available: list[str], where: str) -> None:
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise FeatcacheError(
            f"unknown class {', '.join(unknown)} in {where}; available: {', '.join(available)}")


def _first_per_class(labels: np.ndarray, class_indices: list[int], limit: int | None) -> np.ndarray:
    """Indices of the first `limit` samples of each wanted class, in dataset order."""
    keep = []
    for class_index in class_indices:
        members = np.flatnonzero(labels == class_index)
        keep.append(members[:limit] if limit is not None else members)
    return np.sort(np.concatenate(keep))


def _load_cifar10(classes, per_class, test_per_class, download, root: Path) -> Dataset:
    from torchvision.datasets import CIFAR10

    splits = {}
    for split_name, train, limit in (("train", True, per_class), ("test", False, test_per_class)):
        try:
            source = CIFAR10(str(root), train=train, download=download)
        except RuntimeError as error:
            raise FeatcacheError(
                f"CIFAR-10 not found in {root} ({error}); pass `download` to fetch it, "
                "`data_root` to point at an existing copy, or `data` PATH for an image folder") from None
        except OSError as error:
            raise FeatcacheError(f"could not download CIFAR-10 to {root}: {error}") from None
        _check_classes(classes, source.classes, "CIFAR-10")
        wanted = [source.classes.index(name) for name in classes]
        targets = np.asarray(source.targets)
        keep = _first_per_class(targets, wanted, limit)
        remap = {original: new for new, original in enumerate(wanted)}
        splits[split_name] = Split(
            ids=[f"{split_name}/{index}" for index in keep],
            labels=np.array([remap[t] for t in targets[keep]], dtype=np.int64),
            arrays=source.data[keep])
    return Dataset("cifar10", classes, splits["train"], splits["test"],
                   {"source": "torchvision CIFAR10", "per_class": per_class, "test_per_class": test_per_class})


def image_names(folder: str) -> list[str]:
    """The folder's image file names, sorted. os.listdir: 4x faster than pathlib on large folders; a
    folder named like an image is refused later by the fingerprint's stat."""
    return sorted(file for file in os.listdir(folder) if file.lower().endswith(IMAGE_EXTENSIONS))


def _load_folder(root: Path, classes, per_class, test_per_class, listings=None) -> Dataset:
    if not root.is_dir():
        raise FeatcacheError(f"data folder {root} " + ("is not a folder" if root.exists() else "does not exist"))
    splits = {}
    for split_name, limit in (("train", per_class), ("test", test_per_class)):
        split_dir = root / split_name
        if not split_dir.is_dir():
            raise FeatcacheError(f"data folder {root} has no {split_name}/ folder (expected {split_dir}/<class>/*)")
        with os.scandir(split_dir) as entries:
            available = sorted(entry.name for entry in entries if entry.is_dir())
        if classes is None:
            classes = available
            if len(classes) < 2:
                raise FeatcacheError(f"{split_dir} needs at least two class folders, found {len(classes)}")
        _check_classes(classes, available, str(split_dir))
        ids, labels, paths = [], [], []
        for label, name in enumerate(classes):
            folder = os.path.join(split_dir, name)
            files = listings.names(folder, image_names) if listings is not None else image_names(folder)
            if not files:
                raise FeatcacheError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            files = files[:limit] if limit is not None else files
            paths += map((folder + os.sep).__add__, files)  # map over str.__add__: twice a comprehension's speed
            ids += map(f"{split_name}/{name}/".__add__, files)
            labels += [label] * len(files)
        splits[split_name] = Split(ids=ids, labels=np.array(labels, dtype=np.int64), paths=paths)
    return Dataset(root.resolve().name, list(classes), splits["train"], splits["test"],
                   {"source": "image folder", "path": str(root.resolve()), "per_class": per_class,
                    "test_per_class": test_per_class})


@dataclass(frozen=True)
class DataSpec:
    """Which images: 'cifar10' (torchvision's CIFAR-10) or a folder with train/<class>/* and test/<class>/*.

    `classes` picks classes by name and fixes the label order; `per_class` keeps the first N training
    images of each class (None: all), `test_per_class` likewise for the test split."""

    data: str | Path = setting("cifar10", "'cifar10' (torchvision's CIFAR-10) or a folder with train/<class>/* and "
                               "test/<class>/*.", check=lambda name, value: _check_source(value))
    classes: tuple[str, ...] | None = setting(None, "Comma-separated class names, in label order. Default: "
                                              "cat,dog,horse for CIFAR-10, every class folder for a folder.")
    per_class: int | None = setting(500, "Keep the first N training images of each class, in dataset order.",
                                    minimum=1)
    test_per_class: int | None = setting(None, "Keep the first N test images of each class. Default: all.",
                                         minimum=1)
    download: bool = setting(False, "Download CIFAR-10 if it is not in --data-root.")
    data_root: Path | None = setting(None, "Where CIFAR-10 lives or is downloaded to. Default: "
                                     "~/.cache/featcache/data or $FEATCACHE_DATA_ROOT.")

    def __post_init__(self):
        check_fields(self)

    def load(self, listings=None) -> Dataset:
        return load_dataset(self.data, list(self.classes) if self.classes else None, self.per_class,
                            self.test_per_class, self.download, self.data_root, listings)


def _check_source(data) -> None:
    if not isinstance(data, (str, os.PathLike)) or not str(data).strip():
        raise ConfigError(f"`data` must be 'cifar10' or a folder's path, got {data!r}")

"""Datasets as lists of samples: ids, labels, class names and a content fingerprint.

Images are decoded lazily (views.DecodedSplit) so that a DataLoader can spread decoding over
workers; everything that determines the numbers is fingerprinted up front for the cache key. No
torch here: finding an existing cache must not pay for importing it.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FeatcacheError
from ..settings import ConfigError, check_fields, setting
from .exclusions import leave_out
from .layouts import find_layout, skipped_text, split_file_name
from .splits import DEFAULT_TEST_FRACTION, split_by_content

# The formats Image.open may detect, by content, not name: the decoders of IMAGE_EXTENSIONS. Not EPS (it
# runs Ghostscript), ICO or BLP (they decode an embedded image, at its own size, before the bound is checked).
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
CIFAR10_DEFAULT_CLASSES = ("cat", "dog", "horse")
CIFAR10_PER_CLASS = 500  # the seed notebook's reference task
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


# How to turn an image upright by its EXIF orientation tag (PIL.ImageOps.exif_transpose's table).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def orientation(image: Image.Image) -> int:
    """An opened image's EXIF orientation tag, 1 (upright) where it has none, from its header only: a
    PNG's eXIf chunk counts only before the pixel data (PIL's getexif would decode the whole image to
    find one after it), a tag outside 2..8 counts as 1."""
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        tag = exif.get(0x0112, 1)
    except Exception:  # a damaged tag: the pixels decode (or are refused) as they are
        return 1
    return tag if type(tag) is int and tag in UPRIGHT else 1


def read_image(path) -> Image.Image:
    """An image file as an upright RGB PIL image (its EXIF orientation applied, as a phone's gallery shows
    it); a file PIL cannot read, or one outside featcache's bound (IMAGE_BOUND, read from the header before
    decoding), raises FeatcacheError naming it."""
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 megapixels; featcache's bound is lower and refuses those with its own line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as image:
                problem = check_image_size(*image.size)  # the bound is the same either way up
                if problem is None:
                    turn = UPRIGHT.get(orientation(image))
                    rgb = image.convert("RGB")
                    return rgb.transpose(turn) if turn is not None else rgb
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
        # one lookup over both splits: the table keeps it in this order
        return self.content_fingerprint(hashes.digests(self.train.paths + self.test.paths)
                                        if self.train.paths is not None else None)

    def content_fingerprint(self, digests: np.ndarray | None) -> str:
        """fingerprint, given the files' digests (training then test paths; None for arrays)."""
        if digests is not None:
            contents = {"train": digests[:len(self.train)].tobytes(), "test": digests[len(self.train):].tobytes()}
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
    per_class: int | str | None = None,
    test_per_class: int | None = None,
    download: bool = False,
    data_root: Path | None = None,
    listings=None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
    hashes=None,
    exclude: str | Path | None = None,
) -> Dataset:
    """`data` is "cifar10" (torchvision) or a user's images in one of featcache.data.layouts' layouts.

    Keeps the first `per_class` training images of each class in id order (None: 500 for CIFAR-10, the
    notebook's, and every image of a folder or label file; "all": every image) and all test images unless
    `test_per_class` says otherwise. Where the images have no test split, featcache.data.splits makes one
    (`test_fraction`, `split_seed`) from the files' content hashes (`hashes`, a fingerprint.FileHashes).
    Labels are 0..C-1 in the order of `classes`. `listings` (fingerprint.FolderListings) remembers
    folders' listings between calls. `exclude` names a file of images to leave out of both splits
    (featcache.data.exclusions), after the test split is made and before `per_class`.
    """
    if classes is not None:
        if len(set(classes)) != len(classes):
            raise FeatcacheError(f"`classes` lists a class twice: {','.join(classes)}")
        if len(classes) < 2:
            raise FeatcacheError("`classes` needs at least two classes to classify")
    limit = None if per_class == "all" else per_class
    if data == "cifar10":
        return _load_cifar10(list(classes or CIFAR10_DEFAULT_CLASSES), CIFAR10_PER_CLASS if per_class is None else limit,
                             test_per_class, download, Path(data_root or DEFAULT_CIFAR_ROOT), exclude)
    return _load_images(Path(data), classes, limit, test_per_class, listings, test_fraction, split_seed, hashes,
                        exclude)


def _check_classes(wanted: list[str], available: list[str], where: str) -> None:
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise FeatcacheError(
            f"unknown class {', '.join(unknown)} in {where}; available: {', '.join(available)}")


def _first_per_class(labels: np.ndarray, class_indices: list[int], limit: int | None,
                     left_out: np.ndarray | None = None) -> np.ndarray:
    """Indices of the first `limit` samples of each wanted class, in dataset order, none of `left_out`."""
    keep = []
    allowed = np.ones(len(labels), dtype=bool)
    if left_out is not None:
        allowed[left_out] = False
    for class_index in class_indices:
        members = np.flatnonzero((labels == class_index) & allowed)
        keep.append(members[:limit] if limit is not None else members)
    return np.sort(np.concatenate(keep))


def _load_cifar10(classes, per_class, test_per_class, download, root: Path, exclude=None) -> Dataset:
    from torchvision.datasets import CIFAR10

    splits, sources, left_out = {}, {}, {}
    description = {"source": "torchvision CIFAR10", "per_class": per_class, "test_per_class": test_per_class}
    for split_name, train in (("train", True), ("test", False)):
        try:
            source = CIFAR10(str(root), train=train, download=download)
        except RuntimeError as error:
            raise FeatcacheError(
                f"CIFAR-10 not found in {root} ({error}); pass `download` to fetch it, "
                "`data_root` to point at an existing copy, or `data` PATH for an image folder") from None
        except OSError as error:
            raise FeatcacheError(f"could not download CIFAR-10 to {root}: {error}") from None
        _check_classes(classes, source.classes, "CIFAR-10")
        sources[split_name] = source
    if exclude is not None:  # ids train/<index> and test/<index>
        samples = {name: [(f"{name}/{index}", source.classes[target], None) for index, target in enumerate(source.targets)]
                   for name, source in sources.items()}
        kept, description["excluded"] = leave_out(exclude, samples, classes, "CIFAR-10")
        left_out = {name: np.setdiff1d(np.arange(len(sources[name].targets)),
                                       [int(sample[0].split("/")[1]) for sample in kept[name]]) for name in sources}
    for split_name, limit in (("train", per_class), ("test", test_per_class)):
        source = sources[split_name]
        wanted = [source.classes.index(name) for name in classes]
        targets = np.asarray(source.targets)
        keep = _first_per_class(targets, wanted, limit, left_out.get(split_name))
        remap = {original: new for new, original in enumerate(wanted)}
        splits[split_name] = Split(
            ids=[f"{split_name}/{index}" for index in keep],
            labels=np.array([remap[t] for t in targets[keep]], dtype=np.int64),
            arrays=source.data[keep])
    return Dataset("cifar10", classes, splits["train"], splits["test"], description)


def _load_images(data: Path, classes, per_class, test_per_class, listings, test_fraction: float, split_seed: int,
                 hashes, exclude=None) -> Dataset:
    """A folder or label file (featcache.data.layouts), its test split made where it has none."""
    from .fingerprint import FileHashes

    found = find_layout(data, listings)
    samples, notes = dict(found.samples), []
    made = "all" in samples or "test" not in samples and "val" not in samples
    if "all" in samples or "train" in samples and "test" not in samples and "val" not in samples:
        pool = samples.pop("all", None) or samples.pop("train")
        digests = (hashes if hashes is not None else FileHashes()).digests([path for _, _, path in pool])
        samples["train"], samples["test"], warnings_ = split_by_content(pool, digests, split_seed, test_fraction)
        notes += warnings_
        if not samples["test"]:
            raise FeatcacheError(f"the test split made from {data} is empty ({len(pool)} images; every class under "
                                 f"{math.ceil(2 / test_fraction)} images stays in training): add images, raise "
                                 "`test_fraction`, or give a test split")
        rule = f"made from the images' contents (test fraction {test_fraction:g}, split seed {split_seed})"
    elif "test" in samples:
        rule = "the test split given"
        if "val" in samples:
            notes.append(f"{len(samples.pop('val'))} val images not used (a val split is the test split only "
                         "where there is no test split)")
    else:
        samples["test"] = samples.pop("val")
        rule = "the val split given, as the test split"
    excluded = None
    if exclude is not None:  # after the split: every other image keeps its side
        samples, excluded = leave_out(exclude, samples, classes, str(data))
    available = sorted({name for _, name, _ in samples["train"]})
    if classes is None:
        classes = available
        if len(classes) < 2:
            raise FeatcacheError(f"{data} needs at least two classes, found {len(classes)}: {', '.join(classes)}")
    splits, counts = {}, {}
    for split_name, limit in (("train", per_class), ("test", test_per_class)):
        present = {name for _, name, _ in samples[split_name]}
        if split_name == "train" or not made:  # a made split leaves a small class out of test (said in notes)
            _check_classes(classes, sorted(present), f"the {split_name} split of {data}")
        ids, labels, paths, per_label = [], [], [], {}
        grouped: dict[str, list] = {}
        for sample in samples[split_name]:  # one pass: a million images of a thousand classes
            grouped.setdefault(sample[1], []).append(sample)
        for label, name in enumerate(classes):
            members = grouped.get(name, [])
            members = members[:limit] if limit is not None else members
            per_label[name] = len(members)
            ids += [sample[0] for sample in members]
            paths += [sample[2] for sample in members]
            labels += [label] * len(members)
        splits[split_name] = Split(ids=ids, labels=np.array(labels, dtype=np.int64), paths=paths)
        counts[split_name] = per_label
    name = (split_file_name(data) if data.is_file() else None) or (data.parent if data.is_file() else data).resolve().name
    description = {"source": found.layout, "path": str(data.resolve()), "per_class": per_class,
                   "test_per_class": test_per_class, "layout": found.layout, "split_rule": rule,
                   "split_sizes": {split: len(splits[split]) for split in splits}, "class_counts": counts,
                   "skipped": {reason: count for reason, count in found.skipped.items() if count}, "notes": notes,
                   "split_made": made}
    if excluded is not None:
        description["excluded"] = excluded
    return Dataset(name, list(classes), splits["train"], splits["test"], description)


def layout_record(dataset: Dataset) -> dict:
    """What history.json records of how the images were found and split (not in any cache key)."""
    return {key: dataset.description[key] for key in ("layout", "split_rule", "split_sizes", "class_counts",
                                                      "excluded") if key in dataset.description}  # not the files skipped: a stray .DS_Store must not refuse a resume


def class_table(dataset: Dataset) -> list[dict]:
    """One row per class: its training and test images."""
    counts = dataset.description.get("class_counts") or {}
    return [{"class": name, **{split: counts.get(split, {}).get(name, "") for split in ("train", "test")}}
            for name in dataset.classes]


def split_rows(dataset: Dataset, folder: Path) -> list[dict]:
    """Every image as path (relative to `folder`), label, split: a label file (layouts) that gives the
    same split back."""
    return [{"path": Path(os.path.relpath(path, folder)).as_posix(), "label": dataset.classes[label], "split": name,
             "id": identity}
            for name, split in (("train", dataset.train), ("test", dataset.test))
            for identity, path, label in zip(split.ids, split.paths, split.labels.tolist())]


def summary_line(dataset: Dataset) -> str:
    """The one line a command prints before any work: layout, split rule, totals, classes, imbalance."""
    counts = dataset.description.get("class_counts")
    excluded = dataset.description.get("excluded")
    count = sum(excluded["images"].values()) if excluded else 0
    left_out = (f"; {count} image{'' if count == 1 else 's'} excluded ({excluded['images'].get('train', 0)} "
                f"training, {excluded['images'].get('test', 0)} test) by {excluded['file']}") if excluded else ""
    if not counts:
        return (f"{dataset.name}: {len(dataset.train)} training and {len(dataset.test)} test images of "
                f"{len(dataset.classes)} classes" + left_out)
    train = counts["train"]
    ratio = max(train.values()) / max(min(train.values()), 1)
    notes = [skipped_text(dataset.description.get("skipped") or {}), *(dataset.description.get("notes") or [])]
    return (f"{dataset.name} ({dataset.description['layout']}; test split: {dataset.description['split_rule']}): "
            f"{len(dataset.train)} training and {len(dataset.test)} test images, {len(dataset.classes)} classes, "
            f"imbalance {ratio:.2f} (largest / smallest training class)" + "".join(f"; {note}" for note in notes)
            + left_out)


@dataclass(frozen=True)
class DataSpec:
    """Which images: 'cifar10' (torchvision's CIFAR-10) or a user's own (featcache.data.layouts: a folder
    of class folders, a folder holding train/ and maybe test/ or val/, or a CSV/TSV label file).

    `classes` picks classes by name and fixes the label order; `per_class` keeps the first N training
    images of each class (None: 500 for CIFAR-10, all for a user's images; "all": all), `test_per_class`
    likewise for the test split. Where the images have no test split, featcache makes one by content:
    `test_fraction` of them, drawn by `split_seed` (featcache.data.splits)."""

    data: str | Path = setting("cifar10", "'cifar10' (torchvision's CIFAR-10), a folder of class folders (featcache "
                               "makes the test split), a folder holding train/ and test/ or val/, or a .csv/.tsv "
                               "of path,label[,split] (docs/own-images.md).",
                               check=lambda name, value: _check_source(value))
    classes: tuple[str, ...] | None = setting(None, "Comma-separated class names, in label order. Default: "
                                              "cat,dog,horse for CIFAR-10, every class of your images.")
    per_class: int | str | None = setting(None, "Keep the first N training images of each class, in id order, or "
                                          "'all'. Default: 500 for CIFAR-10 (the reference task), all of your "
                                          "own images.", check=lambda name, value: _check_per_class(value),
                                          metavar="N|all")
    test_per_class: int | None = setting(None, "Keep the first N test images of each class. Default: all.",
                                         minimum=1)
    download: bool = setting(False, "Download CIFAR-10 if it is not in --data-root.")
    data_root: Path | None = setting(None, "Where CIFAR-10 lives or is downloaded to. Default: "
                                     "~/.cache/featcache/data or $FEATCACHE_DATA_ROOT.")
    test_fraction: float = setting(DEFAULT_TEST_FRACTION, "Where your images have no test split: the fraction "
                                   "featcache puts in test, chosen by each image's content.", above=0, below=1)
    split_seed: int = setting(0, "Where your images have no test split: draws which images are in test (not "
                              "--seed, so that every training seed shares one split).", minimum=0)
    exclude: Path | None = setting(None, "A file of images to leave out of both splits: a .csv/.tsv with a path "
                                   "column (such as the audit's label_issues.csv, after review) or one path per "
                                   "line; paths relative to the data folder, with /, or absolute. Recorded in the "
                                   "cache key and in every run (docs/audit.md).", metavar="FILE")

    def __post_init__(self):
        check_fields(self)
        if isinstance(self.per_class, str) and self.per_class != "all":
            object.__setattr__(self, "per_class", int(self.per_class))  # "500" from the command line

    def load(self, listings=None, hashes=None) -> Dataset:
        return load_dataset(self.data, list(self.classes) if self.classes else None, self.per_class,
                            self.test_per_class, self.download, self.data_root, listings, self.test_fraction,
                            self.split_seed, hashes, self.exclude)


def _check_per_class(value) -> None:
    if value is None or value == "all" or (type(value) is int and value >= 1) or (
            isinstance(value, str) and value.isdigit() and int(value) >= 1):
        return
    raise ConfigError(f"`per_class` must be a whole number of at least 1 or 'all', got {value!r}")


def _check_source(data) -> None:
    if not isinstance(data, (str, os.PathLike)) or not str(data).strip():
        raise ConfigError(f"`data` must be 'cifar10' or a folder's path, got {data!r}")

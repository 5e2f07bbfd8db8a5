"""Where a user's images are and which split each is in: the layouts other tools take, found from the
path given as `data`. No torch here.

- **class folders**: `PATH/<class>/...` (torchvision's ImageFolder; Keras' and fastai's folders before
  their split): featcache makes the test split (featcache.data.splits).
- **split folders**: `PATH/train/<class>/...` with any of `test/` and `val/`, `valid/` or
  `validation/` beside it. The rule for val: **a val folder is the test split when there is no
  test/; beside a test/ it is not used** (its count is reported), since featcache's heads choose
  nothing on a validation split. `train/` alone: featcache makes the test split.
- **label file**: a CSV or TSV of `path,label[,split[,id]]` (a header row naming those columns), paths
  relative to the file and inside its folder (an `id` column, as in the split file featcache writes, gives
  each image's id; that file, `<name>-<fp>-split.csv` beside the caches, may name images outside its
  folder), split `train`, `test` or `val`/`valid`/`validation` (val as above). No split column:
  featcache makes the test split.

Class folders are walked recursively, not through links to folders: an image's class is the first folder
under its split (or under PATH). Hidden files and folders (a name starting with a dot: `.ipynb_checkpoints`, `.DS_Store`) and
`__MACOSX` are ignored. Every sample is (id, class, path): the id is the image's path relative to PATH
(or to the label file's folder), with `/`, so the same images given as folders or as a label file
listing the same relative paths have the same ids.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..csvfiles import MAX_COLUMNS, iter_csv
from ..errors import FeatcacheError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
VAL_NAMES = ("val", "valid", "validation")
LABEL_FILE_SUFFIXES = (".csv", ".tsv")
MAX_LABEL_FILE_BYTES = 1 << 30
# featcache's own split file, <name>-<fingerprint>-split.csv beside the caches (cache/key.write_split_files)
SPLIT_FILE = re.compile(r"(.+)-[0-9a-f]{12}-split\.csv")
SPLIT_FILE_COLUMNS = ["path", "label", "split", "id"]


# Why a file or folder found in the walk is not an image of the data: list_folder writes each as
# "/<reason code>/<name>" ("/" cannot be in a name), so that fingerprint.FolderListings remembers them too.
SKIPPED = {"h": "hidden", "x": "not an image by its name", "l": "linked folders (not walked)",
           "o": "images outside a class folder"}


@dataclass
class Found:
    """What a layout found: samples per split ("train", "test", "val"; "all" where no split is given),
    each a list of (id, class name, path), and how many entries were skipped, by reason (SKIPPED)."""

    layout: str
    samples: dict[str, list[tuple[str, str, str]]]
    skipped: dict[str, int] = field(default_factory=dict)


def ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def skipped_text(skipped: dict[str, int]) -> str:
    """'3 files skipped (2 hidden, 1 not an image by its name)', or 'no files skipped'."""
    total = sum(skipped.values())
    if not total:
        return "no files skipped"
    return (f"{total} file{'s' * (total != 1)} skipped ("
            + ", ".join(f"{count} {reason}" for reason, count in skipped.items() if count) + ")")


def split_file_name(path: Path) -> str | None:
    """The data's name where `path` is named like featcache's own split file, else None."""
    match = SPLIT_FILE.fullmatch(path.name)
    return match.group(1) if match else None


def find_layout(data: Path, listings=None) -> Found:
    """The layout of `data` (a folder or a label file) and its samples."""
    if data.is_file() and data.suffix.lower() in LABEL_FILE_SUFFIXES:
        return _label_file(data)
    if not data.is_dir():
        raise FeatcacheError(f"data {data} " + ("is neither a folder nor a .csv/.tsv label file" if data.exists()
                                                  else "does not exist"))
    folders = [name for name in _entries(str(data), listings) if name.endswith("/") and not name.startswith("/")]
    skipped = dict.fromkeys(SKIPPED.values(), 0)
    names = {name[:-1] for name in folders}
    split_like = sorted(name for name in names if name.lower() in ("train", "training", "test", "testing", *VAL_NAMES))
    if "train" not in names and split_like:  # Train/ and Test/ would otherwise be two classes
        raise FeatcacheError(f"{data} holds {', '.join(split_like)}/ but no train/ folder: name the training "
                             "folder train/ (lower case), beside test/ or val/, or give class folders")
    if "train" in names:
        samples = {"train": _class_tree(data, "train", listings, skipped)}
        for split, candidates in (("test", ("test",)), ("val", VAL_NAMES)):
            present = [name for name in candidates if name in names]
            if len(present) > 1:
                raise FeatcacheError(f"{data} holds {' and '.join(present)}/: keep one")
            if present:
                samples[split] = _class_tree(data, present[0], listings, skipped)
        return Found("split folders", samples, skipped)
    if len(folders) < 2:
        raise FeatcacheError(f"{data} has neither a train/ folder nor two class folders (found "
                             f"{', '.join(sorted(names)) or 'none'}): see docs/own-images.md")
    return Found("class folders", {"all": _class_tree(data, "", listings, skipped)}, skipped)


def list_folder(folder: str) -> list[str]:
    """The folder's sub-folders (with a trailing /), image files and skipped entries ("/<code>/<name>",
    SKIPPED), sorted. One os.scandir: what fingerprint.FolderListings remembers under the folder's stat."""
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if ignored(entry.name):
                names.append("/h/" + entry.name)
            elif entry.is_dir(follow_symlinks=False):  # a linked folder is not walked (Keras' default): it
                names.append(entry.name + "/")  # could lead anywhere, or back into another class
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                names.append(entry.name)
            else:
                names.append(("/l/" if entry.is_dir() else "/x/") + entry.name)
    return sorted(names)


def _entries(folder: str, listings) -> list[str]:
    return listings.names(folder, list_folder) if listings is not None else list_folder(folder)


def _class_tree(root: Path, split: str, listings, skipped: dict[str, int]) -> list[tuple[str, str, str]]:
    """(id, class, path) of every image under root/split/<class>/, walked recursively; what is not an
    image of a class is counted in `skipped` by its reason."""
    base = os.path.join(root, split) if split else str(root)
    prefix = f"{split}/" if split else ""
    samples = []
    for top in _entries(base, listings):
        if not top.endswith("/"):  # an image beside the class folders belongs to no class
            _skip(skipped, top if top.startswith("/") else "/o/" + top)
            continue
        name = top[:-1]
        pending, before = [(os.path.join(base, name), f"{prefix}{name}/")], len(samples)
        while pending:  # finite: list_folder never follows a link to a folder, so nothing loops
            folder, relative = pending.pop()
            subfolders = []
            for entry in _entries(folder, listings):
                if entry.startswith("/"):
                    _skip(skipped, entry)
                elif entry.endswith("/"):
                    subfolders.append((os.path.join(folder, entry[:-1]), relative + entry))
                else:
                    samples.append((relative + entry, name, os.path.join(folder, entry)))
            pending.extend(reversed(subfolders))
        if len(samples) == before:
            raise FeatcacheError(f"class folder {os.path.join(base, name)} has no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}), in it or below it")
    samples.sort(key=lambda sample: (sample[1], sample[0]))
    return samples


def _skip(skipped: dict[str, int], entry: str) -> None:
    reason = SKIPPED.get(entry[1:2], "not an image by its name")  # a foreign listings table: still counted
    skipped[reason] = skipped.get(reason, 0) + 1


def table_rows(path: Path, what: str):
    """The rows of a CSV or TSV (by its suffix) a user gives (a label file, an exclude file), read as they
    are checked (csvfiles.iter_csv, at most MAX_COLUMNS columns); not UTF-8, not CSV or too many columns
    is one line naming `what` and the file."""
    try:
        yield from iter_csv(path, "\t" if path.suffix.lower() == ".tsv" else ",", MAX_COLUMNS)
    except ValueError as error:
        raise FeatcacheError(f"{what} {error}") from None


def _label_file(path: Path) -> Found:
    """A CSV or TSV of path,label[,split]: every row checked, a bad one named with its line."""
    if path.stat().st_size > MAX_LABEL_FILE_BYTES:
        raise FeatcacheError(f"label file {path} is over {MAX_LABEL_FILE_BYTES:,} bytes")
    with contextlib.closing(table_rows(path, "label file")) as rows:
        first = next(rows, None)
        if first is None or not {"path", "label"} <= set(first):
            raise FeatcacheError(f"label file {path} needs a header row naming its path and label columns "
                                 "(and optionally split)")
        root = path.parent
        has_split = "split" in first  # iter_csv's rows are dicts keyed by the header row
        # featcache's own split file (cache/key.write_split_files) sits beside the caches and names the images
        # where they are; any other label file names images in its folder or below it
        own_split_file = split_file_name(path) is not None and list(first) == SPLIT_FILE_COLUMNS
        samples: dict[str, list] = {}
        seen = set()
        for line, row in enumerate(itertools.chain([first], rows), start=2):  # checked as read
            relative, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            where = f"label file {path}, line {line}"
            if not relative or not label:
                raise FeatcacheError(f"{where}: an empty path or label")
            if Path(relative).is_absolute():
                raise FeatcacheError(f"{where}: {relative!r} is absolute; paths are relative to the label file")
            if not relative.lower().endswith(IMAGE_EXTENSIONS):
                raise FeatcacheError(f"{where}: {relative!r} is not an image featcache reads ({', '.join(IMAGE_EXTENSIONS)})")
            full = root / relative
            if not own_split_file and posixpath.normpath(Path(relative).as_posix()).startswith("../"):
                raise FeatcacheError(f"{where}: {relative!r} leads outside the label file's folder; put the label "
                                     "file in a folder above the images")
            if not full.is_file():
                raise FeatcacheError(f"{where}: {full} does not exist")
            identity = posixpath.normpath(row.get("id") or Path(relative).as_posix())  # a split file's id column
            if identity.startswith(("../", "/")) or identity == "..":
                raise FeatcacheError(f"{where}: id {identity!r} is not relative to the data")
            if identity in seen:
                raise FeatcacheError(f"{where}: {relative!r} is listed twice")
            seen.add(identity)
            split = (row.get("split") or "").strip().lower() if has_split else "all"
            split = "val" if split in VAL_NAMES else split
            if split not in ("train", "test", "val", "all"):
                raise FeatcacheError(f"{where}: split {split!r} is not train, test or val")
            samples.setdefault(split, []).append((identity, label, str(full)))
    if not samples:
        raise FeatcacheError(f"label file {path} lists no images")
    if has_split and "train" not in samples:
        raise FeatcacheError(f"label file {path} has no row in the train split")
    for values in samples.values():
        values.sort(key=lambda sample: (sample[1], sample[0]))
    return Found("label file", samples)

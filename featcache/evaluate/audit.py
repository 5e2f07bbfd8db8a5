"""What the cache tells you about your data, from each image's clean-view features alone (no backbone
runs): label-issue candidates, duplicates and leakage between the splits, and outliers.

- **Label issues**: out-of-sample predicted probabilities from K-fold (stratified, seeded) runs of
  featcache's logistic-regression probe (StandardScaler + LogisticRegression, C chosen from the probe's
  grid on one stratified validation split of at most C_ROWS training rows) on the training features
  (standardised on the training split and scaled to unit length, as the duplicates use them),
  ranked by cleanlab's `find_label_issues` (self-confidence: the probability of the given label). C
  matters: on the reference task's stand-in features at 64 px the out-of-fold accuracy is 0.78 at
  C = 0.001 and 0.68 at scikit-learn's default C = 1, and precision falls with it. Out of sample
  matters: a probe fitted on a row memorises its label and hides the flip. Test
  labels (on request) get the probe fitted on all training rows, out of sample by construction. The
  probe's out-of-fold accuracy is reported: the weaker the probe, the more clean rows it flags.
- **Duplicates and leakage**: exact copies (the same file digest, featcache.data.fingerprint; the same
  clean-view features where there are no files, as for CIFAR-10) and near copies, ranked by the cosine
  similarity of their clean-view features standardised on the training split (each dimension's mean
  and standard deviation: a frozen backbone's pooled features are all positive and a few dimensions
  dominate, so raw, distinct images of a class reach 0.99), within training, within test and across
  training and test. A pair at or above NEAR_COSINE
  is marked near (docs/audit.md: how it was chosen); the top `top` pairs of each scope are listed
  either way, ranked.
  Similarities are computed BLOCK_ROWS queries at a time, so 100,000 images stay within a bounded memory.
- **Outliers**: training images farthest from their class: one minus the mean cosine similarity to
  their OUTLIER_NEIGHBOURS most similar images of the same class.

Every row has a `path`: the image's id, its path relative to the data folder (data.layouts), which
`--exclude` reads back (data.exclusions); for a pair, the copy to leave out (a leak's training image,
a split's later copy).

numpy and scikit-learn; cleanlab (AGPL-3.0, with pandas) only for label issues, an optional extra.
Neither torchvision nor timm (tested).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError

BLOCK_ROWS = 256  # queries per block: 256 x 100,000 similarities in float32 are 100 MB
NEAR_COSINE = 0.975  # docs/audit.md: a guide chosen on one measurement; the ranking is what to trust
OUTLIER_NEIGHBOURS = 5
SCALE_FLOOR = 0.1  # of the median dimension's standard deviation
C_ROWS = 10_000  # training rows C is chosen on (a grid of fits on 100,000 rows would take minutes)


@dataclass
class CleanViews:
    """A cache's clean views: per split the ids, labels and L2-normalised features, and the image files
    the ids name (None where the cache was made from arrays, as CIFAR-10's)."""

    classes: list[str]
    ids: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    features: dict[str, np.ndarray]
    files: dict[str, list[str]] | None
    key: str
    digests: dict[str, np.ndarray] | None = None  # the files' (data.fingerprint), where there are files
    files_source: str = ""  # where the files were read from, or why there are none


def read_clean_views(path: Path) -> CleanViews:
    """View 0 of every training row and every test row, read from the file's metadata-checked layout
    (featcache.cache.layout: shapes and sizes before anything is allocated) once every feature byte has
    matched its sha256, range by range, as a streamed head's cache is checked
    (cache.streaming.open_streamed): a cache larger than memory is audited as any other, since only its
    clean view is held."""
    from ..cache.checksums import damaged_cache, verify_open
    from ..cache.key import open_complete_cache

    with open_complete_cache(path) as handle:  # its structure checked before a feature byte is read
        mismatches = verify_open(handle)  # every feature byte against its sha256, one range at a time
        if mismatches:
            raise damaged_cache(path, mismatches)
        attrs = dict(handle.attrs)
        features = {"train": handle["train/features"][:, 0, :], "test": handle["test/features"][()]}
        labels = {split: handle[f"{split}/labels"][()] for split in ("train", "test")}
        ids = {split: [name.decode() if isinstance(name, bytes) else str(name) for name in handle[f"{split}/ids"][()]]
               for split in ("train", "test")}
    standardise(features)
    classes = json.loads(attrs["classes"])
    files, digests, source = _image_files(attrs, ids, labels, classes)
    return CleanViews(classes, ids, labels, features, files, str(attrs["key"]), digests, source)


def standardise(features: dict[str, np.ndarray]) -> None:
    """In place: each split's rows standardised by the training split's mean and standard deviation (in
    float64), then scaled to unit length. A dimension with no spread in training is set to 0 (it tells
    nothing), and no spread counts for less than SCALE_FLOOR of the median dimension's (divided by nearly
    nothing, one dimension would swamp the rest)."""
    centre, scale = _mean_std(features["train"])
    spread = scale[scale > 0]
    floor = SCALE_FLOOR * float(np.median(spread)) if spread.size else 1.0
    constant = scale <= 1e-6 * floor
    scale = np.maximum(scale, floor)  # a dimension of almost no spread does not take the whole cosine
    for rows in features.values():
        rows -= centre.astype(np.float32)
        rows /= scale.astype(np.float32)
        rows[:, constant] = 0
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _mean_std(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation in float64, BLOCK_ROWS rows at a time (a float64 copy of
    100,000 rows would double what the audit holds)."""
    total = np.zeros(rows.shape[1])
    for start in range(0, len(rows), BLOCK_ROWS):
        total += rows[start:start + BLOCK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / max(len(rows), 1)
    squares = np.zeros(rows.shape[1])
    for start in range(0, len(rows), BLOCK_ROWS):
        squares += np.square(rows[start:start + BLOCK_ROWS] - mean).sum(axis=0)
    return mean, np.sqrt(squares / max(len(rows), 1))


def _image_files(attrs: dict, ids: dict[str, list[str]], labels: dict[str, np.ndarray],
                 classes: list[str]) -> tuple[dict | None, dict | None, str]:
    """(files, digests, where): the files the ids name (ids are paths relative to the data,
    featcache.data.layouts, or the id column of the label file the cache was made from) and their
    digests, where they are the very files the cache was made from (the dataset fingerprint the cache
    records, recomputed from them: a crafted cache cannot pull in other files, and an image changed
    since extraction is not shown beside features of the old one); else None, None and why not."""
    try:
        dataset = json.loads(attrs.get("dataset", "{}"))
    except (TypeError, ValueError):
        dataset = None
    root = dataset.get("path") if isinstance(dataset, dict) else None
    if not isinstance(root, str):
        return None, None, "the cache was made without image files"
    root = Path(root).parent if Path(root).is_file() else Path(root)
    from ..data.layouts import IMAGE_EXTENSIONS

    every = [name for names in ids.values() for name in names]
    if len(set(every)) != len(every) or any(
            os.path.isabs(name) or "\0" in name or not name.lower().endswith(IMAGE_EXTENSIONS)
            or any(part in ("", ".", "..") for part in name.split("/")) for name in every):
        return None, None, f"the cache's ids are not distinct image paths inside {root}"  # as layouts makes them
    from ..data.datasets import Dataset, Split
    from ..data.fingerprint import FileHashes
    from ..data.layouts import find_layout

    located = None
    if dataset.get("layout") == "label file" and Path(dataset["path"]).is_file():  # ids may not be its paths
        try:  # (featcache's own split file): its rows say where each id is, checked as when it was read
            found = find_layout(Path(dataset["path"]))
        except (OSError, FeatcacheError) as error:
            return None, None, f"the label file cannot be read again ({' '.join(str(error).split())[:200]})"
        located = {identity: path for samples in found.samples.values() for identity, _, path in samples}
    files = {split: [located.get(name) if located is not None else os.path.join(root, name) for name in names]
             for split, names in ids.items()}
    if not all(path is not None and os.path.isfile(path) for names in files.values() for path in names):
        return None, None, (f"not every image the cache names is where the label file {dataset['path']} puts it"
                            if located is not None else f"not every image the cache names is in {root}")

    made = Dataset("audit", classes, *(Split(ids[split], labels[split], paths=files[split]) for split in ("train", "test")))
    try:  # every file read: a table of digests beside a cache from someone else could vouch for anything
        both = FileHashes().digests(files["train"] + files["test"])
    except (OSError, FeatcacheError) as error:
        return None, None, f"the images in {root} cannot all be read ({' '.join(str(error).split())[:200]})"
    if made.content_fingerprint(both) != dataset.get("fingerprint"):
        return None, None, f"the images in {root} are not those the cache was made from"
    where = f"read where the label file {dataset['path']} puts them" if located is not None else f"read from {root}"
    return files, {"train": both[:len(files["train"])], "test": both[len(files["train"]):]}, where


def choose_c(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, list[dict]]:
    """(C, grid): the probe's C (train.logreg's grid; the smaller of equals) by accuracy on a stratified
    20% validation split of at most C_ROWS training rows; the probe's fixed C where a class has too few
    images to choose."""
    from sklearn.model_selection import train_test_split

    from ..train.config import MIN_PER_CLASS_TO_CHOOSE
    from ..train.logreg import DEFAULT_LOGREG_CS, FALLBACK_C, probe_pipeline

    counts = np.bincount(labels)
    if counts[counts > 0].min() < MIN_PER_CLASS_TO_CHOOSE:  # as the probe: too few to rank Cs
        return FALLBACK_C, []
    rows = np.arange(len(labels))
    try:
        if len(rows) > C_ROWS:
            rows = train_test_split(rows, train_size=C_ROWS, stratify=labels, random_state=seed)[0]
        fitted, held = train_test_split(rows, test_size=0.2, stratify=labels[rows], random_state=seed)
    except ValueError:  # a class too small to stratify in the sample: the probe's fixed C
        return FALLBACK_C, []
    grid = [{"C": C, "val_acc": float(probe_pipeline(C).fit(features[fitted], labels[fitted]).score(features[held], labels[held]))}
            for C in DEFAULT_LOGREG_CS]
    return max(grid, key=lambda row: row["val_acc"])["C"], grid


def probe_probabilities(features: np.ndarray, labels: np.ndarray, classes: int, folds: int, seed: int,
                        C: float) -> np.ndarray:
    """Out-of-fold class probabilities [N, C]: each row's from a probe fitted without it (stratified K-fold)."""
    from sklearn.model_selection import StratifiedKFold

    from ..train.logreg import probe_pipeline

    probabilities = np.zeros((len(labels), classes), dtype=np.float64)
    try:
        with warnings.catch_warnings():  # a class smaller than `folds` is in fewer folds: its rows still get theirs
            warnings.simplefilter("ignore", UserWarning)
            splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels))
    except ValueError as error:
        raise FeatcacheError(f"cannot make {folds} folds of {len(labels)} training images: {error}") from None
    for fitted, held in splits:
        if len(np.unique(labels[fitted])) < 2:
            raise FeatcacheError("a fold's training images are all of one class: too few images to audit labels")
        model = probe_pipeline(C).fit(features[fitted], labels[fitted])
        probabilities[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
    return probabilities


def require_cleanlab():
    """cleanlab's find_label_issues, or one line naming the extra that installs it."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise FeatcacheError("label issues need cleanlab (AGPL-3.0): pip install 'featcache[audit]'") from None
    return find_label_issues


def ranked_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices cleanlab's find_label_issues flags, most likely wrong first (lowest self-confidence)."""
    find_label_issues = require_cleanlab()
    return np.asarray(find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence"),
                      dtype=np.int64)


def label_issue_rows(views: CleanViews, split: str, probabilities: np.ndarray) -> list[dict]:
    """One row per flagged image of `split`: its given and suggested label and the probe's confidence."""
    labels = views.labels[split]
    rows = []
    for rank, index in enumerate(ranked_label_issues(labels, probabilities), start=1):
        suggested = int(probabilities[index].argmax())
        rows.append({"rank": rank, "split": split, "path": views.ids[split][index],
                     "given": views.classes[labels[index]], "suggested": views.classes[suggested],
                     "given_probability": float(probabilities[index, labels[index]]),
                     "suggested_probability": float(probabilities[index, suggested])})
    return rows


def nearest(queries: np.ndarray, targets: np.ndarray, k: int, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices [Q, k], cosines [Q, k]) of each query row's k most similar target rows, most similar first
    (rows L2-normalised; `same`: queries are the targets, and a row is not its own neighbour)."""
    k = min(k, len(targets) - (1 if same else 0))
    indices = np.empty((len(queries), max(k, 0)), dtype=np.int64)
    cosines = np.empty((len(queries), max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, cosines
    for start in range(0, len(queries), BLOCK_ROWS):
        block = queries[start:start + BLOCK_ROWS] @ targets.T
        if same:
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        if k == 1:  # the nearest alone: argmax is several times faster than a partition
            best = block.argmax(axis=1)
            indices[start:start + len(block), 0] = best
            cosines[start:start + len(block), 0] = block[np.arange(len(block)), best]
            continue
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        indices[start:start + len(block)] = np.take_along_axis(top, order, axis=1)
        cosines[start:start + len(block)] = np.take_along_axis(values, order, axis=1)
    return indices, cosines


def duplicate_rows(views: CleanViews, top: int) -> list[dict]:
    """Pairs within training, within test and across the two: exact copies, then pairs at or above
    NEAR_COSINE and at least the `top` most similar of each scope, most similar first. Each image is
    paired with its most similar image of the scope; across the splits from both sides, so that every
    training copy of a test image is a row of its own."""
    digests = views.digests
    rows = []
    for scope, first, second in (("train-test", "test", "train"), ("train-train", "train", "train"),
                                 ("test-test", "test", "test")):
        same = first == second
        neighbours, cosines = nearest(views.features[first], views.features[second], 1, same)
        pairs = {}
        for query, (target, cosine) in enumerate(zip(neighbours[:, 0], cosines[:, 0])) if neighbours.size else ():
            a, b = (query, int(target)) if not same else (min(query, int(target)), max(query, int(target)))
            pairs[(a, b)] = float(cosine)
        if not same:  # and each training image's nearest test image: a test image's second copy in training
            neighbours, cosines = nearest(views.features[second], views.features[first], 1, False)
            for query, (target, cosine) in enumerate(zip(neighbours[:, 0], cosines[:, 0])) if neighbours.size else ():
                pairs[(int(target), query)] = float(cosine)
        if digests is not None:  # exact copies whatever their features' nearest neighbour
            found = _equal_digests(digests[first], digests[second], same)
            if not same:  # every training copy of a test image, not only the first
                found += [(b, a) for a, b in _equal_digests(digests[second], digests[first], False)]
            for a, b in found:
                pairs.setdefault((a, b), float(views.features[first][a] @ views.features[second][b]))
        ranked = sorted(pairs.items(), key=lambda item: -item[1])
        for rank, ((a, b), cosine) in enumerate(ranked, start=1):
            exact = (digests[first][a] == digests[second][b]) if digests is not None else \
                bool(np.array_equal(views.features[first][a], views.features[second][b]))
            if not exact and cosine < NEAR_COSINE and rank > top:
                continue
            rows.append({"scope": scope, "a_split": first, "a": views.ids[first][a],
                         "a_label": views.classes[views.labels[first][a]], "b_split": second,
                         "b": views.ids[second][b], "b_label": views.classes[views.labels[second][b]],
                         "path": views.ids[second][b],  # the copy --exclude would drop: a leak's training image
                         "cosine": cosine, "kind": "exact" if exact else "near" if cosine >= NEAR_COSINE else "similar",
                         "basis": "file digest" if digests is not None else "clean-view features"})
    kinds = {"exact": 0, "near": 1, "similar": 2}
    rows.sort(key=lambda row: (kinds[row["kind"]], ["train-test", "train-train", "test-test"].index(row["scope"]),
                               -row["cosine"]))
    return rows


def _equal_digests(first: np.ndarray, second: np.ndarray, same: bool) -> list[tuple[int, int]]:
    """Index pairs (a, b) of equal digests, one per copy: each image of `first` with the first image of
    `second` that has its digest (within one split, each later copy with the first), so that a thousand
    copies of one placeholder image are 999 rows, not half a million."""
    where: dict[bytes, int] = {}
    for index, digest in enumerate(second.tolist()):
        where.setdefault(digest, index)
    pairs = []
    for a, digest in enumerate(first.tolist()):
        b = where.get(digest)
        if b is not None and (not same or b < a):
            pairs.append((b, a) if same else (a, b))
    return pairs


def outlier_rows(views: CleanViews, top: int) -> list[dict]:
    """The `top` training images farthest from their own class."""
    labels, features = views.labels["train"], views.features["train"]
    distances = np.full(len(labels), np.nan)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        _, cosines = nearest(features[members], features[members], OUTLIER_NEIGHBOURS, same=True)
        distances[members] = 1 - cosines.mean(axis=1)
    order = [int(index) for index in np.argsort(-np.nan_to_num(distances, nan=-1), kind="stable")
             if not np.isnan(distances[index])][:top]
    return [{"rank": rank, "split": "train", "path": views.ids["train"][index], "label": views.classes[labels[index]],
             "distance": float(distances[index])} for rank, index in enumerate(order, start=1)]

"""The test split featcache makes where a user's images have none: by content, so that it stays put.

An image is in test when H(split seed, its digest: the sha256 of its bytes, with its EXIF orientation
where it has one, fingerprint.file_digest) < f (`test_fraction`, default 0.2, like
fastai's valid_pct): the first 8 bytes of sha256("featcache split <seed> <content sha256>") read as a
number in [0, 1). Adding or removing images never moves another image between splits, exact duplicates
(one content) always land on one side, and `--split-seed` (not `--seed`: every training seed shares one
split) draws another split. Stratified in expectation only: the counts per class are reported. A class
with fewer than ceil(2 / f) images stays wholly in training (a warning says so); a class with no training
image is an error. No torch here.
"""
from __future__ import annotations

import hashlib
import math

from ..errors import FeatcacheError

DEFAULT_TEST_FRACTION = 0.2


def in_test(content_sha256: bytes, seed: int, fraction: float) -> bool:
    """Whether an image of this content (64 hex digits) is in the test split."""
    digest = hashlib.sha256(b"featcache split %d %s" % (seed, content_sha256)).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def split_by_content(samples: list[tuple[str, str, str]], digests, seed: int, fraction: float
                     ) -> tuple[list, list, list[str]]:
    """(train, test, warnings) of samples (id, class, path) whose contents' sha256 are `digests`."""
    smallest = math.ceil(2 / fraction)
    by_class: dict[str, list[int]] = {}
    for index, (_, name, _) in enumerate(samples):
        by_class.setdefault(name, []).append(index)
    train, test, warnings = [], [], []
    for name, indices in by_class.items():
        if len(indices) < smallest:
            warnings.append(f"class {name} has {len(indices)} images, fewer than {smallest} (2 / test fraction "
                            f"{fraction:g}): all kept for training, none tested")
            train += [samples[index] for index in indices]
            continue
        chosen = [index for index in indices if in_test(bytes(digests[index]), seed, fraction)]
        if len(chosen) == len(indices):
            raise FeatcacheError(f"every image of class {name} fell into the test split; use another "
                                 "`split_seed` or a smaller `test_fraction`")
        chosen_set = set(chosen)
        train += [samples[index] for index in indices if index not in chosen_set]
        test += [samples[index] for index in chosen]
    return train, test, warnings

"""Shared fixtures: one small synthetic image folder and one small cache extracted from it (built once
per session, read by every test that only reads them), a factory for the variants some tests need, and
helpers to run the CLI.

The shared folder and cache must never be changed: a test that modifies them works on a copy in its
tmp_path. Each is checked at the end of the session (every file's sha256) and the session errors if a test
changed it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import featcache
from featcache.cli import main
from featcache.data.fingerprint import LISTINGS, TABLE

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm never reaches for the network in a test

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-catdoghorse"
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
CLASSES = ("ant", "bee", "cow")


def write_image_folder(root: Path, train_per_class: int, test_per_class: int, seed: int = 0,
                       sizes=((32, 32), (40, 28), (24, 36))) -> Path:
    """Class-dependent colours plus noise, in mixed sizes (width, height) and formats, so heads can
    learn something."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                base = np.zeros((h, w, 3)) + 60
                base[..., label] += 120
                pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{i:04d}{suffix}")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """The shared image set: 3 classes (ant, bee, cow), 8 training and 4 test images each (24 + 12),
    mixed sizes and formats. Read only: copy it to tmp_path to change it."""
    folder = write_image_folder(tmp_path_factory.mktemp("data") / "tiny", train_per_class=8, test_per_class=4)
    before = tree_digest(folder)
    yield folder
    assert tree_digest(folder) == before, "a test changed the shared image_folder: copy it to tmp_path first"


@pytest.fixture(scope="session")
def make_image_folder(tmp_path_factory):
    """make_image_folder(train_per_class, test_per_class, seed=0, sizes=...) -> a new folder of its own, for
    tests that need another image set (other counts or sizes) or one they may change."""
    def make(train_per_class: int, test_per_class: int, **options) -> Path:
        return write_image_folder(tmp_path_factory.mktemp("images") / "data", train_per_class, test_per_class,
                                  **options)
    return make


@dataclass(frozen=True)
class SmallCache:
    spec: featcache.CacheSpec  # what finds it: image_folder, random weights (seed 0), 32 px, 2 augmented views
    path: Path  # the cache file: train [24, 3, 512], test [12, 512]


SMALL_CACHE_BATCH, SMALL_CACHE_SHARD = 5, 7  # its cut: bit-equal to another extraction with the same cut


@pytest.fixture(scope="session")
def small_cache(image_folder, tmp_path_factory) -> SmallCache:
    """The shared cache: image_folder extracted once (random weights, 32 px, 2 augmented views, batches of
    5 in shards of 7 rows). Read only: copy the file (or its folder) to tmp_path to change it."""
    spec = featcache.CacheSpec(featcache.DataSpec(str(image_folder)), weights="random", image_size=32, views=2,
                               cache_dir=tmp_path_factory.mktemp("small-cache"))
    extracted = featcache.extract(spec, batch_size=SMALL_CACHE_BATCH, shard_size=SMALL_CACHE_SHARD, progress=False)
    before = tree_digest(spec.cache_dir)
    yield SmallCache(spec, Path(extracted.path))
    assert tree_digest(spec.cache_dir) == before, "a test changed the shared small_cache: copy it to tmp_path first"


@pytest.fixture
def cache(small_cache):
    """small_cache opened (in memory), anew for each test: a test's changes to its tensors go no further."""
    return featcache.open_cache(small_cache.path)


@contextmanager
def torch_threads(count: int):
    """This process's intra-op threads set to `count` for a block: a bit-identical comparison with torchrun
    ranks (1 thread each) needs the same threads per process, since oneDNN on Intel CPUs rounds some
    convolutions differently by thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def run_cli():
    """Invoke `featcache ARGS`; returns click's Result (stdout and stderr kept apart)."""
    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    return run


def tree_digest(folder: Path) -> dict:
    """Every file under folder with the sha256 of its bytes: to prove nothing was touched. The table of
    remembered file hashes and folder listings (featcache.data.fingerprint) are left out: updating those memos is not a change to
    any cache or run."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name not in (TABLE, LISTINGS)}


def export_and_predict(run_cli, run_dir: Path, images: Path, out: Path) -> tuple[float | None, dict]:
    """`featcache export run_dir` to out/model.pt2, then featcache.predict over `images` with that file:
    (its accuracy on the folder, the file's metadata)."""
    exported = run_cli("export", run_dir, "--out", out / "model.pt2")
    assert exported.exit_code == 0, exported.output
    predicted = featcache.predict(out / "model.pt2", [images], out / "predictions.csv", progress=False)
    return predicted["folder_accuracy"], featcache.load_model(out / "model.pt2")[1]


def cached_and_end_to_end_heads(image_folder: Path, cache, backbone: str, config, lr: float):
    """((head, history) trained from `cache`, (head, history) of the notebook's loop running `backbone`
    (random weights, seed 0, 32 px) on every batch, epoch e on the cache's view 1 + e % V): what a
    cache must reproduce."""
    import torch

    from featcache.backbone import load_backbone
    from featcache.data.datasets import load_dataset
    from featcache.data.images import ImageData, decode_all
    from featcache.train.end_to_end import reference_feature_extraction
    from featcache.train.heads import train_linear_head

    dataset = load_dataset(str(image_folder))
    cached = train_linear_head(cache.train_features, cache.train_labels, cache.test_features, cache.test_labels,
                               config, lr=lr)
    data = ImageData(decode_all(dataset.train, 32), torch.from_numpy(dataset.train.labels),
                     decode_all(dataset.test, 32), torch.from_numpy(dataset.test.labels), dataset.classes, 32, 0)
    return cached, reference_feature_extraction(data, load_backbone("random", 0, backbone), config, lr, cache.views,
                                                log=None)


def assert_clean_failure(result, *words, exit_code: int = 1):
    """One line on stderr holding each of `words`, exit status `exit_code` (1: an error while running; 2: a
    bad option, a usage error), no traceback."""
    assert result.exit_code == exit_code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """mount(size, options) -> a folder on a tmpfs of that size; skipped where mounting is not permitted."""
    mounts = []

    def mount(size: str, options: str = ""):
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        spec = f"size={size}" + (f",{options}" if options else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", spec, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(params=["0", "1"], ids=["commits-inline", "commits-on-a-thread"])
def commit_thread(request, monkeypatch):
    """Both ways extraction commits its shards (featcache.cache.pipeline.ShardCommitter): on the thread
    that computes them, as on CPUs, and on a writer thread, as on GPUs (subprocesses inherit it)."""
    monkeypatch.setenv("FEATCACHE_COMMIT_THREAD", request.param)
    return request.param

"""--exclude (DataSpec.exclude, featcache.data.exclusions): images left out of both splits, recorded in
the cache key and in every run, read from a list or from a CSV such as the audit's own."""
import json

import numpy as np
import pytest

import featcache
from featcache.cache.key import cache_key, cache_provenance
from featcache.csvfiles import csv_text
from featcache.data.datasets import load_dataset, summary_line
from conftest import assert_clean_failure
from test_own_images import class_folders, write


def key(dataset):
    return cache_key(cache_provenance(dataset, "random", 0, 32, 1))


@pytest.fixture
def pets(tmp_path):
    """A label file without a split column (featcache makes the split) listing class folders' images and
    one training image named =x.png beside it, which a spreadsheet would run as a formula: (the label
    file, one test id, "=x.png")."""
    data = class_folders(tmp_path / "pets", per_class=14)
    rows = [{"path": path.relative_to(data).as_posix(), "label": path.parent.name} for path in sorted(data.rglob("*.png"))]
    for seed in range(424242, 424262):  # the split is by content: an =x.png that lands in training
        write(data / "=x.png", seed)
        labels = data / "labels.csv"
        labels.write_text(csv_text(["path", "label"], rows + [{"path": "=x.png", "label": "ant"}]))
        dataset = load_dataset(str(labels))
        if "=x.png" in dataset.train.ids:
            break
    assert "=x.png" in dataset.train.ids and "'=x.png" in labels.read_text()
    return labels, dataset.test.ids[0], "=x.png"


def test_excluded_images_leave_both_splits_and_change_the_key(pets, tmp_path):
    data, test_id, formula = pets
    listed = tmp_path / "drop.txt"
    listed.write_text(f"{formula}\n\n{test_id}\n")
    before, after = load_dataset(str(data)), load_dataset(str(data), exclude=listed)
    assert formula not in after.train.ids and test_id not in after.test.ids
    assert set(after.train.ids) == set(before.train.ids) - {formula}  # every other image keeps its side
    assert set(after.test.ids) == set(before.test.ids) - {test_id}
    assert after.description["excluded"]["images"] == {"train": 1, "test": 1}
    assert "2 images excluded (1 training, 1 test)" in summary_line(after)
    assert key(after) != key(before)
    # the same images by absolute path, in a CSV with other columns and in another order: the same key
    as_csv = tmp_path / "drop.csv"
    as_csv.write_text(csv_text(["rank", "path"], [{"rank": 1, "path": str((data.parent / test_id).resolve())},
                                                  {"rank": 2, "path": formula}]))
    assert "'=x.png" in as_csv.read_text()  # written spreadsheet-safe, read back through read_csv's unescaping
    assert key(load_dataset(str(data), exclude=as_csv)) == key(after)
    # an exclude file that removes nothing leaves the key of no exclusions
    empty = tmp_path / "none.txt"
    empty.write_text("\n")
    assert key(load_dataset(str(data), exclude=empty)) == key(before)


def test_a_cache_made_with_exclusions_is_never_reused_without_them(pets, tmp_path, run_cli):
    data, test_id, formula = pets
    listed = tmp_path / "drop.txt"
    listed.write_text(f"{formula}\n{test_id}\n")
    common = ("--data", data, "--weights", "random", "--image-size", 32, "--views", 1, "--cache-dir", tmp_path / "c")
    result = run_cli("extract", *common, "--exclude", listed)
    assert result.exit_code == 0, result.output
    assert "2 images excluded (1 training, 1 test)" in result.output
    excluded = featcache.CacheSpec(featcache.DataSpec(str(data), exclude=listed), weights="random", image_size=32,
                                   views=1, cache_dir=tmp_path / "c")
    plain = featcache.CacheSpec(featcache.DataSpec(str(data)), weights="random", image_size=32, views=1,
                                cache_dir=tmp_path / "c")
    path = excluded.locate()[2]
    assert path.is_file() and plain.locate()[2] != path and not plain.locate()[2].exists()
    cache = featcache.open_cache(path)
    assert formula not in cache.test_ids and test_id not in cache.test_ids
    record = json.loads(cache.attrs["dataset"])["excluded"]
    assert record["images"] == {"train": 1, "test": 1} and record["file"] == str(listed.resolve())
    with pytest.raises(featcache.FeatcacheError, match="no cache for these inputs"):
        featcache.open_cache(plain)
    result = run_cli("train-head", *common, "--exclude", listed, "--epochs", 1, "--out", tmp_path / "head")
    assert result.exit_code == 0, result.output
    history = featcache.read_run(tmp_path / "head")
    assert json.loads(history["cache_attrs"]["dataset"])["excluded"]["ids_sha256"] == record["ids_sha256"]
    result = run_cli("extract", *common)  # without: a cache of its own, not the one above
    assert result.exit_code == 0 and "reused" not in result.output, result.output


def test_an_end_to_end_run_records_its_exclusions(pets, tmp_path, run_cli):
    data, test_id, formula = pets
    listed = tmp_path / "drop.txt"
    listed.write_text(formula + "\n")
    result = run_cli("scratch", "--data", data, "--image-size", 32, "--epochs", 1, "--out", tmp_path / "run",
                     "--exclude", listed)
    assert result.exit_code == 0, result.output
    recorded = featcache.read_run(tmp_path / "run")["config"]["data"]
    assert recorded["exclude"] == str(listed) and recorded["excluded"]["images"] == {"train": 1, "test": 0}
    assert formula not in np.load(tmp_path / "run" / "predictions.npz")["ids"].tolist()


def test_a_path_that_names_no_image_is_one_line(pets, tmp_path, run_cli):
    data, _, formula = pets
    listed = tmp_path / "drop.txt"
    listed.write_text(f"{formula}\nant/typo.png\n../outside.png\n")
    with pytest.raises(featcache.FeatcacheError, match=r"2 of the 3 excluded paths are not images of .*'ant/typo.png'"):
        load_dataset(str(data), exclude=listed)
    result = run_cli("extract", "--data", data, "--weights", "random", "--image-size", 32, "--cache-dir",
                     tmp_path / "c", "--exclude", listed)
    assert_clean_failure(result, "ant/typo.png")
    no_column = tmp_path / "drop.csv"
    no_column.write_text("id\nant/000.png\n")
    with pytest.raises(featcache.FeatcacheError, match="needs a `path` column"):
        load_dataset(str(data), exclude=no_column)
    with pytest.raises(featcache.FeatcacheError, match="does not exist"):
        load_dataset(str(data), exclude=tmp_path / "missing.txt")
    binary = tmp_path / "drop.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(featcache.FeatcacheError, match="not UTF-8"):
        load_dataset(str(data), exclude=binary)


def test_split_folders_and_per_class_count_what_is_left(make_image_folder, tmp_path):
    data = make_image_folder(8, 4)
    listed = tmp_path / "drop.txt"
    listed.write_text("train/ant/0000.jpg\ntest/bee/0001.png\n")
    dataset = load_dataset(str(data), per_class=3, exclude=listed)
    ants = [identity for identity in dataset.train.ids if identity.startswith("train/ant/")]
    assert ants == ["train/ant/0001.png", "train/ant/0002.jpg", "train/ant/0003.png"]  # the first 3 left
    assert "test/bee/0001.png" not in dataset.test.ids and len(dataset.test) == 11


def test_cifar10_ids_are_excluded(monkeypatch, tmp_path):
    """CIFAR-10's ids are train/<index> and test/<index> (torchvision's dataset, faked: no download here)."""
    import torchvision.datasets

    class FakeCIFAR10:
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

        def __init__(self, root, train, download):
            count = 40 if train else 20
            self.targets = [index % 10 for index in range(count)]
            self.data = np.full((count, 4, 4, 3), 7, dtype=np.uint8)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    listed = tmp_path / "drop.txt"
    listed.write_text("train/3\ntest/5\n")  # a cat, a dog
    dataset = load_dataset("cifar10", per_class=2, exclude=listed)
    assert dataset.train.ids == ["train/5", "train/7", "train/13", "train/15", "train/17", "train/23"]  # cat 3 left out: 13, 23
    assert dataset.test.ids == ["test/3", "test/7", "test/13", "test/15", "test/17"]
    assert dataset.description["excluded"]["images"] == {"train": 1, "test": 1}
    listed.write_text("train/3\ntrain/13\ntrain/23\ntrain/33\n")  # every cat
    with pytest.raises(featcache.FeatcacheError, match="excludes every training image of cat"):
        load_dataset("cifar10", exclude=listed)
    assert "cat" not in load_dataset("cifar10", classes=["dog", "horse"], exclude=listed).classes  # not asked for
    listed.write_text("train/40\n")
    with pytest.raises(featcache.FeatcacheError, match="'train/40'"):
        load_dataset("cifar10", exclude=listed)


def test_excluding_a_whole_class_or_with_a_cache_file_is_refused(make_image_folder, tmp_path, run_cli, small_cache):
    data = make_image_folder(3, 2)
    listed = tmp_path / "drop.txt"
    listed.write_text("".join(f"train/ant/{k:04d}{'.png' if k % 2 else '.jpg'}\n" for k in range(3)))
    with pytest.raises(featcache.FeatcacheError, match="excludes every training image of ant"):
        load_dataset(str(data), exclude=listed)  # else ant and its test images would vanish without a word
    assert load_dataset(str(data), classes=["bee", "cow"], exclude=listed).classes == ["bee", "cow"]
    result = run_cli("train-head", small_cache.path, "--exclude", listed, "--out", tmp_path / "head")
    assert result.exit_code == 2 and "give CACHE or --exclude, not both" in result.output
    long = tmp_path / "long.txt"
    long.write_text("x" * 5000 + "\n")
    with pytest.raises(featcache.FeatcacheError) as error:
        load_dataset(str(data), exclude=long)
    assert len(str(error.value)) < 400  # the entry is cut in the one line

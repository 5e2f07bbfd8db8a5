"""A user's own images in the layouts other tools take (featcache.data.layouts), the test split made by
content where there is none (featcache.data.splits), and no silent cap on images per class."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.cache.key import cache_key, cache_provenance
from featcache.data.datasets import load_dataset, summary_line
from featcache.data.splits import in_test
from conftest import CLASSES


def write(path, seed, size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def class_folders(root, per_class=12, classes=CLASSES):
    for label, name in enumerate(classes):
        for index in range(per_class):
            write(root / name / f"{index:03d}.png", 1000 * label + index)
    return root


def key_of(data, cache_dir):
    dataset = load_dataset(str(data))
    return cache_key(cache_provenance(dataset, "random", 0, 32, 1)), dataset


def test_class_folders_get_a_test_split_made_by_content(tmp_path):
    data = class_folders(tmp_path / "pets")
    dataset = load_dataset(str(data))
    assert dataset.description["layout"] == "class folders" and dataset.classes == list(CLASSES)
    assert len(dataset.train) + len(dataset.test) == 36 and len(dataset.test) > 0
    for split, expected in ((dataset.train, False), (dataset.test, True)):
        for path in split.paths:
            digest = featcache.data.fingerprint.file_sha256(path)
            assert in_test(digest, 0, 0.2) is expected
    assert "class folders" in summary_line(dataset) and "imbalance" in summary_line(dataset)


def test_the_split_stays_put_when_images_are_added_and_duplicates_never_straddle(tmp_path):
    data = class_folders(tmp_path / "pets")
    before = load_dataset(str(data))
    for name in CLASSES:  # more images, and an exact copy of one already there
        for index in range(12, 30):
            write(data / name / f"{index:03d}.png", 5000 + index + 100 * CLASSES.index(name))
    shutil.copy(data / "ant" / "000.png", data / "ant" / "copy-of-000.png")
    after = load_dataset(str(data))
    assert set(before.test.ids) <= set(after.test.ids) and set(before.train.ids) <= set(after.train.ids)
    side = "ant/000.png" in after.test.ids
    assert ("ant/copy-of-000.png" in after.test.ids) == side


def test_split_folders_val_and_their_names(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "valid"):
        class_folders(data / split, per_class=6)
    dataset = load_dataset(str(data))
    assert dataset.description["split_rule"] == "the val split given, as the test split"
    assert len(dataset.test) == 18 and dataset.test.ids[0].startswith("valid/")
    class_folders(data / "test", per_class=4)
    dataset = load_dataset(str(data))
    assert len(dataset.test) == 12 and any("18 val images not used" in note for note in dataset.description["notes"])
    shutil.copytree(data / "valid", data / "validation")
    with pytest.raises(featcache.FeatcacheError, match="valid and validation"):
        load_dataset(str(data))
    for name in ("val", "validation"):  # each name of a val split, alone beside train/, is the test split
        shutil.rmtree(data / "test")
        for other in ("val", "valid", "validation"):
            if other != name and (data / other).exists():
                shutil.rmtree(data / other)
        if not (data / name).exists():
            class_folders(data / name, per_class=5)
        dataset = load_dataset(str(data))
        assert dataset.description["split_rule"] == "the val split given, as the test split"
        assert len(dataset.test) == 15 and dataset.test.ids[0].startswith(f"{name}/")
        class_folders(data / "test", per_class=4)


def test_train_alone_gets_a_split_made(tmp_path):
    data = tmp_path / "data"
    class_folders(data / "train")
    dataset = load_dataset(str(data))
    assert dataset.description["layout"] == "split folders" and len(dataset.test) > 0
    assert all(identity.startswith("train/") for identity in dataset.train.ids + dataset.test.ids)


def test_class_folders_are_walked_recursively_and_hidden_entries_ignored(tmp_path):
    data = class_folders(tmp_path / "pets", per_class=10)
    write(data / "ant" / "more" / "deeper" / "x.png", 77)
    write(data / "ant" / ".ipynb_checkpoints" / "y.png", 78)
    write(data / ".hidden" / "z.png", 79)
    write(data / "__MACOSX" / "ant" / "w.png", 80)
    (data / "bee" / ".DS_Store").write_bytes(b"\0\1")
    (data / "bee" / "notes.txt").write_text("not an image")
    write(data / "loose.png", 81)  # beside the class folders: no class
    (data / "cow" / "linked").symlink_to(data / "ant")
    dataset = load_dataset(str(data))
    ids = dataset.train.ids + dataset.test.ids
    assert "ant/more/deeper/x.png" in ids and len(ids) == 31 and dataset.classes == list(CLASSES)
    assert dataset.description["skipped"] == {"hidden": 4, "not an image by its name": 1,
                                              "linked folders (not walked)": 1, "images outside a class folder": 1}
    assert ("7 files skipped (4 hidden, 1 not an image by its name, 1 linked folders (not walked), 1 images "
            "outside a class folder)") in summary_line(dataset)
    listings = featcache.data.fingerprint.FolderListings(tmp_path / "tables")
    load_dataset(str(data), listings=listings)
    listings.save()  # read back from the remembered listings: the same count
    again = load_dataset(str(data), listings=featcache.data.fingerprint.FolderListings(tmp_path / "tables"))
    assert again.description["skipped"] == dataset.description["skipped"]


def test_a_label_file_with_a_split_column_gives_the_folders_key(tmp_path):
    """The same images, classes and splits as train/ and test/ folders or as a CSV of the same relative
    paths: the same key, ids and labels."""
    data = tmp_path / "data"
    class_folders(data / "train", per_class=5)
    class_folders(data / "test", per_class=3)
    folders_key, folders = key_of(data, tmp_path / "cache")
    rows = ["path,label,split"] + [f"{identity},{identity.split('/')[1]},{identity.split('/')[0]}"
                                   for identity in folders.train.ids + folders.test.ids]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    file_key, listed = key_of(data / "labels.csv", tmp_path / "cache")
    assert file_key == folders_key and listed.train.ids == folders.train.ids and listed.test.ids == folders.test.ids
    assert listed.description["layout"] == "label file" and listed.name == folders.name


def test_a_label_file_without_a_split_column_and_as_tsv(tmp_path):
    data = class_folders(tmp_path / "pets")
    rows = ["path\tlabel"] + [f"{path.relative_to(data).as_posix()}\t{path.parent.name}"
                              for path in sorted(data.rglob("*.png"))]
    (data / "labels.tsv").write_text("\n".join(rows) + "\n")
    listed = load_dataset(str(data / "labels.tsv"))
    folders = load_dataset(str(data))
    assert listed.test.ids == folders.test.ids and "contents" in listed.description["split_rule"]


@pytest.mark.parametrize("rows, words", [
    (["path,label", "ant/000.png,ant", "ant/missing.png,ant"], "line 3: .* does not exist"),
    (["path,label", "ant/000.png,"], "line 2: an empty path or label"),
    (["path,label", "ant/000.png,ant", "ant/000.png,bee"], "line 3: 'ant/000.png' is listed twice"),
    (["path,label,split", "ant/000.png,ant,holdout"], "split 'holdout' is not train, test or val"),
    (["file,class", "ant/000.png,ant"], "needs a header row"),
    (["path,label", "/etc/hostname.png,ant"], "is absolute"),
    (["path,label", "../elsewhere/000.png,ant"], "line 2: '../elsewhere/000.png' leads outside the label file's folder"),
    (["path,label", "ant/../../elsewhere/000.png,ant"], "leads outside the label file's folder"),
])
def test_a_bad_label_file_is_one_line_naming_the_row(tmp_path, rows, words, run_cli):
    data = class_folders(tmp_path / "pets", per_class=3)
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(featcache.FeatcacheError, match=words):
        load_dataset(str(data / "labels.csv"))
    result = run_cli("extract", "--data", data / "labels.csv", "--weights", "random", "--image-size", 32,
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output


def test_a_small_class_stays_in_training_and_an_empty_one_is_an_error(tmp_path):
    data = class_folders(tmp_path / "pets", per_class=20, classes=("ant", "bee"))
    class_folders(data, per_class=4, classes=("cow",))  # under ceil(2 / 0.2) = 10
    dataset = load_dataset(str(data))
    assert sum(identity.startswith("cow/") for identity in dataset.train.ids) == 4
    assert not any(identity.startswith("cow/") for identity in dataset.test.ids)
    assert any("class cow has 4 images" in note for note in dataset.description["notes"])
    with pytest.raises(featcache.FeatcacheError, match="every image of class"):
        load_dataset(str(data), test_fraction=0.999999)


def test_no_silent_cap_and_all_is_accepted(tmp_path):
    data = tmp_path / "data"
    class_folders(data / "train", per_class=600, classes=("ant", "bee"))  # more than CIFAR-10's 500
    class_folders(data / "test", per_class=2, classes=("ant", "bee"))
    assert len(featcache.DataSpec(str(data)).load().train) == 1200
    assert len(featcache.DataSpec(str(data), per_class="all").load().train) == 1200
    assert len(featcache.DataSpec(str(data), per_class="7").load().train) == 14
    with pytest.raises(featcache.ConfigError, match="'all'"):
        featcache.DataSpec(str(data), per_class="most")


def test_extract_records_the_layout_and_writes_the_split_beside_the_cache(tmp_path, run_cli):
    data = class_folders(tmp_path / "pets")
    result = run_cli("extract", "--data", data, "--weights", "random", "--image-size", 32, "--views", 1,
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    recorded = featcache.open_cache(next((tmp_path / "cache").glob("pets-*.h5")))
    assert '"layout": "class folders"' in recorded.attrs["dataset"] and '"split_rule"' in recorded.attrs["dataset"]
    split_file = next((tmp_path / "cache").glob("pets-*-split.csv"))
    assert next((tmp_path / "cache").glob("pets-*-classes.csv")).read_text().startswith("class,train,test")
    again = load_dataset(str(split_file))  # the split, read back as a label file
    original = load_dataset(str(data))
    assert again.description["split_rule"] == "the test split given"
    for split in ("train", "test"):
        assert getattr(again, split).ids == getattr(original, split).ids  # the id column: the same ids
        assert sorted(Path(p).resolve() for p in getattr(again, split).paths) == \
            sorted(Path(p).resolve() for p in getattr(original, split).paths)
    assert again.fingerprint() == original.fingerprint()  # and so the same key
    assert again.name == original.name == "pets"  # and the same cache file: it is reused, not extracted again
    result = run_cli("extract", "--data", split_file, "--weights", "random", "--image-size", 32, "--views", 1,
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0 and "reused complete cache" in result.output, result.output


def test_an_empty_made_test_split_and_capitalised_split_folders_are_one_line(tmp_path):
    data = class_folders(tmp_path / "few", per_class=4)  # every class under ceil(2 / 0.2) = 10
    with pytest.raises(featcache.FeatcacheError, match="test split made from .* is empty"):
        load_dataset(str(data))
    for name in ("Train", "Test"):
        class_folders(tmp_path / "caps" / name, per_class=3)
    with pytest.raises(featcache.FeatcacheError, match="Test, Train/ but no train/ folder"):
        load_dataset(str(tmp_path / "caps"))


def test_linked_folders_are_not_walked(tmp_path):
    data = class_folders(tmp_path / "pets", per_class=10)
    (data / "ant" / "loop").symlink_to(data / "ant")  # a loop
    (data / "ant" / "up").symlink_to(data)  # the other classes' images, as ants
    outside = class_folders(tmp_path / "elsewhere", per_class=2, classes=("ant",))
    (data / "bee" / "away").symlink_to(outside / "ant")
    dataset = load_dataset(str(data))
    assert len(dataset.train) + len(dataset.test) == 30


def test_an_end_to_end_run_records_the_layout(tmp_path, run_cli):
    data = class_folders(tmp_path / "pets")
    result = run_cli("scratch", "--data", data, "--image-size", 32, "--epochs", 1, "--out", tmp_path / "run",
                     "--per-class", "all")
    assert result.exit_code == 0, result.output
    recorded = featcache.read_run(tmp_path / "run")["config"]["data"]
    assert recorded["layout"] == "class folders" and recorded["per_class"] == "all"
    assert recorded["split_sizes"]["train"] + recorded["split_sizes"]["test"] == 36


def test_balanced_accuracy_by_hand_on_an_imbalanced_set():
    """8 images of class 0, 2 of class 1, none of class 2; every prediction class 0: plain accuracy 0.8
    hides that class 1 is never right, balanced accuracy (0.5, the mean of recalls 1 and 0) shows it."""
    from sklearn.metrics import balanced_accuracy_score

    from featcache.evaluate.runs import balanced_accuracy, prediction_record

    labels = np.array([0] * 8 + [1] * 2)
    assert balanced_accuracy(labels, np.zeros(10, dtype=int), 3) == 0.5
    predicted = np.array([0] * 6 + [1] * 2 + [1, 0])  # class 0: 6 of 8, class 1: 1 of 2
    assert balanced_accuracy(labels, predicted, 3) == pytest.approx((6 / 8 + 1 / 2) / 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels, predicted = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
        assert balanced_accuracy(labels, predicted, 4) == pytest.approx(balanced_accuracy_score(labels, predicted))
    probabilities = np.eye(3, dtype=np.float32)[[0] * 8 + [1, 0]]
    record = prediction_record({"labels": np.array([0] * 8 + [1] * 2), "probabilities": probabilities})
    assert record == {"final_test_balanced_acc": 0.75, "test_class_counts": [8, 2, 0]}


def oriented_photo(folder, orientation=6):
    """rot.jpg, a JPEG stored sideways with an EXIF orientation tag, and beside it upright.png (its pixels
    turned as the tag says: what a phone's gallery shows) and sideways.png (its pixels as stored)."""
    from PIL import ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    pixels = np.clip(np.linspace(0, 255, 40)[None, :, None] + rng.integers(0, 60, (24, 40, 3)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90).save(folder / "rot.jpg", quality=95, exif=exif)
    with Image.open(folder / "rot.jpg") as stored:
        sideways = stored.convert("RGB")
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    assert sideways.size == (24, 40) and upright.size == (40, 24)  # the tag turns it back
    upright.save(folder / "upright.png")
    sideways.save(folder / "sideways.png")
    return folder


def test_an_exif_orientation_tag_gives_the_clean_view_of_the_upright_image_and_enters_the_fingerprint(tmp_path):
    from featcache.data import fingerprint

    data = tmp_path / "photos"
    for split, count in (("train", 6), ("test", 2)):
        for label, name in enumerate(CLASSES):
            for index in range(count):
                write(data / split / name / f"{index}.png", 100 * label + 10 * index + (split == "test"))
    oriented_photo(data / "test" / "ant")
    spec = featcache.CacheSpec(featcache.DataSpec(str(data)), weights="random", image_size=32, views=1,
                               cache_dir=tmp_path / "cache")
    cache = featcache.open_cache(featcache.extract(spec, progress=False).path)
    rows = {name: cache.test_features[cache.test_ids.index(f"test/ant/{name}")] for name in
            ("rot.jpg", "upright.png", "sideways.png")}
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(rows["rot.jpg"], rows["upright.png"], rtol=0, atol=1e-5)
    assert (rows["rot.jpg"] - rows["sideways.png"]).abs().max() > 1e-2  # the way up matters to the features
    jpeg, png = str(data / "test" / "ant" / "rot.jpg"), str(data / "test" / "ant" / "upright.png")
    assert fingerprint.exif_orientation(jpeg) == 6 and fingerprint.exif_orientation(png) == 1
    assert fingerprint.file_digest(jpeg) != fingerprint.file_sha256(jpeg)  # a cache made sideways is not reused
    assert fingerprint.file_digest(png) == fingerprint.file_sha256(png)  # every other image keeps its key


def test_the_line_before_work_and_histories_bit_identical_with_and_without_the_warm_up(tmp_path):
    """The estimate's warm-up (featcache.estimate) runs on a copy and draws nothing from the run's random
    streams: the same run with and without it (echo given or not) gives bit-identical histories and
    predictions, and the same extraction gives identical features."""
    data = class_folders(tmp_path / "pets")
    lines, runs = [], {}
    for name, echo in (("quiet", None), ("said", lines.append)):
        runs[name] = featcache.finetune(featcache.DataSpec(str(data)), "random", image_size=32, epochs=2,
                                        out=tmp_path / name, echo=echo)
    assert runs["quiet"].history == runs["said"].history
    assert np.array_equal(runs["quiet"].predictions["probabilities"], runs["said"].predictions["probabilities"])
    assert lines[0].startswith("pets (class folders;") and "imbalance" in lines[0] and "no files skipped" in lines[0]
    work = next(line for line in lines if line.startswith("work: "))
    assert "fine-tuning, 2 epochs of" in work and "estimated" in work and "to shorten" not in work
    features = {}
    for name, echo in (("quiet", None), ("said", lines.append)):
        spec = featcache.CacheSpec(featcache.DataSpec(str(data)), weights="random", image_size=32, views=1,
                                   cache_dir=tmp_path / f"cache-{name}")
        features[name] = featcache.open_cache(featcache.extract(spec, progress=False, echo=echo).path).train_features
    assert np.array_equal(features["quiet"].numpy(), features["said"].numpy())
    assert any(line.startswith("work: extraction of ") for line in lines)


def test_a_long_estimate_names_what_shortens_it():
    torch = pytest.importorskip("torch")
    from featcache.estimate import Estimate, work_line

    line = work_line([Estimate("extraction of 57,600 views", 3000.0), Estimate("fine-tuning", 1200.0)], 224,
                     torch.device("cpu"), views=15)
    assert "extraction of 57,600 views (about 50 min); fine-tuning (about 20 min); estimated 70 min in all" in line
    assert "--image-size 64" in line and "fewer --views" in line and "--device cuda" in line
    assert "shorten" not in work_line([Estimate("fine-tuning", 1700.0)], 224, torch.device("cpu"))


def test_the_orientation_is_read_from_the_header_without_decoding(tmp_path, monkeypatch):
    """A PNG's tag comes from an eXIf chunk before its pixels; reading it decodes nothing (PIL's getexif
    would decode the whole image, before featcache's bound is checked)."""
    from PIL import PngImagePlugin

    from featcache.data import fingerprint
    from featcache.data.datasets import read_image

    exif = Image.Exif()
    exif[0x0112] = 8
    pixels = np.random.default_rng(3).integers(0, 256, (10, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "tagged.png", exif=exif)
    write(tmp_path / "plain.png", 4)
    loads = []
    real_load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: loads.append(self) or real_load(self))
    assert fingerprint.exif_orientation(str(tmp_path / "tagged.png")) == 8
    assert fingerprint.exif_orientation(str(tmp_path / "plain.png")) == 1
    assert loads == []
    upright = np.asarray(read_image(tmp_path / "tagged.png"))
    assert upright.shape == (30, 10, 3) and np.array_equal(upright, np.rot90(pixels))  # 8: turned a quarter left

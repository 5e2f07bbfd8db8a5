"""featcache audit: label issues from out-of-fold probe probabilities, duplicates and leakage across the
splits, outliers, and the self-contained page, from a cache's clean views alone."""
import json
import os
import shutil
from pathlib import Path
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.evaluate import audit as tables

pytest.importorskip("cleanlab")


def gaussian_rows(rows=1500, classes=3, dim=16, flip=0.05, seed=0):
    """Well-separated Gaussian classes, `flip` of the labels moved to another class: (features, labels,
    true labels, flipped indices)."""
    rng = np.random.default_rng(seed)
    truth = np.arange(rows) * classes // rows
    means = rng.standard_normal((classes, dim)) * 4
    features = (means[truth] + rng.standard_normal((rows, dim))).astype(np.float32)
    flipped = rng.choice(rows, int(flip * rows), replace=False)
    labels = truth.copy()
    labels[flipped] = (truth[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return features, labels, truth, np.sort(flipped)


def test_flipped_labels_are_found_with_few_clean_rows_flagged():
    """1,500 rows of 3 well-separated Gaussian classes, 5% of labels flipped: recall of the flips at least
    0.9, at most 1% of the clean rows flagged."""
    features, labels, truth, flipped = gaussian_rows()
    C, _ = tables.choose_c(features, labels, 0)
    probabilities = tables.probe_probabilities(features, labels, 3, folds=5, seed=0, C=C)
    flagged = set(tables.ranked_label_issues(labels, probabilities).tolist())
    recall = len(flagged & set(flipped.tolist())) / len(flipped)
    clean = set(range(len(labels))) - set(flipped.tolist())
    assert recall >= 0.9, recall
    assert len(flagged & clean) <= 0.01 * len(clean), len(flagged & clean)


def test_k_fold_finds_a_flip_that_in_sample_probabilities_hide():
    """Few rows in many dimensions: a probe fitted on every row memorises the flipped one (its given label
    gets a high probability, nothing is flagged); out-of-fold probabilities find it."""
    rng = np.random.default_rng(1)
    rows, dim = 60, 200
    truth = np.arange(rows) * 3 // rows
    features = (rng.standard_normal((3, dim))[truth] * 1.5 + rng.standard_normal((rows, dim))).astype(np.float32)
    labels = truth.copy()
    labels[5] = 2  # a class-0 row labelled 2
    from featcache.train.logreg import probe_pipeline

    in_sample = probe_pipeline(1.0).fit(features, labels).predict_proba(features)
    assert in_sample[5, 2] > 0.5 and 5 not in tables.ranked_label_issues(labels, in_sample).tolist()
    out_of_fold = tables.probe_probabilities(features, labels, 3, folds=5, seed=0, C=1.0)
    assert 5 in tables.ranked_label_issues(labels, out_of_fold).tolist()


def test_nearest_in_blocks_matches_the_whole_matrix(monkeypatch):
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((70, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    monkeypatch.setattr(tables, "BLOCK_ROWS", 16)  # several blocks and a short last one
    indices, cosines = tables.nearest(rows, rows, 3, same=True)
    whole = rows @ rows.T
    np.fill_diagonal(whole, -np.inf)
    expected = np.argsort(-whole, axis=1, kind="stable")[:, :3]
    np.testing.assert_allclose(cosines, np.take_along_axis(whole, expected, axis=1), rtol=1e-6)
    assert (indices != np.arange(70)[:, None]).all()


def write(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """Split folders whose training split holds an exact copy and a resized, re-encoded copy of two test
    images (smooth images, so that a copy at another size is the same picture), extracted at 32 px."""
    root = tmp_path_factory.mktemp("leaky")
    data = root / "data"
    rng = np.random.default_rng(3)
    grid = np.linspace(0, 1, 48)
    for split, count in (("train", 10), ("test", 4)):
        for label, name in enumerate(("ant", "bee", "cow")):
            for index in range(count):
                a, b, c = rng.uniform(0.5, 6, 3)
                phase = rng.uniform(0, 6, 3)
                pixels = np.stack([np.sin(a * grid[:, None] + phase[k] + b * grid[None, :] * (k + 1)) for k in range(3)],
                                  axis=-1)
                write(data / split / name / f"{index}.png", ((pixels * 0.5 + 0.5) * 255 * (0.6 + 0.1 * label))
                      .clip(0, 255).astype(np.uint8))
    shutil.copy(data / "test" / "bee" / "1.png", data / "train" / "bee" / "copy.png")
    with Image.open(data / "test" / "cow" / "2.png") as image:
        image.resize((40, 40), Image.Resampling.BICUBIC).save(data / "train" / "cow" / "resized.jpg", quality=90)
    spec = featcache.CacheSpec(featcache.DataSpec(str(data)), weights="random", image_size=32, views=1,
                               cache_dir=root / "cache")
    path = featcache.extract(spec, progress=False).path
    result = featcache.audit(path, root / "audit", folds=2, top=10)
    return {"root": root, "data": data, "cache": path, "result": result}


def test_an_exact_and_a_resized_copy_of_test_images_in_training_are_found_as_leakage(leaky):
    rows = [row for row in leaky["result"]["duplicates"] if row["scope"] == "train-test"]
    exact = [row for row in rows if row["kind"] == "exact"]
    assert [(row["a"], row["b"]) for row in exact] == [("test/bee/1.png", "train/bee/copy.png")]
    assert exact[0]["basis"] == "file digest"
    pair = next(row for row in rows if row["b"] == "train/cow/resized.jpg")
    assert pair["a"] == "test/cow/2.png"
    others = [row["cosine"] for row in rows if row["b"] not in ("train/cow/resized.jpg", "train/bee/copy.png")]
    assert pair["cosine"] > max(others)  # the resized copy ranks above every pair of distinct images
    written = json.loads((leaky["root"] / "audit" / "audit.json").read_text())
    assert written["duplicates"] == json.loads(json.dumps(leaky["result"]["duplicates"]))
    summary = written["summary"]
    assert summary["duplicates"]["exact"] == 1 and summary["duplicates"]["leaked"] >= 1 and summary["images"] == {"train": 32, "test": 12}


def test_the_audits_own_csv_given_to_exclude_drops_the_leaked_copies(leaky, run_cli, tmp_path):
    """duplicates.csv's path column names a leak's training copy: given back as --exclude (after keeping
    only the leaks a user confirmed), the copies leave training and a new cache is made."""
    rows = featcache.read_csv(leaky["root"] / "audit" / "duplicates.csv")
    leaks = [row for row in rows if row["scope"] == "train-test" and row["kind"] != "similar"]  # exact or near
    assert sorted(row["path"] for row in leaks) == ["train/bee/copy.png", "train/cow/resized.jpg"]
    reviewed = tmp_path / "reviewed.csv"
    reviewed.write_text(featcache.csvfiles.csv_text(list(rows[0]), leaks))
    result = run_cli("extract", "--data", leaky["data"], "--weights", "random", "--image-size", 32, "--views", 1,
                     "--cache-dir", tmp_path / "cache", "--exclude", reviewed)
    assert result.exit_code == 0 and "2 images excluded (2 training, 0 test)" in result.output, result.output
    again = featcache.audit(featcache.CacheSpec(featcache.DataSpec(str(leaky["data"]), exclude=reviewed),
                                                weights="random", image_size=32, views=1,
                                                cache_dir=tmp_path / "cache"), tmp_path / "again", folds=2)
    assert again["summary"]["images"] == {"train": 30, "test": 12} and again["summary"]["duplicates"]["exact"] == 0


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.outside, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster") and value and not value.startswith("data:image/png;base64,"):
                self.outside.append((tag, name, value))
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_the_page_parses_embeds_its_thumbnails_and_links_nothing_outside(leaky):
    text = (leaky["root"] / "audit" / "audit.html").read_text()
    page = Page()
    page.feed(text)
    page.close()
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.outside == [] and not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert "url(" not in text and "@import" not in text
    assert "test/bee/1.png" in text and "train/cow/resized.jpg" in text
    for name in ("label_issues.csv", "duplicates.csv", "outliers.csv"):
        assert featcache.read_csv(leaky["root"] / "audit" / name) is not None


def test_a_streamed_and_a_non_resnet_cache_are_audited(tmp_path):
    """A synthetic cache of 1,280-wide features (EfficientNet's width) too large to hold in memory under
    a small budget is read as any other: only its clean view is read."""
    from featcache.cache.synthetic import write_synthetic_cache

    path = write_synthetic_cache(tmp_path / "wide.h5", 3000, views=3, test_rows=60, dim=1280, separation=1.0)
    streamed = featcache.open_cache(path, max_memory="45MB")  # 61 MB of features: streamed under 45 MB
    assert isinstance(streamed, featcache.cache.streaming.StreamedCache)
    streamed.close()
    import tracemalloc

    tracemalloc.start()  # numpy's and h5py's arrays are traced
    try:
        views = tables.read_clean_views(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    whole = 3000 * 4 * 1280 * 4  # every view: what an in-memory open would hold
    assert views.features["train"].shape == (3000, 1280) and peak < whole / 1.5, peak
    result = featcache.audit(path, tmp_path / "out", folds=3, top=5)
    assert result["summary"]["images"] == {"train": 3000, "test": 60}
    assert result["summary"]["probe"]["out_of_fold_accuracy"] > 0.9
    assert result["summary"]["duplicates"]["basis"] == "clean-view features"  # no image files
    assert len(result["outliers"]) == 5 and (tmp_path / "out" / "audit.json").is_file()


def test_the_audit_imports_neither_torchvision_nor_timm(leaky, tmp_path):
    code = ("import sys, featcache; featcache.audit(sys.argv[1], sys.argv[2], folds=2); "
            "loaded = [m for m in ('torchvision', 'timm') if m in sys.modules]; assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code, str(leaky["cache"]), str(tmp_path / "a")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_command_prints_the_probe_and_the_counts(leaky, run_cli, tmp_path):
    result = run_cli("audit", leaky["cache"], "--out", tmp_path / "cli", "--folds", 2, "--test-labels")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("probe: out-of-fold accuracy") and "2 folds" in lines[0]
    assert "label issues:" in lines[-1] and "test" in lines[-1] and "across training and test" in lines[-1]


def test_without_cleanlab_one_line_names_the_extra(leaky, run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    result = run_cli("audit", leaky["cache"], "--out", tmp_path / "no", "--folds", 2)
    assert result.exit_code == 1 and "featcache[audit]" in result.output


def test_a_cache_of_another_backbone_is_audited(leaky, tmp_path):
    """MobileNetV3-Small (torchvision, 1,024 features) extracted from the same images: the same copy found."""
    spec = featcache.CacheSpec(featcache.DataSpec(str(leaky["data"])), weights="random", image_size=32, views=1,
                               cache_dir=tmp_path / "cache", backbone="mobilenet_v3_small")
    path = featcache.extract(spec, progress=False).path
    assert featcache.open_cache(path).train_features.shape[-1] == 1024  # what its classifier sees
    result = featcache.audit(path, tmp_path / "out", folds=2, top=5)
    exact = [(row["a"], row["b"]) for row in result["duplicates"] if row["kind"] == "exact"
             and row["scope"] == "train-test"]
    assert exact == [("test/bee/1.png", "train/bee/copy.png")]


def test_text_from_the_cache_cannot_inject_markup():
    from featcache.evaluate.audit_page import audit_html

    evil = '<script>alert(1)</script><img src="http://x/y.png">'
    summary = {"cache": evil, "probe": {"out_of_fold_accuracy": 0.5, "folds": 2},
               "duplicates": {"exact": 0, "near": 0, "near_cosine": 0.975}}
    page = audit_html(summary, [{"split": "train", "path": evil, "given": evil, "suggested": evil,
                                 "given_probability": 0.1}],
                      [{"a_split": "test", "a": evil, "a_label": evil, "b_split": "train", "b": evil, "b_label": evil,
                        "kind": "near", "scope": "train-test", "cosine": 0.99}],
                      [{"split": "train", "path": evil, "label": evil, "distance": 0.5}], lambda split, name: None)
    parser = Page()
    parser.feed(page)
    assert "script" not in parser.tags and parser.outside == [] and "&lt;script&gt;" in page


def test_a_cache_naming_files_outside_its_data_gets_none_read(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    attrs = {"dataset": json.dumps({"path": str(tmp_path / "data")})}
    (tmp_path / "data" / "shadow").write_bytes(b"x")
    for names in (["../secret.png"], [str(tmp_path / "secret.png")], ["a/../../secret.png"], ["shadow"],
                  ["x.png", "x.png"]):
        files, _, why = tables._image_files(attrs, {"train": names, "test": []},
                                            {"train": np.zeros(len(names), np.int64), "test": np.zeros(0, np.int64)},
                                            ["a"])
        assert files is None and "not distinct image paths inside" in why


def test_images_changed_since_extraction_are_not_shown_beside_the_old_features(leaky, tmp_path):
    """A cache names its files by path; the files are trusted only where they give back the dataset
    fingerprint the cache records (a cache naming someone else's files, or an image edited since, does not)."""
    data = shutil.copytree(leaky["data"], tmp_path / "data")
    spec = featcache.CacheSpec(featcache.DataSpec(str(data)), weights="random", image_size=32, views=1,
                               cache_dir=tmp_path / "cache")
    path = featcache.extract(spec, progress=False).path
    assert tables.read_clean_views(path).files_source.startswith("read from")
    with Image.open(data / "train" / "ant" / "3.png") as image:
        image.rotate(90).save(data / "train" / "ant" / "3.png")
    views = tables.read_clean_views(path)
    assert views.files is None and views.digests is None and "not those the cache was made from" in views.files_source
    result = featcache.audit(path, tmp_path / "out", folds=2)
    assert result["summary"]["duplicates"]["basis"] == "clean-view features"
    assert "data:image/png" not in (tmp_path / "out" / "audit.html").read_text()


def test_every_training_copy_of_a_test_image_is_a_row():
    rng = np.random.default_rng(5)
    train, test = rng.standard_normal((20, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    train[3] = train[7] = test[0]  # two copies in training
    features = {"train": train, "test": test}
    tables.standardise(features)
    views = tables.CleanViews(["a", "b"], {"train": [f"train/{k}" for k in range(20)], "test": [f"test/{k}" for k in range(4)]},
                              {"train": np.arange(20) % 2, "test": np.arange(4) % 2}, features, None, "key")
    rows = [row for row in tables.duplicate_rows(views, top=1) if row["scope"] == "train-test" and row["kind"] == "exact"]
    assert sorted(row["path"] for row in rows) == ["train/3", "train/7"] and {row["a"] for row in rows} == {"test/0"}


def test_a_dimension_of_almost_no_spread_does_not_swamp_the_rest():
    """0.7 in every training row is not exactly constant in float32 arithmetic, and one nonzero value in a
    column is almost no spread (141 standard deviations for a test row that has it): neither may take most of
    a 512-wide test row's length."""
    rng = np.random.default_rng(7)
    train = rng.standard_normal((20_000, 512)).astype(np.float32)
    train[:, 0] = 0.7
    train[:, 1] = 0.0
    train[5, 1] = 1.0
    test = train[:1].copy()
    test[0, :2] = (0.8, 1.0)
    features = {"train": train, "test": test}
    tables.standardise(features)
    assert np.abs(features["test"][0, :2]).max() < 0.5, features["test"][0]


def test_a_dimension_constant_in_training_does_not_swamp_the_rest():
    train = np.ones((10, 3), dtype=np.float32)
    train[:, 1:] = np.random.default_rng(6).standard_normal((10, 2))
    test = train[:2].copy()
    test[:, 0] = 5.0  # off the constant, where the training spread is nothing
    features = {"train": train, "test": test}
    tables.standardise(features)
    assert (features["test"][:, 0] == 0).all()
    np.testing.assert_allclose(features["test"], features["train"][:2], atol=1e-6)


def test_a_thousand_copies_are_one_row_each_not_every_pair():
    digests = np.array([b"a" * 64] * 1000 + [b"b" * 64] * 3, dtype="S64")
    within = tables._equal_digests(digests, digests, same=True)
    assert len(within) == 999 + 2 and all(a < b for a, b in within)
    across = tables._equal_digests(digests[:5], digests, same=False)
    assert across == [(k, 0) for k in range(5)]


def test_awkward_sizes_choose_c_and_fold_without_failing():
    rng = np.random.default_rng(4)
    labels = np.arange(10_001) % 3  # 10,001 rows: a sample of C_ROWS leaves 1 row, fewer than the classes
    features = (rng.standard_normal((10_001, 4)) + labels[:, None]).astype(np.float32)
    C, _ = tables.choose_c(features, labels, 0)
    assert C > 0
    small = np.array([0] * 30 + [1] * 30 + [2] * 2)  # a class of 2 images, 5 folds
    probabilities = tables.probe_probabilities(features[:62], small, 3, folds=5, seed=0, C=1.0)
    assert probabilities.shape == (62, 3) and np.allclose(probabilities.sum(1), 1)


def test_a_runs_top_losses_and_most_confused_pairs(leaky, run_cli, tmp_path):
    """--run: a train-head run, a folder of its seeds and an experiment folder (approach subfolders) read
    from their predictions.npz; the losses and confusions match a hand computation."""
    from sklearn.metrics import confusion_matrix

    head = featcache.train_head(leaky["cache"], epochs=2, out=tmp_path / "head")
    featcache.train_head_seeds(leaky["cache"], "0-1", epochs=2, out=tmp_path / "seeds")
    experiment = tmp_path / "experiment"
    shutil.copytree(tmp_path / "head", experiment / "feature-extraction")
    featcache.finetune(featcache.DataSpec(str(leaky["data"])), "random", epochs=1, image_size=32,
                       out=experiment / "fine-tuning")
    result = run_cli("audit", leaky["cache"], "--out", tmp_path / "out", "--folds", 2, "--top", 5,
                     "--run", tmp_path / "head", "--run", tmp_path / "seeds", "--run", experiment)
    assert result.exit_code == 0, result.output
    assert "test predictions wrong" in result.output.splitlines()[-1]
    written = json.loads((tmp_path / "out" / "audit.json").read_text())
    runs = written["summary"]["runs"]
    assert [run["seeds"] for run in runs] == [1, 2, 1, 1] and all(run["in_this_cache"] == 12 for run in runs)
    assert len({run["run"] for run in runs}) == 4  # the two feature-extraction runs told apart by folder
    stored = np.load(tmp_path / "head" / "predictions.npz")
    losses = -np.log(stored["probabilities"][np.arange(12), stored["labels"]])
    mine = [row for row in written["top_losses"] if row["run"] == runs[0]["run"]]
    assert [row["path"] for row in mine] == [str(stored["ids"][k]) for k in np.argsort(-losses, kind="stable")[:5]]
    np.testing.assert_allclose([row["loss"] for row in mine], np.sort(losses)[::-1][:5], rtol=1e-5)
    matrix = confusion_matrix(stored["labels"], stored["probabilities"].argmax(1), labels=range(3))
    pairs = {(row["given"], row["predicted"]): row["count"] for row in written["most_confused"]
             if row["run"] == runs[0]["run"]}
    classes = head.record["classes"]
    assert pairs == {(classes[a], classes[b]): int(matrix[a, b]) for a in range(3) for b in range(3)
                     if a != b and matrix[a, b]}
    assert runs[0]["wrong"] == int(matrix.sum() - np.trace(matrix))
    seeds = [np.load(tmp_path / "seeds" / f"seed-{k}" / "predictions.npz") for k in (0, 1)]
    mean = (seeds[0]["probabilities"] + seeds[1]["probabilities"]) / 2  # one test order for both seeds
    top = next(row for row in written["top_losses"] if row["run"] == runs[1]["run"] and row["rank"] == 1)
    assert top["loss"] == pytest.approx(float((-np.log(mean[np.arange(12), seeds[0]["labels"]])).max()), rel=1e-5)
    for name in ("top_losses.csv", "most_confused.csv"):
        assert featcache.read_csv(tmp_path / "out" / name)
    page = Page()
    page.feed((tmp_path / "out" / "audit.html").read_text())
    assert len(page.images) > 30 and page.outside == []  # the top losses' thumbnails besides the audit's own
    result = run_cli("audit", leaky["cache"], "--out", tmp_path / "bad", "--run", tmp_path)
    assert result.exit_code == 1 and "not a featcache run directory" in result.output
    assert not (tmp_path / "bad").exists()  # refused before the work


def test_a_damaged_cache_is_refused_before_anything_is_written(small_cache, tmp_path, run_cli):
    """A byte flipped in an augmented view, which the audit never reads: every byte is checked all the same."""
    import h5py

    from test_shards import _flip_byte

    path = Path(shutil.copy(small_cache.path, tmp_path))
    with h5py.File(path, "r") as handle:
        chunk = handle["train/features"].id.get_chunk_info_by_coord((0, 2, 0))
    _flip_byte(path, chunk.byte_offset + 16 * 512 * 4 + 7)
    result = run_cli("audit", path, "--out", tmp_path / "out", "--folds", 2)
    assert result.exit_code == 1 and "is damaged" in result.output and "train rows" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_cache_made_from_featcaches_own_split_file_gets_its_thumbnails(tmp_path):
    """The split file's ids are the original folder's relative paths, not paths under the split file: its
    rows say where each image is, and the fingerprint check holds them to the cache's."""
    from test_own_images import class_folders

    data = class_folders(tmp_path / "pets")
    featcache.extract(featcache.CacheSpec(featcache.DataSpec(str(data)), weights="random", image_size=32, views=1,
                                          cache_dir=tmp_path / "first"), progress=False)
    [split_file] = (tmp_path / "first").glob("pets-*-split.csv")
    path = featcache.extract(featcache.CacheSpec(featcache.DataSpec(str(split_file)), weights="random", image_size=32,
                                                 views=1, cache_dir=tmp_path / "second"), progress=False).path
    assert json.loads(featcache.open_cache(path).attrs["dataset"])["path"] == str(split_file.resolve())
    views = tables.read_clean_views(path)
    assert views.files_source.startswith("read where the label file") and views.files is not None
    assert os.path.realpath(views.files["train"][0]).startswith(str(data.resolve()))
    result = featcache.audit(path, tmp_path / "out", folds=2)
    assert result["summary"]["duplicates"]["basis"] == "file digest"
    assert "data:image/png;base64," in (tmp_path / "out" / "audit.html").read_text()


def test_a_hash_table_beside_the_cache_vouches_for_nothing(leaky, tmp_path):
    """A table of digests shipped beside a crafted cache, naming the user's files with their stat, could
    make any files match the recorded fingerprint: the audit hashes the files itself."""
    from featcache.data.fingerprint import FileHashes

    folder = tmp_path / "cache"
    folder.mkdir()
    path = Path(shutil.copy(leaky["cache"], folder))
    files = tables.read_clean_views(path).files
    forged = FileHashes(folder)
    forged.digests(files["train"] + files["test"])
    forged.columns["sha256"] = np.full_like(forged.columns["sha256"], b"f" * 64)
    forged.changed = True
    forged.save()
    before = (folder / "file-hashes-2.npz").read_bytes()
    views = tables.read_clean_views(path)
    assert views.files_source.startswith("read from") and views.digests["train"][0] != b"f" * 64
    assert (folder / "file-hashes-2.npz").read_bytes() == before  # nor written into a folder it was given


def test_a_label_file_of_a_thousand_columns_and_more_is_one_line(tmp_path):
    from featcache.data.datasets import load_dataset

    wide = tmp_path / "labels.csv"
    wide.write_text(",".join(["path", "label"] + [f"c{k}" for k in range(2000)]) + "\n" + "x.png,a\n" * 3)
    with pytest.raises(featcache.FeatcacheError, match="2,002 columns, over featcache's bound"):
        load_dataset(str(wide))
    assert len(featcache.read_csv(wide)[0]) == 2002  # the public reader keeps no such bound (predictions.csv)

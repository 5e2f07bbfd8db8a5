"""Caches, run folders and CSVs from someone else: a cache's structure is checked before a byte of its data
is read (no links or storage outside the file, no shape larger than the file, labels and checksums that
fit), a run folder's files are checked when read, labels cannot name a folder outside --out, and CSV
cells never become spreadsheet formulas. Each bad file is one line and a non-zero exit."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import featcache
from conftest import assert_clean_failure, tree_digest


def copy_of(small_cache, tmp_path):
    target = tmp_path / "cache" / small_cache.path.name
    target.parent.mkdir()
    shutil.copy(small_cache.path, target)
    return target


def replace(handle, name, **dataset):
    del handle[name]
    handle.create_dataset(name, **dataset)


def huge_shape(path, tmp_path):
    """A fresh file of about 10 KB with the cache's attributes, declaring 2**31 training rows."""
    with h5py.File(path) as source:
        attrs = dict(source.attrs)
    path.unlink()
    with h5py.File(path, "w") as handle:
        handle.attrs.update(attrs)
        rows = 1 << 31
        for split, shape in (("train", (rows, 3, 512)), ("test", (rows, 512))):
            handle.create_dataset(f"{split}/features", shape=shape, dtype="float32", chunks=(256, 1, 512)[:len(shape)])
            handle.create_dataset(f"{split}/labels", shape=(rows,), dtype="int64", chunks=(4096,))
            handle.create_dataset(f"{split}/ids", shape=(rows,), dtype=h5py.string_dtype(), chunks=(4096,))
    assert path.stat().st_size < 12_000  # about 10 KB, nearly all of it the attributes


def external_link(path, tmp_path):
    with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
        other["features"] = np.zeros((12, 512), np.float32)
    with h5py.File(path, "r+") as handle:
        del handle["test/features"]
        handle["test/features"] = h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "features")


def external_storage(path, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"private bytes of any local file " * 100)
    with h5py.File(path, "r+") as handle:
        replace(handle, "train/labels", shape=(24,), dtype="int64", external=[(str(secret), 0, 24 * 8)])


def virtual(path, tmp_path):
    with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
        other["labels"] = np.zeros(12, np.int64)
    layout = h5py.VirtualLayout(shape=(12,), dtype="int64")
    layout[:] = h5py.VirtualSource(str(tmp_path / "elsewhere.h5"), "labels", shape=(12,))
    with h5py.File(path, "r+") as handle:
        del handle["test/labels"]
        handle.create_virtual_dataset("test/labels", layout)


def soft_link(path, tmp_path):
    with h5py.File(path, "r+") as handle:
        del handle["test/labels"]
        handle["test/labels"] = h5py.SoftLink("/train/labels")


def compressed(path, tmp_path):
    with h5py.File(path, "r+") as handle:
        replace(handle, "test/labels", data=handle["test/labels"][()], compression="gzip")


def setting(name, value):
    def change(path, tmp_path):
        with h5py.File(path, "r+") as handle:
            handle.attrs[name] = value
    return change


def label(split, value):
    def change(path, tmp_path):
        with h5py.File(path, "r+") as handle:
            handle[f"{split}/labels"][0] = value
    return change


def no_views(path, tmp_path):
    with h5py.File(path, "r+") as handle:
        replace(handle, "train/features", data=handle["train/features"][:, :1])
        handle.attrs["views"] = 0


def without(name):
    def change(path, tmp_path):
        with h5py.File(path, "r+") as handle:
            del handle.attrs[name]
    return change


def checksums(edit):
    def change(path, tmp_path):
        with h5py.File(path, "r+") as handle:
            table = json.loads(handle.attrs["checksums"])
            handle.attrs["checksums"] = json.dumps(edit(table))
    return change


def shared_strings(path, tmp_path):
    """Every train id pointing at one stored 1 MB string: 24 MB read from a file of about 1 MB (with 10**6
    rows, a terabyte)."""
    with h5py.File(path, "r+") as handle:
        replace(handle, "train/ids", data=["x" * (1 << 20)] + [""] * 23, dtype=h5py.string_dtype())
        offset = handle["train/ids"].id.get_offset()
    with open(path, "r+b") as file:
        file.seek(offset)
        first = file.read(16)
        file.write(first * 23)


def array_attribute(path, tmp_path):
    with h5py.File(path, "r+") as handle:
        handle.attrs["format"] = np.array(["featcache"] * 3, dtype=h5py.string_dtype())


def features_of_dtype(path, tmp_path):
    with h5py.File(path, "r+") as handle:
        replace(handle, "test/features", data=handle["test/features"][()].astype(np.float64))


BAD_CACHES = {
    "huge shape": (huge_shape, "declares"),
    "external link": (external_link, "ExternalLink"),
    "external storage": (external_storage, "external storage"),
    "virtual dataset": (virtual, "virtual dataset"),
    "soft link": (soft_link, "SoftLink"),
    "compressed": (compressed, "compressed"),
    "empty checksums": (setting("checksums", "{}"), "train checksums do not cover its 24 rows"),
    "checksums a list": (setting("checksums", "[]"), "not a JSON dict"),
    "no checksums": (without("checksums"), "checksums attribute is not a JSON text"),
    "checksums with a gap": (checksums(lambda table: {**table, "train": table["train"][1:]}), "train checksums"),
    "checksums overlapping": (checksums(lambda table: {**table, "test": table["test"] * 2}), "test checksums"),
    "label too large": (label("train", 3), "outside the 3 classes"),
    "label negative": (label("test", -1), "outside the 3 classes"),
    "views=0": (no_views, "0 augmented views"),
    "format_version text": (setting("format_version", "two"), "format version 'two'"),
    "classes not a list": (setting("classes", '{"a": 1}'), "not a JSON list"),
    "classes repeated": (setting("classes", '["ant", "ant", "cow"]'), "distinct"),
    "key not text": (setting("key", 5), "key attribute is not a string"),
    "float64 features": (features_of_dtype, "not float32"),
    "ids sharing one string": (shared_strings, "train/ids declare 25,165,824 bytes of strings"),
    "an array attribute": (array_attribute, "attribute 'format' is not a single number or string"),
    "classes nested deeply": (setting("classes", "[" * 100_000 + "]" * 100_000), "classes attribute is not valid"),
}


@pytest.mark.parametrize("problem", BAD_CACHES)
@pytest.mark.parametrize("command", ["train-head", "verify"])
def test_a_bad_cache_is_refused_before_its_data_are_read(small_cache, run_cli, tmp_path, problem, command):
    path = copy_of(small_cache, tmp_path)
    make, words = BAD_CACHES[problem]
    make(path, tmp_path)
    before = tree_digest(tmp_path)
    args = ["train-head", path, "--out", tmp_path / "run", "--epochs", "1"] if command == "train-head" else ["verify", path]
    assert_clean_failure(run_cli(*args), str(path), words)
    assert tree_digest(tmp_path) == before


def test_an_untouched_copy_loads(small_cache, tmp_path):
    """The checks above refuse what was changed, not every copy."""
    cache = featcache.open_cache(copy_of(small_cache, tmp_path))
    assert cache.train_features.shape == (24, 3, 512)


@pytest.fixture(scope="module")
def run_dir(small_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    featcache.train_head(small_cache.path, epochs=1, out=out)
    return out


def edit_history(run, **changes):
    history = json.loads((run / "history.json").read_text())
    (run / "history.json").write_text(json.dumps({**history, **changes}))


def shadowed_predictions(run):
    """A member named `probabilities` beside `probabilities.npy`: np.load prefers it, so it is never read."""
    import zipfile
    with zipfile.ZipFile(run / "predictions.npz", "a") as archive:
        archive.writestr("probabilities", b"\x93NUMPY anything")


@pytest.mark.parametrize("damage, words", [
    (lambda run: (run / "history.json").write_text("[1, 2]"), "holds a JSON list"),
    (lambda run: (run / "history.json").write_text('{"approach": "x", "train_loss": "a", "train_acc": [], '
                                                   '"test_acc": []}'), "train_loss"),
    (lambda run: edit_history(run, config={"seed": "x/../../elsewhere"}), "config.seed"),
    (lambda run: edit_history(run, cache_attrs=[]), "cache_attrs"),
    (lambda run: edit_history(run, test_acc=[]), "test_acc"),
    (lambda run: (run / "predictions.npz").write_bytes((run / "predictions.npz").read_bytes()[:300]), "cannot be read"),
    (lambda run: shadowed_predictions(run), "not an array"),
    (lambda run: np.savez_compressed(run / "predictions.npz", ids=np.array(["a"]), labels=np.array([0]),
                                     probabilities=np.ones((1, 3), np.float32)), "compressed"),
    (lambda run: np.savez(run / "predictions.npz", ids=np.array(["a"]), labels=np.array([7]),
                          probabilities=np.ones((1, 3), np.float32)), "outside its 3 classes"),
])
def test_a_damaged_run_folder_is_one_line(run_dir, run_cli, tmp_path, damage, words):
    run = shutil.copytree(run_dir, tmp_path / "run")
    damage(run)
    assert_clean_failure(run_cli("compare", run, "--out", tmp_path / "cmp"), words)


def test_a_npz_declaring_more_than_it_holds_is_refused(tmp_path):
    """A member whose header declares 10**12 float64s over 8 bytes of data: np.load would allocate for the header."""
    import io
    import zipfile

    from featcache.npz import read_npz

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    member.write(b"\0" * 8)
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", member.getvalue())
    with pytest.raises(ValueError, match="declares shape \\(1000000000000,\\) of float64, more than it holds"):
        read_npz(path, ("x",))


@pytest.mark.parametrize("label", ["..", ".", "-.-"])
def test_a_backbones_label_cannot_name_a_folder_outside_out(label, image_folder, run_cli, tmp_path):
    assert_clean_failure(run_cli("backbones", "--data", image_folder, "--weights", "random", "--image-size", "32",
                                 "--views", "2", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out",
                                 "--backbone", f"resnet18,label={label}", "--backbone", "resnet18,label=b"),
                         "label")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


FORMULAS = ["=x", "+1", "-2+3", "@SUM(A1)", "\tx", "'quoted", "plain", "-"]


def test_csv_cells_are_never_formulas_and_read_back_unchanged(tmp_path):
    from featcache.csvfiles import csv_text

    path = tmp_path / "t.csv"
    path.write_text(csv_text(["text", "number"], [{"text": value, "number": -0.25} for value in FORMULAS]))
    lines = path.read_text().splitlines()[1:]
    assert all(line.lstrip('"')[0] not in "=+-@\t" for line in lines), lines
    assert [row["text"] for row in featcache.read_csv(path)] == FORMULAS
    assert {row["number"] for row in featcache.read_csv(path)} == {"-0.25"}


def test_a_file_named_like_a_formula_round_trips_through_predictions_csv(run_dir, image_folder, tmp_path, monkeypatch):
    """Predicted from inside the folder, so that each path cell is the bare file name, `=x.png` first."""
    folder = tmp_path / "images"
    folder.mkdir()
    source = next((image_folder / "test").rglob("*.png"))
    for name in ("=x.png", "+y.png", "@z.png"):
        shutil.copy(source, folder / name)
    out = tmp_path / "p.csv"
    monkeypatch.chdir(folder)
    featcache.predict(run_dir, [Path(".")], out, progress=False)
    cells = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert sorted(cells) == ["'+y.png", "'=x.png", "'@z.png"], cells  # behind an apostrophe: text in a spreadsheet
    assert sorted(row["path"] for row in featcache.read_csv(out)) == ["+y.png", "=x.png", "@z.png"]

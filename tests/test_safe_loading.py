"""No code runs from a file featcache is given: an exported model is rebuilt from its data and tensors
(never deserialized as a program), a checkpoint is loaded with weights_only=True and its layout
checked. Each crafted file would create `marker` if its code ran."""
import csv
import json
import shutil

import pytest
import torch

import featcache
from crafted import EXPORT_VECTORS, checkpoint_that_runs_code, rewritten
from featcache.deploy import archive


@pytest.fixture(scope="module")
def exported(small_cache, tmp_path_factory):
    """A genuine export of a linear head trained on the shared small cache."""
    folder = tmp_path_factory.mktemp("exported")
    featcache.train_head(small_cache.path, epochs=2, out=folder / "run")
    featcache.export(folder / "run", folder / "model.pt2")
    return folder / "model.pt2"


def predicted(model, image_folder, out):
    featcache.predict(model, [image_folder / "test"], out, progress=False)
    with open(out, newline="") as handle:
        return [row["class_1"] for row in csv.DictReader(handle)]


REFUSED = {"pickled payload": "pickled payload", "aotinductor entry": "never writes",
           "sample inputs": "weights_only=True loads", "shape expression": "sympy would evaluate",
           "target outside aten": "not an aten operator", "two programs": "two entries named",
           "call spec that imports": "calling convention"}


@pytest.mark.parametrize("vector", sorted(EXPORT_VECTORS))
def test_a_crafted_export_runs_no_code(vector, exported, image_folder, run_cli, tmp_path):
    """Refused in one line naming the rule, whether featcache would read the part (a payload) or only
    plain torch.export.load would (the program, sample inputs, a shared library)."""
    marker = tmp_path / "marker"
    crafted = EXPORT_VECTORS[vector](exported, tmp_path / "crafted.pt2", marker)
    result = run_cli("predict", crafted, image_folder / "test", "--out", tmp_path / "p.csv", "--quiet")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert REFUSED[vector] in result.stderr, result.stderr
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_a_guard_that_is_code_is_refused(exported, tmp_path):
    """guards_code, which torch.export.load's .module() runs (2ea39b0's predict created the marker),
    holds size arithmetic alone."""
    marker = tmp_path / "marker"

    def change(name, data):
        if name.endswith("models/model.json"):
            model = json.loads(data)
            model["guards_code"].append(f"__import__('pathlib').Path({str(marker)!r}).touch() or 1")
            return json.dumps(model).encode()
        return data
    with pytest.raises(featcache.FeatcacheError, match="guard .* not plain size arithmetic"):
        featcache.load_model(rewritten(exported, tmp_path / "guard.pt2", change))
    assert not marker.exists()


def test_the_genuine_export_is_rebuilt_exactly(exported, image_folder, tmp_path):
    """featcache's rebuilt network gives what PyTorch's own loading of its own file gives."""
    model, metadata = featcache.load_model(exported)
    program = torch.export.load(exported).module()  # our own file: the one place torch.export.load is fine
    images = torch.randint(0, 256, (3, 3, 40, 30), dtype=torch.uint8)
    torch.testing.assert_close(model(images), program(images))
    assert metadata["head"] == {"kind": "linear"}


@pytest.mark.parametrize("change,words", [
    (lambda table: table.update({"ghost": next(iter(table.values()))}), "already named"),  # one payload, twice
    (lambda table: next(iter(table.values()))["tensor_meta"].update(sizes=[{"as_int": 7}], strides=[{"as_int": 1}]),
     "bytes for shape"),
    (lambda table: next(iter(table.values()))["tensor_meta"].update(dtype=99), "not a plain CPU tensor"),
    (lambda table: next(iter(table.values())).update(path_name="../../etc/passwd"), "does not hold"),
])
def test_payload_tables_that_lie_are_one_line(change, words, exported, tmp_path):
    import json

    from crafted import rewritten

    def edit(name, data):
        if name.endswith("model_weights_config.json"):
            table = json.loads(data)
            change(table["config"])
            return json.dumps(table).encode()
        return data
    crafted = rewritten(exported, tmp_path / "lying.pt2", edit)
    with pytest.raises(featcache.FeatcacheError, match=words) as refused:
        featcache.load_model(crafted)
    assert "\n" not in str(refused.value)


def test_dtype_numbers_are_torchs():
    from torch._export.serde import schema

    assert archive.STRIDED == schema.Layout.Strided.value
    for number, dtype in archive.DTYPES.items():
        assert getattr(schema.ScalarType, {torch.uint8: "BYTE", torch.int8: "CHAR", torch.int16: "SHORT",
                                           torch.int32: "INT", torch.int64: "LONG", torch.float16: "HALF",
                                           torch.float32: "FLOAT", torch.float64: "DOUBLE", torch.bool: "BOOL",
                                           torch.bfloat16: "BFLOAT16"}[dtype]).value == number


def test_a_crafted_checkpoint_runs_no_code(image_folder, run_cli, tmp_path):
    marker = tmp_path / "marker"
    common = ["scratch", "--data", image_folder, "--image-size", 32, "--epochs", 1, "--out", tmp_path / "run"]
    (tmp_path / "run").mkdir()
    checkpoint_that_runs_code(tmp_path / "run" / "checkpoint.pt", marker)
    result = run_cli(*common, "--resume")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "cannot resume from" in result.stderr and not marker.exists()


def test_a_checkpoint_of_another_layout_is_one_line(image_folder, run_cli, tmp_path):
    (tmp_path / "run").mkdir()
    torch.save({"epoch": "zero", "model": [1, 2]}, tmp_path / "run" / "checkpoint.pt")
    result = run_cli("scratch", "--data", image_folder, "--image-size", 32, "--epochs", 1, "--out", tmp_path / "run",
                     "--resume")
    assert result.exit_code == 1 and "not a featcache checkpoint" in result.stderr, result.output
    shutil.rmtree(tmp_path / "run")


@pytest.mark.parametrize("change,words", [
    (lambda meta: meta.update(image_size=20000), "image size 20000"),  # predict would resize to 22,857 px a side
    (lambda meta: meta.update(image_size=float("inf")), "image size inf"),
    (lambda meta: meta.update(image_size="224"), "image size '224'"),
    (lambda meta: meta.update(classes=[f"c{k}" for k in range(100_000)]), "3 class probabilities for the 100000"),
    (lambda meta: meta.update(classes=[1, 2, 3]), "no list of class names"),
    (lambda meta: meta.update(backbone="torchvision.resnet152"), "do not fit a resnet152"),  # 230 MB, never built
])
def test_a_featcache_json_that_lies_is_one_line(change, words, exported, tmp_path):
    """What featcache.json names is checked against the tensors before a network of that size is built."""
    import json

    from crafted import rewritten

    def edit(name, data):
        if name.endswith("extra/featcache.json"):
            metadata = json.loads(data)
            change(metadata)
            return json.dumps(metadata).encode()
        return data
    crafted = rewritten(exported, tmp_path / "lying.pt2", edit)
    with pytest.raises(featcache.FeatcacheError, match=words) as refused:
        featcache.load_model(crafted)
    assert "\n" not in str(refused.value)


def test_a_damaged_payload_is_one_line(exported, tmp_path):
    content = bytearray(exported.read_bytes())
    at = content.find(b"PK\x03\x04", len(content) // 2)  # an entry's header in the second half
    content[at + 200] ^= 0xFF  # inside that entry's data: its CRC fails when read
    (tmp_path / "flipped.pt2").write_bytes(bytes(content))
    with pytest.raises(featcache.FeatcacheError, match="damaged|not a|do not fit|bytes") as refused:
        featcache.load_model(tmp_path / "flipped.pt2")
    assert "\n" not in str(refused.value)


def nested_options():
    """A list holding itself twice, 40 deep: 20 KB pickled, 2**40 values when written as JSON."""
    value = [0]
    for _ in range(40):
        value = [value, value]
    return value


@pytest.mark.parametrize("content, words", [
    (lambda: {"epoch": 0, "history": {}, "model": {}, "optimizer": {}, "generator": torch.zeros(2, dtype=torch.uint8),
              "options": {"lr": nested_options()}, "carry": {}}, "options holds over"),
    (lambda: {"epoch": -10**12, "history": {}, "model": {}, "optimizer": {}, "generator": torch.zeros(2, dtype=torch.uint8),
              "options": {}, "carry": {}}, "epoch -1000000000000"),
])
def test_a_checkpoint_that_would_expand_or_never_end_is_one_line(image_folder, run_cli, tmp_path, content, words):
    (tmp_path / "run").mkdir()
    torch.save(content(), tmp_path / "run" / "checkpoint.pt")
    result = run_cli("scratch", "--data", image_folder, "--image-size", 32, "--epochs", 1, "--out", tmp_path / "run",
                     "--resume")
    assert result.exit_code == 1 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("change, words", [
    (lambda state: state["history"]["test_acc"].pop(), "one number per epoch done"),
    (lambda state: state["history"].update(train_loss=["1.0", "2.0"]), "one number per epoch done"),
    (lambda state: state.update(carry={}), "last test probabilities"),
    (lambda state: state["carry"].update(probabilities=torch.zeros(5, 3)), "last test probabilities"),
    (lambda state: [state.update(epoch=2), *(values.append(0.5) for values in state["history"].values())],
     "epoch 2 of 2"),  # a third epoch of a two-epoch run
    (lambda state: state["optimizer"]["param_groups"][0].update(lr=1e9), "optimizer settings"),
    (lambda state: state["optimizer"]["state"][0].update(exp_avg=torch.zeros(7)), "does not fit this run's network"),
    (lambda state: state["history"]["train_loss"].__setitem__(0, float("nan")), None),  # a diverged loss: resumes
    (lambda state: None, None),  # the genuine checkpoint resumes
])
def test_a_checkpoint_whose_history_or_results_do_not_fit_is_one_line(image_folder, run_cli, tmp_path, monkeypatch,
                                                                      change, words):
    """A genuine checkpoint (after epoch 2 of 2) edited: what resume would take from it as the run's
    history and its last test probabilities is checked, not a traceback or a run written from it."""
    from featcache.train.ddp import Checkpoint

    monkeypatch.setattr(Checkpoint, "remove", lambda self: None)  # keep the finished run's checkpoint
    arguments = ("scratch", "--data", image_folder, "--image-size", 32, "--epochs", 2, "--out", tmp_path / "run")
    assert run_cli(*arguments).exit_code == 0
    (tmp_path / "run" / "history.json").unlink()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]["test_acc"]) == 2
    change(state)
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    result = run_cli(*arguments, "--resume")
    if words is None:
        assert result.exit_code == 0 and (tmp_path / "run" / "history.json").exists(), result.output
        return
    assert result.exit_code == 1 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run" / "history.json").exists()


def test_a_deflated_torch_file_is_refused_before_it_inflates(image_folder, run_cli, tmp_path):
    """torch.load(weights_only=True) would inflate a deflated entry to any size; torch.save stores them."""
    import zipfile

    from torchvision.models import resnet18

    stored = tmp_path / "stored.pth"
    torch.save(resnet18().state_dict(), stored)
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(stored) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in source.infolist():
            copy.writestr(info.filename, source.read(info))
    assert torch.load(deflated, weights_only=True).keys() == torch.load(stored, weights_only=True).keys()
    result = run_cli("extract", "--data", image_folder, "--weights", deflated, "--image-size", 32, "--views", 1,
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1 and "is compressed" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_only_the_listed_image_formats_are_decoded(tmp_path):
    """An ICO decodes its embedded PNG, at the PNG's size, inside Image.open: before featcache's bound."""
    from PIL import Image

    from featcache.data.datasets import read_image

    Image.new("RGB", (16, 16)).save(tmp_path / "icon.ico", format="ICO")
    Image.new("RGB", (16, 16)).save(tmp_path / "plain.png")
    (tmp_path / "icon.jpg").write_bytes((tmp_path / "icon.ico").read_bytes())  # named like a photo
    assert read_image(tmp_path / "plain.png").size == (16, 16)
    with pytest.raises(featcache.FeatcacheError, match="cannot read image .*icon.jpg"):
        read_image(tmp_path / "icon.jpg")

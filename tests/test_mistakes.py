"""A run's mistakes (featcache.evaluate.mistakes, `audit --run`) from stored predictions, and run folders
from strangers read as data: bounded, one line when wrong."""
import json

import numpy as np
import pytest

import featcache
from featcache.evaluate import mistakes
from featcache.evaluate.comparison import load_group


def write_run(folder, ids, labels, probabilities, classes=("a", "b", "c"), seed=0):
    folder.mkdir(parents=True)
    (folder / "history.json").write_text(json.dumps({
        "approach": "feature-extraction", "train_loss": [1.0], "train_acc": [0.5], "test_acc": [0.5],
        "classes": list(classes), "config": {"seed": seed}}))
    np.savez(folder / "predictions.npz", ids=np.array(ids), labels=np.array(labels, dtype=np.int64),
             probabilities=np.array(probabilities, dtype=np.float32))
    return folder


def test_seeds_tested_in_another_order_are_averaged_image_by_image(tmp_path):
    ids = ["x", "y", "z"]
    first = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]
    write_run(tmp_path / "seeds" / "seed-0", ids, [0, 1, 2], first)
    order = [2, 0, 1]  # the second seed stored the same images as z, x, y
    second = [[0.2, 0.2, 0.6], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1]]  # z, x, y
    write_run(tmp_path / "seeds" / "seed-1", [ids[k] for k in order], [[0, 1, 2][k] for k in order], second, seed=1)
    (tmp_path / "seeds" / "seeds.json").write_text(json.dumps({"approach": "feature-extraction", "seeds": [0, 1]}))
    group = load_group(tmp_path / "seeds")
    mean = mistakes.mean_predictions(group)
    expected = (np.array(first) + np.array(second)[[1, 2, 0]]) / 2  # x, y, z
    np.testing.assert_allclose(mean["probabilities"], expected, rtol=1e-6)
    losses = mistakes.top_losses(group, mean, 3)
    assert [row["path"] for row in losses] == ["y", "z", "x"]  # p(given): y 0.4, z 0.5, x 0.7
    assert losses[0]["loss"] == pytest.approx(-np.log(0.4), rel=1e-5) and losses[0]["predicted"] == "c"
    # seed 0 predicts y (b) as c, seed 1 gets all three: one confusion of b's two test predictions
    assert mistakes.most_confused(group) == [{"run": group["label"], "given": "b", "predicted": "c", "count": 1,
                                              "share_of_given": 0.5, "seeds": 2}]
    write_run(tmp_path / "other" / "seed-0", ids, [0, 1, 2], first)
    write_run(tmp_path / "other" / "seed-1", ["x", "y", "w"], [0, 1, 2], second, seed=1)
    (tmp_path / "other" / "seeds.json").write_text(json.dumps({"approach": "feature-extraction", "seeds": [0, 1]}))
    with pytest.raises(featcache.FeatcacheError, match="tested on different images"):
        mistakes.mean_predictions(load_group(tmp_path / "other"))


@pytest.mark.parametrize("name,content,words", [
    ("seeds.json", {"seeds": [0]}, "not a featcache seeds record"),
    ("seeds.json", {"seeds": [], "approach": "x"}, "not a featcache seeds record"),
    ("seeds.json", {"seeds": [0] * 1000, "approach": "x"}, "distinct seeds"),  # each read again, and held
    ("history.json", "[" * 100_000 + "]" * 100_000, "nests too deeply"),
    ("history.json", b"\xff\xfe{", "not valid JSON"),
])
def test_a_crafted_run_record_is_one_line(tmp_path, name, content, words):
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(featcache.FeatcacheError, match=words):
        mistakes.run_groups(folder)


def test_a_crafted_class_count_is_refused_before_anything_is_allocated(tmp_path):
    folder = write_run(tmp_path / "run", [], [], np.zeros((0, 1), dtype=np.float32))
    np.savez(folder / "predictions.npz", ids=np.array([], dtype="U1"), labels=np.zeros(0, dtype=np.int64),
             probabilities=np.zeros((0, 10**9), dtype=np.float32))  # 0 bytes of a billion classes
    with pytest.raises(featcache.FeatcacheError, match="over featcache's bound"):
        mistakes.read_mistakes([folder], 5)


def test_a_label_that_would_drive_a_terminal_is_printable(tmp_path):
    folder = write_run(tmp_path / "run", ["x"], [0], [[0.2, 0.5, 0.3]])
    record = json.loads((folder / "history.json").read_text())
    record["approach"] = "x\x1b[31mred"
    (folder / "history.json").write_text(json.dumps(record))
    [read] = mistakes.read_mistakes([folder, folder], 5)  # the same folder twice: once
    assert "\x1b" not in read["group"]["label"] and read["losses"][0]["predicted"] == "b"

"""compare and experiment: the plot and the table come from real run directories."""
import csv
import json

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def experiment_dir(image_folder, tmp_path_factory):
    from click.testing import CliRunner
    from featcache.cli import main

    out = tmp_path_factory.mktemp("experiment")
    result = CliRunner().invoke(main, ["experiment", "--data", str(image_folder), "--weights", "random",
                                       "--image-size", "32", "--epochs", "2", "--out", str(out / "exp"),
                                       "--cache-dir", str(out / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output
    return out / "exp"


def test_experiment_writes_three_runs_a_plot_and_tables(experiment_dir):
    for approach in ("scratch", "feature-extraction", "fine-tuning"):
        record = json.loads((experiment_dir / approach / "history.json").read_text())
        assert record["approach"] == approach and len(record["test_acc"]) == 2
    with Image.open(experiment_dir / "comparison.png") as image:
        assert image.size[0] > 1000 and image.size[1] > 300
    rows = list(csv.DictReader((experiment_dir / "summary.csv").open()))
    assert [row["approach"] for row in rows] == ["scratch", "feature-extraction", "fine-tuning"]
    for row in rows:
        history = json.loads((experiment_dir / row["approach"] / "history.json").read_text())
        assert float(row["final_test_acc"]) == pytest.approx(history["test_acc"][-1])
        assert float(row["final_train_acc"]) == pytest.approx(history["train_acc"][-1])
        assert float(row["best_test_acc_on_test_set"]) == pytest.approx(max(history["test_acc"]))
        assert float(row["train_test_gap"]) == pytest.approx(history["train_acc"][-1] - history["test_acc"][-1])
        assert int(row["trainable_params"]) == history["trainable_params"]
    markdown = (experiment_dir / "summary.md").read_text()
    assert "picked on the test set" in markdown
    summary = markdown.split("\n\n")[0].splitlines()
    assert sum(line.startswith("| ") for line in summary) == 4  # header + three runs


def test_each_run_stores_its_last_epochs_predictions_and_compare_shows_them_per_class(experiment_dir):
    import numpy as np

    import featcache

    markdown = (experiment_dir / "summary.md").read_text()
    with Image.open(experiment_dir / "confusion.png") as image:
        assert image.size[0] > 3 * 300
    for approach in ("scratch", "feature-extraction", "fine-tuning"):
        run = featcache.Run.load(experiment_dir / approach)
        stored = run.predictions
        labels, predicted = stored["labels"], stored["probabilities"].argmax(1)
        assert len(stored["ids"]) == len(labels) == 12 and stored["probabilities"].shape == (12, 3)
        np.testing.assert_allclose(stored["probabilities"].sum(1), 1, atol=1e-6)
        assert (predicted == labels).sum() / len(labels) == run.final_test_acc  # exactly the last epoch's
        classes = run.record["classes"]
        for k, name in enumerate(classes):  # summary.md's per-class table, column of this run
            accuracy = (predicted[labels == k] == k).mean()
            row = next(line for line in markdown.split("## Per-class")[1].splitlines() if line.startswith(f"| {name} |"))
            assert row.split("|")[2 + ("scratch", "feature-extraction", "fine-tuning").index(approach)].strip() \
                == f"{accuracy:.4g}"
        confusion = markdown.split(f"### Confusion matrix: {approach}\n")[1]
        for k, name in enumerate(classes):
            counts = [int(((labels == k) & (predicted == j)).sum()) for j in range(len(classes))]
            assert f"| {name} | {' | '.join(map(str, counts))} |" in confusion


def test_compare_cli_on_run_dirs(experiment_dir, run_cli, tmp_path):
    runs = [experiment_dir / name for name in ("scratch", "fine-tuning")]
    result = run_cli("compare", *runs, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 10_000
    for name in ("scratch", "fine-tuning"):  # the printed table holds each run's numbers
        history = json.loads((experiment_dir / name / "history.json").read_text())
        assert f"| {name} | {history['train_acc'][-1]:.4g} | {history['test_acc'][-1]:.4g} |" in result.output


def test_the_plot_shows_each_runs_history(experiment_dir, tmp_path, monkeypatch):
    """What matplotlib is given: per panel, one line per run with that run's colour and per-epoch values."""
    from matplotlib.axes import Axes

    import featcache

    plotted = []
    real_plot = Axes.plot

    def record(axis, x, y, **kwargs):
        plotted.append((axis.get_title() or None, kwargs["label"], kwargs["color"], list(x), list(y)))
        return real_plot(axis, x, y, **kwargs)

    monkeypatch.setattr(Axes, "plot", record)
    featcache.compare([experiment_dir / name for name in ("scratch", "feature-extraction", "fine-tuning")],
                      tmp_path / "cmp")
    assert len(plotted) == 9  # three panels x three runs
    colours = {"scratch": "red", "feature-extraction": "blue", "fine-tuning": "green"}
    for index, (_, label, colour, epochs, values) in enumerate(plotted):
        approach, key = label, ("train_loss", "train_acc", "test_acc")[index % 3]
        history = json.loads((experiment_dir / approach / "history.json").read_text())
        assert colour == colours[approach] and epochs == [1, 2] and values == history[key]


def test_compare_names_a_folder_that_is_not_a_run(experiment_dir, run_cli, tmp_path):
    result = run_cli("compare", experiment_dir / "scratch", tmp_path, "--out", tmp_path / "cmp")
    assert result.exit_code != 0 and str(tmp_path) in result.stderr and "not a featcache run" in result.stderr
    assert not (tmp_path / "cmp").exists()


def test_experiment_refuses_to_overwrite_runs(experiment_dir, image_folder, run_cli):
    before = (experiment_dir / "scratch" / "history.json").read_bytes()
    result = run_cli("experiment", "--data", image_folder, "--weights", "random", "--image-size", "32",
                     "--epochs", "1", "--out", experiment_dir)
    assert result.exit_code != 0 and "--overwrite" in result.stderr
    assert (experiment_dir / "scratch" / "history.json").read_bytes() == before


def test_inspect_writes_parameter_table_and_grid(image_folder, run_cli, tmp_path):
    result = run_cli("inspect", "--data", image_folder, "--image-size", "32", "--count", "6",
                     "--out", tmp_path / "grid.png")
    assert result.exit_code == 0, result.output
    assert "| layer4 | 8393728 |" in result.output and "| total | 11178051 |" in result.output  # 3-class head
    assert "| 0.01% |" in result.output and "| 75.10% |" in result.output
    assert (tmp_path / "grid.png").stat().st_size > 5_000

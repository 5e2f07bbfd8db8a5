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
    rows = list(csv.DictReader((experiment_dir / "summary.csv").open()))  # the numbers: test_summary_rows_...
    assert [row["approach"] for row in rows] == ["scratch", "feature-extraction", "fine-tuning"]
    assert [row["run_dir"] for row in rows] == [str(experiment_dir / row["approach"]) for row in rows]
    markdown = (experiment_dir / "summary.md").read_text()
    assert "picked on the test set" in markdown
    summary = markdown.split("\n\n")[0].splitlines()
    assert sum(line.startswith("| ") for line in summary) == 4  # header + three runs


def write_history(folder, approach, train_acc, test_acc, **extra):
    folder.mkdir(parents=True)
    record = {"approach": approach, "train_loss": [1.0] * len(train_acc), "train_acc": train_acc,
              "test_acc": test_acc, **extra}
    (folder / "history.json").write_text(json.dumps(record))
    return folder


def test_summary_rows_hold_hand_computed_numbers(tmp_path):
    """Runs written by hand, their summary worked out by hand: a single run's last-epoch numbers, best
    test epoch and gap; a folder of 3 seeds as means, with the t-interval over seeds."""
    one = write_history(tmp_path / "scratch", "scratch", [0.50, 0.75, 0.70], [0.40, 0.60, 0.55],
                        trainable_params=11178051, wall_time_s=12.5)
    head = write_history(tmp_path / "feature-extraction", "feature-extraction", [0.90, 0.92], [0.86, 0.80],
                         trainable_params=1539, wall_time_s=0.5, extract_wall_time_s=3.0)
    seeds = tmp_path / "fine-tuning"
    for seed, (train_acc, test_acc) in enumerate([([0.8, 0.90], [0.72, 0.70]), ([0.8, 0.90], [0.74, 0.74]),
                                                  ([0.9, 0.96], [0.80, 0.78])]):
        write_history(seeds / f"seed-{seed}", "fine-tuning", train_acc, test_acc, trainable_params=8395267,
                      wall_time_s=10.0 + seed)
    (seeds / "seeds.json").write_text(json.dumps({"approach": "fine-tuning", "seeds": [0, 1, 2]}))

    import featcache

    result = featcache.compare([one, head, seeds], tmp_path / "cmp")
    rows = list(csv.DictReader((tmp_path / "cmp" / "summary.csv").open()))
    assert [row["approach"] for row in rows] == ["scratch", "feature-extraction", "fine-tuning"]
    number = {"final_train_acc", "final_test_acc", "best_test_acc_on_test_set", "train_test_gap", "wall_time_s",
              "test_acc_std"}
    expected = [  # final train, final test, best test epoch (picked on the test set), train - test, ...
        {"final_train_acc": 0.70, "final_test_acc": 0.55, "best_test_acc_on_test_set": 0.60, "train_test_gap": 0.15,
         "trainable_params": "11178051", "wall_time_s": 12.5, "extract_time_s": "", "seeds": "1",
         "test_acc_std": "", "test_acc_ci95_seeds": ""},
        {"final_train_acc": 0.92, "final_test_acc": 0.80, "best_test_acc_on_test_set": 0.86, "train_test_gap": 0.12,
         "trainable_params": "1539", "wall_time_s": 0.5, "extract_time_s": "3.0", "seeds": "1",
         "test_acc_std": "", "test_acc_ci95_seeds": ""},
        # means over seeds: final test (0.70 + 0.74 + 0.78) / 3, best epochs (0.72 + 0.74 + 0.80) / 3, gaps
        # (0.20 + 0.16 + 0.18) / 3; sd 0.04, so 0.74 +- t_2 * 0.04 / sqrt(3) = 0.74 +- 0.0994
        {"final_train_acc": 0.92, "final_test_acc": 0.74, "best_test_acc_on_test_set": 0.7533333, "train_test_gap": 0.18,
         "trainable_params": "8395267", "wall_time_s": 11.0, "seeds": "3", "test_acc_std": 0.04,
         "test_acc_ci95_seeds": "[0.6406, 0.8394]"},
    ]
    for row, hand in zip(rows, expected):
        for key, value in hand.items():
            assert (float(row[key]) == pytest.approx(value, abs=1e-6)) if key in number and value != "" \
                else row[key] == value, (row["approach"], key, row[key], value)
    assert result["rows"][0]["final_test_acc"] == pytest.approx(0.55)
    assert rows[0]["final_test_balanced_acc"] == ""  # no stored predictions: blank, never a guess
    assert "| scratch | 0.7 | 0.55 |  | 0.6 | 0.15 |" in (tmp_path / "cmp" / "summary.md").read_text()


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
        recalls = []
        for k, name in enumerate(classes):  # summary.md's per-class table: test images, then this run's column
            accuracy = (predicted[labels == k] == k).mean()
            recalls.append(accuracy)
            row = next(line for line in markdown.split("## Per-class")[1].splitlines() if line.startswith(f"| {name} |"))
            assert row.split("|")[2].strip() == str((labels == k).sum())
            assert row.split("|")[3 + ("scratch", "feature-extraction", "fine-tuning").index(approach)].strip() \
                == f"{accuracy:.4g}"
        history = json.loads((experiment_dir / approach / "history.json").read_text())
        assert history["final_test_balanced_acc"] == pytest.approx(np.mean(recalls), abs=1e-12)
        assert history["test_class_counts"] == [int((labels == k).sum()) for k in range(len(classes))]
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


def test_the_plot_shows_each_runs_history_in_a_colour_of_its_own(experiment_dir, tmp_path, monkeypatch):
    """What matplotlib is given: per panel, one line per run with that run's per-epoch values; each approach
    in one colour, its own, in all three panels and in its confusion matrix's title."""
    from matplotlib.axes import Axes
    from matplotlib.colors import to_rgba

    import featcache

    plotted, titled = [], {}
    real_plot, real_title = Axes.plot, Axes.set_title

    def record(axis, x, y, **kwargs):
        plotted.append((kwargs["label"], kwargs["color"], list(x), list(y)))
        return real_plot(axis, x, y, **kwargs)

    def record_title(axis, label, *args, **kwargs):
        if "color" in kwargs:  # the confusion matrices' titles: "<run>\ntest accuracy ..."
            titled[label.split("\n")[0]] = kwargs["color"]
        return real_title(axis, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", record)
    monkeypatch.setattr(Axes, "set_title", record_title)
    approaches = ("scratch", "feature-extraction", "fine-tuning")
    featcache.compare([experiment_dir / name for name in approaches], tmp_path / "cmp")
    assert len(plotted) == 9  # three panels x three runs
    colours = {}
    for index, (approach, colour, epochs, values) in enumerate(plotted):
        history = json.loads((experiment_dir / approach / "history.json").read_text())
        assert epochs == [1, 2] and values == history[("train_loss", "train_acc", "test_acc")[index % 3]]
        assert colour is not None, approach  # not left to matplotlib's cycle, which depends on the order
        colours.setdefault(approach, set()).add(to_rgba(colour))
    assert all(len(colours[approach]) == 1 for approach in approaches), colours  # the same in every panel
    colour = {approach: next(iter(colours[approach])) for approach in approaches}
    assert len(set(colour.values())) == 3, colour  # three approaches, three colours
    assert {approach: to_rgba(titled[approach]) for approach in approaches} == colour  # as in the confusion plot


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
    other = run_cli("inspect", "--data", image_folder, "--image-size", "32", "--backbone", "efficientnet_b0",
                    "--out", tmp_path / "grid.png")  # the head is classifier.1 after a Dropout: all it trains
    assert "| features | 4007548 | frozen | partly |" in other.output, other.output
    assert "| classifier | 3843 | trained | trained |" in other.output
    no_default = run_cli("inspect", "--data", image_folder, "--image-size", "32", "--backbone", "regnet_y_400mf",
                         "--out", tmp_path / "grid.png")
    assert "| trunk_output | 3902216 | frozen | as --unfreeze names |" in no_default.output, no_default.output


def test_an_accuracy_interval_stays_in_0_1_and_two_seeds_say_it_tells_little():
    from featcache.evaluate.stats import ACCURACY, t_interval

    wide = t_interval([0.30, 0.99], bounds=ACCURACY)  # unclipped: about [-3.9, 5.2]
    assert (wide["low"], wide["high"]) == (0.0, 1.0) and wide["clipped"]
    assert "clipped to [0, 1]" in wide["method"] and "fewer than 3 seeds" in wide["method"]
    inside = t_interval([0.70, 0.72, 0.71, 0.69], bounds=ACCURACY)
    assert not inside["clipped"] and 0 < inside["low"] < inside["high"] < 1 and "clipped" not in inside["method"]
    difference = t_interval([-0.30, 0.69])  # a difference of accuracies is not clipped
    assert difference["low"] < -1


def test_a_seeds_line_at_two_seeds_is_clipped_and_says_so():
    from featcache.evaluate.runs import SeedRuns, seeds_line

    class Fake:
        def __init__(self, accuracy):
            self.final_test_acc, self.config = accuracy, {"seed": 0}

    line = seeds_line(SeedRuns("fine-tuning", [Fake(0.30), Fake(0.99)]))
    assert "[0.0000, 1.0000]" in line and "clipped" in line and "tells little" in line, line


def test_log_axes_are_labelled_with_plain_numbers():
    from matplotlib.figure import Figure

    from featcache.evaluate.backbones import plain_log_axis

    for values, expected in (([40.1, 61.2, 423.7], ["50", "100", "200", "500"]), ([512, 1280], ["500", "1000"]),
                             ([300, 320], ["300", "320"])):
        axis = Figure().subplots()
        plain_log_axis(axis, values)
        labels = [tick.get_text() for tick in axis.get_xticklabels()]
        assert labels == expected, labels
        assert not [tick.get_text() for tick in axis.get_xticklabels(minor=True) if tick.get_text()]

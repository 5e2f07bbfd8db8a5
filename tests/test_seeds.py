"""Seeds and intervals: seeds differ and reproduce, never change the views, and every interval is right
on a case with a known answer."""
import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

import featcache
from conftest import export_and_predict
from featcache.train.heads import train_linear_head, train_seeded_heads
from featcache.train.config import EpochConfig
from featcache.evaluate.stats import bootstrap_interval, mcnemar, paired_bootstrap, t_interval
from featcache.settings import parse_seeds
from featcache.train.config import FEWSHOT_LINEAR_STEPS


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("5,2,9") == [5, 2, 9] and parse_seeds("3") == [0, 1, 2]
    for bad in ("a-b", "3-1", "1,1", ""):
        with pytest.raises(featcache.FeatcacheError, match="seeds"):
            parse_seeds(bad)


def test_lockstep_seeds_equal_one_head_per_seed(cache):
    config = EpochConfig(epochs=3, batch_size=8, seed=0)
    together = train_seeded_heads(cache.train_features, cache.train_labels, cache.test_features, cache.test_labels,
                                  config, [4, 7])
    for seed, (head, history) in zip([4, 7], together):
        alone, reference = train_linear_head(cache.train_features, cache.train_labels, cache.test_features,
                                             cache.test_labels, EpochConfig(3, 8, seed))
        torch.testing.assert_close(head.weight, alone.weight, rtol=0, atol=1e-6)
        assert history["test_acc"] == reference["test_acc"]
        torch.testing.assert_close(history["train_loss"], reference["train_loss"], rtol=0, atol=1e-6)


def test_seeds_differ_reproduce_and_keep_the_cache(cache, tmp_path, run_cli):
    first = featcache.train_head_seeds(cache, "0-2", epochs=3, batch_size=8, out=tmp_path / "a")
    again = featcache.train_head_seeds(cache.path, [0, 1, 2], epochs=3, batch_size=8, out=tmp_path / "b")
    weights = [run.model.weight for run in first.runs]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    for one, two in zip(first.runs, again.runs):
        assert torch.equal(one.model.weight, two.model.weight) and one.history == two.history
        assert one.record["cache_key"] == cache.key  # every seed trains on the same cached views
    record = json.loads((tmp_path / "a" / "seeds.json").read_text())
    assert record["seeds"] == [0, 1, 2] and record["final_test_acc"] == first.final_test_accs
    assert featcache.SeedRuns.load(tmp_path / "a").final_test_accs == first.final_test_accs
    result = run_cli("train-head", cache.path, "--seeds", "0-2", "--epochs", 3, "--batch-size", 8,
                     "--out", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "over 3 seeds, 95% interval" in result.output
    result = run_cli("export", tmp_path / "c", "--out", tmp_path / "m.pt2")  # a folder of seeds: pick one
    assert result.exit_code == 1 and "seed-0" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run_cli("export", tmp_path / "c" / "seed-1", "--out", tmp_path / "m.pt2").exit_code == 0


def test_end_to_end_seeds_share_the_views(image_folder, tmp_path, monkeypatch):
    """Every view a training seed asks for is made with the view seed (5), whatever the training seed:
    per seed, the same (image, view) pairs each epoch, with the same pixels."""
    import featcache.data.images as augment  # where ImageData calls make_views

    made = {}
    real = augment.make_views

    def recording(images, indices, view, split, seed, *args, **kwargs):
        pixels = real(images, indices, view, split, seed, *args, **kwargs)
        made.setdefault(current[0], {}).update({(split, index, view, seed): pixels[k] for k, index in enumerate(indices)})
        return pixels
    monkeypatch.setattr(augment, "make_views", recording)
    images = featcache.load_images(featcache.DataSpec(str(image_folder)), image_size=32, seed=5, device="cpu")
    current = [None]
    runs = []
    for training_seed in (0, 1):
        current[0] = training_seed
        runs.append(featcache.scratch(images, seed=training_seed, epochs=2))
    assert runs[0].config["view_seed"] == runs[1].config["view_seed"] == 5
    assert runs[0].history != runs[1].history  # the training seed did change training
    first, second = made[0], made[1]
    assert set(first) == set(second) and {key[3] for key in first} == {5}
    assert all(torch.equal(first[key], second[key]) for key in first)
    group = featcache.scratch_seeds(images, [0, 1], seed=5, epochs=1, out=tmp_path / "s")
    assert group.seeds == [0, 1] and [run.config["view_seed"] for run in group.runs] == [5, 5]


@pytest.mark.parametrize("command", ["finetune", "scratch"])
def test_end_to_end_seeds_take_every_option(image_folder, tmp_path, run_cli, command):
    """--max-memory and --num-workers reach every seed: images that do not fit are decoded per batch."""
    extra = ["--weights", "random"] if command == "finetune" else []
    arguments = [command, "--data", image_folder, "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--seeds", "2", *extra]
    result = run_cli(*arguments, "--max-memory", "1", "--num-workers", "1", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "decoded per batch (train and test) (1 workers)" in result.stdout
    for seed in (0, 1):
        config = json.loads((tmp_path / "s" / f"seed-{seed}" / "history.json").read_text())["config"]
        assert config["decoding"] == "per batch (train and test)" and config["seed"] == seed
        assert config["data"]["data"] == str(image_folder)  # as one run records it
    nothing = run_cli(*arguments, "--resume", "--out", tmp_path / "empty")
    assert nothing.exit_code == 1 and "nothing to resume" in nothing.stderr


def test_t_interval_known_answer():
    values = [0.70, 0.74, 0.78]  # mean 0.74, sd 0.04, t_2 = 4.3027: 0.74 +- 4.3027 * 0.04 / sqrt(3)
    result = t_interval(values)
    half = scipy_stats.t.ppf(0.975, 2) * 0.04 / np.sqrt(3)
    assert result["mean"] == pytest.approx(0.74) and result["std"] == pytest.approx(0.04)
    assert result["low"] == pytest.approx(0.74 - half) and result["high"] == pytest.approx(0.74 + half)
    assert half == pytest.approx(0.0994, abs=1e-4)
    assert t_interval([0.5])["low"] is None  # one seed: no interval, said so
    assert "single value" in t_interval([0.5])["method"]
    from featcache.evaluate.stats import paired_seed_interval

    paired = paired_seed_interval([0.71, 0.72, 0.73], [0.70, 0.70, 0.70])  # differences 0.01, 0.02, 0.03
    assert paired["difference"] == pytest.approx(0.02)
    assert paired["low"] == pytest.approx(0.02 - scipy_stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3))


def test_bootstrap_known_answers():
    correct = np.array([True] * 800 + [False] * 200)
    result = bootstrap_interval(correct)
    standard_error = np.sqrt(0.8 * 0.2 / 1000)  # the binomial answer the bootstrap must approach
    assert result["mean"] == pytest.approx(0.8)
    assert result["low"] == pytest.approx(0.8 - 1.96 * standard_error, abs=0.004)
    assert result["high"] == pytest.approx(0.8 + 1.96 * standard_error, abs=0.004)
    same = paired_bootstrap(correct, correct)  # an approach against itself: exactly zero
    assert same["difference"] == same["low"] == same["high"] == 0.0
    shifted = paired_bootstrap(correct, np.roll(correct, 100))
    assert shifted["low"] < 0 < shifted["high"]


def test_mcnemar_known_answer():
    a = np.array([True] * 10 + [False] * 2 + [True] * 50)
    b = np.array([False] * 10 + [True] * 2 + [True] * 50)
    result = mcnemar(a, b)  # 10 vs 2 discordant pairs: two-sided binomial p = 0.0386
    assert (result["only_a"], result["only_b"]) == (10, 2)
    assert result["p_value"] == pytest.approx(scipy_stats.binomtest(10, 12).pvalue) == pytest.approx(0.0386, abs=1e-4)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_compare_a_run_with_itself_reports_zero(cache, tmp_path):
    run = featcache.train_head(cache, epochs=2, batch_size=8, out=tmp_path / "one")
    result = featcache.compare([run.path, run.path], tmp_path / "cmp")
    (row,) = result["comparisons"]
    assert row["bootstrap"]["difference"] == row["bootstrap"]["low"] == row["bootstrap"]["high"] == 0.0
    assert row["mcnemar"]["p_value"] == 1.0 and row["verdict"].startswith("no difference shown")
    groups = featcache.train_head_seeds(cache, "0-2", epochs=2, batch_size=8, out=tmp_path / "seeds")
    result = featcache.compare([groups.path, groups.path], tmp_path / "cmp2")
    (row,) = result["comparisons"]
    assert row["seeds"]["difference"] == 0.0 and row["bootstrap"]["difference"] == 0.0
    summary = result["rows"][0]
    assert summary["seeds"] == 3 and summary["final_test_acc"] == pytest.approx(np.mean(groups.final_test_accs))


def test_knn_with_k1_on_its_own_training_features_is_perfect(cache):
    from featcache.train.knn import KNNHead

    clean = cache.train_features[:, 0]
    head = KNNHead(clean, cache.train_labels, len(cache.classes), k=1)
    with torch.no_grad():
        assert (head(clean).argmax(1) == cache.train_labels).all()
        shares = head(clean).exp()
    torch.testing.assert_close(shares.sum(1), torch.ones(len(clean)))


def test_knn_head_runs_exports_and_predicts(cache, image_folder, tmp_path, run_cli):
    result = run_cli("train-head", cache.path, "--head", "knn", "--out", tmp_path / "knn")
    assert result.exit_code == 0, result.output
    assert "chosen k=" in result.output
    run = featcache.Run.load(tmp_path / "knn")
    assert run.record["knn"]["k"] >= 1 and run.predictions["probabilities"].shape == (12, 3)
    accuracy, _ = export_and_predict(run_cli, tmp_path / "knn", image_folder / "test", tmp_path)
    assert accuracy == run.final_test_acc


def test_fewshot_subsets_are_seeded_per_class_from_training_images_and_shared_by_probes(cache, tmp_path, monkeypatch):
    from featcache.evaluate import fewshot as fewshot_module

    import h5py

    labels = cache.train_labels.numpy()
    subsets = fewshot_module.draw_subsets(labels, 2, 4, seed=1)
    with h5py.File(cache.path) as handle:
        train_ids = [name.decode() for name in handle["train/ids"][()]]
    drawn = {train_ids[index] for index in subsets.flatten()}
    assert subsets.shape == (4, 6) and drawn and not drawn & set(cache.test_ids)  # training images only
    for row in subsets:
        assert len(set(row)) == 6 and sorted(np.bincount(labels[row], minlength=3)) == [2, 2, 2]
    assert np.array_equal(subsets, fewshot_module.draw_subsets(labels, 2, 4, seed=1))
    assert not np.array_equal(subsets, fewshot_module.draw_subsets(labels, 2, 4, seed=2))
    seen = {}
    for probe in ("linear_probes", "logreg_probes", "knn_probes"):
        real = getattr(fewshot_module, probe)

        def record(*args, _real=real, _probe=probe, **kwargs):
            seen.setdefault(_probe, []).append(args[4].copy())
            return _real(*args, **kwargs)
        monkeypatch.setattr(fewshot_module, probe, record)
    result = featcache.fewshot(cache, tmp_path / "fs", shots=[1, 2], trials=3, seed=1)
    assert all(np.array_equal(a, b) and np.array_equal(a, c)
               for a, b, c in zip(seen["linear_probes"], seen["logreg_probes"], seen["knn_probes"]))
    assert [(row["probe"], row["shots"]) for row in result["rows"]][:3] == [("linear", 1), ("logreg", 1), ("knn", 1)]
    for row in result["rows"]:
        assert row["ci95_low"] <= row["mean_test_acc"] <= row["ci95_high"] and row["trials"] == 3
    assert (tmp_path / "fs" / "fewshot.png").stat().st_size > 10_000
    with pytest.raises(featcache.FeatcacheError, match="shots"):
        featcache.fewshot(cache, tmp_path / "fs", shots=[9], trials=2)


def test_fewshot_command(cache, tmp_path, run_cli):
    result = run_cli("fewshot", cache.path, "--shots", "1,2", "--trials", 2, "--probes", "knn,linear",
                     "--out", tmp_path / "fs")
    assert result.exit_code == 0, result.output
    assert "| knn | 1 | 2 |" in result.output and (tmp_path / "fs" / "fewshot.csv").is_file()


def test_fewshot_plot_labels_its_shots_as_plain_numbers(tmp_path):
    from featcache.evaluate.fewshot import plot_fewshot

    rows = [{"probe": "linear", "shots": k, "trials": 2, "mean_test_acc": 0.5, "ci95_low": 0.4, "ci95_high": 0.6}
            for k in (1, 5)]
    axis = plot_fewshot(rows, tmp_path / "fewshot.png").axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["1", "5"]
    assert not [label.get_text() for label in axis.get_xticklabels(minor=True) if label.get_text()]


def test_linear_probe_takes_its_fixed_budget_of_steps(cache, monkeypatch):
    from featcache.evaluate import fewshot as fewshot_curves
    from featcache.train.heads import LinearHeads

    steps = []
    real = LinearHeads.step
    monkeypatch.setattr(LinearHeads, "step", lambda self, *args: steps.append(args[0].shape) or real(self, *args))
    subsets = fewshot_curves.draw_subsets(cache.train_labels.numpy(), 1, 3, seed=0)
    fewshot_curves.linear_probes(cache.train_features, cache.train_labels, cache.test_features, cache.test_labels,
                                 subsets, seed=0)
    assert len(steps) == FEWSHOT_LINEAR_STEPS and steps[0] == (3, 3, 513)  # 3 trials, 3 images, bias column


def test_knn_leave_one_out_and_temperature(cache):
    from featcache.train.knn import KNNHead

    clean = cache.train_features[:, 0]
    head = KNNHead(clean, cache.train_labels, 3, k=1)
    with torch.no_grad():
        own = head(clean).argmax(1)
        left_out = head(clean, exclude_self=True).argmax(1)
        nearest_other = (torch.nn.functional.normalize(clean, dim=1) @ head.bank.T).fill_diagonal_(-2).argmax(1)
    assert torch.equal(own, cache.train_labels)  # itself
    assert torch.equal(left_out, cache.train_labels[nearest_other])  # the nearest other image
    sharp = KNNHead(clean, cache.train_labels, 3, k=5, temperature=0.001)
    with torch.no_grad():
        shares = sharp(cache.test_features).exp()
    assert torch.isfinite(shares).all()
    torch.testing.assert_close(shares.sum(1), torch.ones(len(shares)))

"""train-head: cached training equals the end-to-end loop; selection never sees test labels."""
import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import featcache
from featcache.cache.reader import load_cache
from featcache.cache.synthetic import write_synthetic_cache
from featcache.train.heads import LinearHeads, sweep_heads, train_linear_head, with_bias_column
from featcache.train.logreg import logistic_regression_probe, logreg_as_linear
from featcache.train.heads import validation_split
from featcache.cache.reader import view_for_epoch
from featcache.train.config import EpochConfig
from featcache.train.loop import accuracy, run_epochs, seeded_linear
from conftest import cached_and_end_to_end_heads, tree_digest


def test_cached_training_equals_the_end_to_end_reference_loop(image_folder, cache):
    config = EpochConfig(epochs=5, batch_size=4, seed=3)  # 5 epochs > 2 augmented views: the view cycle wraps
    (head, history), (reference_head, reference) = cached_and_end_to_end_heads(image_folder, cache, "resnet18",
                                                                               config, 1e-2)
    assert torch.allclose(head.weight, reference_head.weight, atol=1e-4)
    assert torch.allclose(head.bias, reference_head.bias, atol=1e-4)
    assert np.allclose(history["train_loss"], reference["train_loss"], atol=1e-4)
    assert history["train_acc"] == reference["train_acc"]
    assert history["test_acc"] == reference["test_acc"]
    assert len(set(history["train_loss"])) == 5  # it trained: the loss moved every epoch


def test_cached_head_loop_equals_plain_linear_and_torch_adam(cache):
    """The written-out heads against nn.Linear + torch.optim.Adam in the shared epoch loop, on the same
    cached views, order and seed: same weights, same history."""
    config = EpochConfig(epochs=4, batch_size=5, seed=2)
    head, history = train_linear_head(cache.train_features, cache.train_labels, cache.test_features,
                                      cache.test_labels, config, lr=3e-3)
    model = seeded_linear(512, 3, config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    reference = run_epochs(
        model, optimizer, cache.train_labels,
        lambda epoch, shares: (cache.train_features[indices, view_for_epoch(epoch, cache.views)] for indices in shares),
        lambda: accuracy(model, lambda window: cache.test_features[window], cache.test_labels), config, log=None)
    assert torch.allclose(head.weight, model.weight, atol=1e-5) and torch.allclose(head.bias, model.bias, atol=1e-5)
    assert np.allclose(history["train_loss"], reference["train_loss"], atol=1e-5)
    assert history["train_acc"] == reference["train_acc"] and history["test_acc"] == reference["test_acc"]
    assert not torch.allclose(head.weight, seeded_linear(512, 3, config.seed).weight)  # it trained


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_hand_written_head_step_matches_torch_adam(weight_decay):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 16, generator=generator) * 3
    labels = torch.randint(0, 4, (40,), generator=generator)
    reference = seeded_linear(16, 4, 5)
    heads = LinearHeads([seeded_linear(16, 4, 5)], [3e-2], [weight_decay])
    optimizer = torch.optim.Adam(reference.parameters(), lr=3e-2, weight_decay=weight_decay)
    onehot = torch.nn.functional.one_hot(labels, 4).float()
    for step in range(60):
        batch = slice((step * 8) % 40, (step * 8) % 40 + 8)
        log_probs = heads.step(with_bias_column(features[batch]), onehot[batch])
        loss = torch.nn.functional.cross_entropy(reference(features[batch]), labels[batch])
        assert -(log_probs[0] * onehot[batch]).sum(-1).mean().item() == pytest.approx(loss.item(), abs=1e-5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = heads.as_linear()
    assert torch.allclose(trained.weight, reference.weight, atol=1e-5)
    assert torch.allclose(trained.bias, reference.bias, atol=1e-5)
    assert not torch.allclose(trained.weight, seeded_linear(16, 4, 5).weight, atol=1e-2)  # it did train


def test_train_head_cli_writes_a_run(small_cache, run_cli, tmp_path):
    path = small_cache.path
    result = run_cli("train-head", path, "--epochs", "4", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "Epoch 4/4 - Train Loss:" in result.output
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(len(history[key]) == 4 for key in ("train_loss", "train_acc", "test_acc"))
    assert history["cache_key"] == load_cache(path).key and history["config"]["lr"] == 1e-3
    state = torch.load(tmp_path / "run" / "weights.pt")
    assert state["weight"].shape == (3, 512)
    again = run_cli("train-head", path, "--epochs", "4", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "history.json").read_text())["test_acc"] == history["test_acc"]


def test_train_head_finds_the_cache_from_dataset_options(image_folder, run_cli, tmp_path):
    args = ["--data", image_folder, "--weights", "random", "--image-size", "32", "--views", "2",
            "--cache-dir", tmp_path / "cache"]
    missing = run_cli("train-head", *args, "--out", tmp_path / "run")
    assert missing.exit_code != 0 and "run featcache extract" in missing.stderr
    assert run_cli("extract", *args).exit_code == 0
    found = run_cli("train-head", *args, "--epochs", "2", "--out", tmp_path / "run")
    assert found.exit_code == 0, found.output


@pytest.mark.slow
def test_a_run_folder_is_held_by_one_process_and_released_by_a_kill(small_cache, run_cli, tmp_path):
    """The run folder is flocked from before training until the run is written: a second process is
    refused in one line and writes nothing; a SIGKILLed holder leaves no stale claim."""
    path = small_cache.path
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from featcache.evaluate.claims import claimed\n"
                               f"with claimed({str(out)!r}, 'feature-extraction'):\n"
                               "    print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    refused = run_cli("train-head", path, "--epochs", "1", "--out", out)
    assert refused.exit_code == 1 and "being written by another featcache process" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (out / "history.json").exists()
    holder.kill()
    holder.wait()
    done = run_cli("train-head", path, "--epochs", "1", "--out", out)
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "predictions.npz", "weights.pt"]


def test_a_failed_run_leaves_no_folder_and_a_file_system_without_flock_still_writes(small_cache, run_cli, tmp_path,
                                                                                   monkeypatch):
    import errno
    import fcntl

    path = small_cache.path
    failed = run_cli("train-head", tmp_path / "missing.h5", "--out", tmp_path / "a" / "b" / "run")
    assert failed.exit_code == 1 and not (tmp_path / "a").exists()  # the folders the claim made are gone

    def no_locks(*args):  # Lustre without -o flock, some FUSE mounts
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    written = run_cli("train-head", path, "--epochs", "1", "--out", tmp_path / "run")
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["history.json", "predictions.npz", "weights.pt"]


@pytest.mark.slow
def test_two_train_heads_started_together_write_one_whole_run(small_cache, tmp_path):
    path = small_cache.path
    out = tmp_path / "run"
    processes = [subprocess.Popen([sys.executable, "-m", "featcache", "train-head", str(path), "--epochs", "3",
                                   "--seed", str(seed), "--out", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    results = [(process.communicate(timeout=300), process.returncode) for process in processes]
    assert sorted(code for _, code in results) == [0, 1], results
    [((_, refusal), _)] = [result for result in results if result[1] == 1]
    assert len(refusal.strip().splitlines()) == 1
    assert "being written by another featcache process" in refusal or "already holds a run" in refusal
    run = featcache.Run.load(out)  # the two seeds' heads differ: history, weights and predictions of one run
    cache = load_cache(path)
    with torch.no_grad():
        probabilities = torch.softmax(run.model(cache.test_features), 1).numpy()
    assert np.allclose(run.predictions["probabilities"], probabilities, atol=1e-5)
    assert run.final_test_acc == (probabilities.argmax(1) == cache.test_labels.numpy()).mean()


def test_sweep_never_looks_at_test_labels(small_cache, run_cli, tmp_path):
    path = small_cache.path
    scrambled = tmp_path / path.name  # a copy: the shared cache is not changed
    shutil.copy(path, scrambled)
    with h5py.File(scrambled, "r+") as handle:
        labels = handle["test/labels"][()]
        handle["test/labels"][...] = (labels + 1) % 3  # every test label now wrong
    outcomes = []
    for cache_file, out in ((path, tmp_path / "a"), (scrambled, tmp_path / "b")):
        result = run_cli("train-head", cache_file, "--sweep", "--epochs", "3", "--sweep-lrs", "1e-3,1e-2,1e-1",
                         "--sweep-wds", "0,1e-2", "--quiet", "--out", out)
        assert result.exit_code == 0, result.output
        outcomes.append(json.loads((out / "history.json").read_text()))
    assert outcomes[0]["sweep"] == outcomes[1]["sweep"]
    assert outcomes[0]["test_acc"] != outcomes[1]["test_acc"]  # test labels did matter for reporting


def test_sweep_heads_match_single_heads(cache):
    config = EpochConfig(epochs=3, batch_size=4, seed=1)
    result = sweep_heads(cache.train_features, cache.train_labels, [1e-3, 1e-1], [0.0, 1e-2], config, 0.25)
    assert [(row["lr"], row["weight_decay"]) for row in result.grid] == [(1e-3, 0.0), (1e-3, 1e-2), (1e-1, 0.0),
                                                                           (1e-1, 1e-2)]
    # each batched head trains exactly like a separate head on the fit split, and the choice is the
    # separate heads' best clean-view validation accuracy (the first of equals in grid order)
    fit, val = validation_split(cache.train_labels, 0.25, 1)
    independent = []
    for row in result.grid:
        head, history = train_linear_head(cache.train_features[fit], cache.train_labels[fit], cache.test_features,
                                          cache.test_labels, config, row["lr"], row["weight_decay"])
        assert history["train_loss"][-1] == pytest.approx(row["final_train_loss"], abs=1e-4)
        with torch.no_grad():
            predictions = head(cache.train_features[val, 0]).argmax(1)
        independent.append((predictions == cache.train_labels[val]).float().mean().item())
    first_best = independent.index(max(independent))
    assert (result.best["lr"], result.best["weight_decay"]) == (result.grid[first_best]["lr"],
                                                               result.grid[first_best]["weight_decay"])


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """Synthetic features, 3 classes separable but not trivially (90 training rows x 3 views, 60 test rows):
    the probe's validation accuracy differs between values of C."""
    path = write_synthetic_cache(tmp_path_factory.mktemp("separable") / "separable.h5", 90, views=2, test_rows=60,
                                 separation=0.07)
    return load_cache(path)


def test_logreg_probe_learns_separable_features_and_its_linear_head_agrees(separable):
    probe = logistic_regression_probe(separable, "all", val_fraction=0.25)
    assert probe["test_acc"] > 0.5  # chance is 1/3 (60 test rows: 0.5 is 2.7 standard deviations above it)
    # the chosen C is the first of the recorded grid's best validation accuracies
    scores = [row["val_acc"] for row in probe["grid"]]
    assert len(set(scores)) > 1  # else any choice would pass
    assert probe["best"] == probe["grid"][scores.index(max(scores))]
    # as a Linear head: softmax of its logits is the probe's predict_proba on rows it was not fitted on
    head = logreg_as_linear(probe["model"], 3)
    with torch.no_grad():
        probabilities = head(separable.test_features).softmax(1).numpy()
    assert np.allclose(probabilities, probe["model"].predict_proba(separable.test_features.numpy()), atol=1e-4)
    assert probe["test_acc"] == pytest.approx(float((probabilities.argmax(1) == separable.test_labels.numpy()).mean()))


def test_heads_on_their_own_rows_train_as_single_heads_on_those_rows(cache):
    """Few-shot's use of train_heads: each head on its own subset of rows, its own seed, trains as the
    reference head on that subset alone; a step budget stops mid-epoch after exactly that many steps."""
    from featcache.train.heads import cached_batches, train_heads

    rows = torch.tensor([[0, 3, 9, 12, 17, 22], [1, 2, 8, 11, 20, 23]])  # 2 heads, 6 rows each (of 24)
    seeds, config = [4, 7], EpochConfig(epochs=5, batch_size=4, seed=4)  # 2 batches an epoch, the second of 2
    heads = LinearHeads([seeded_linear(512, 3, seed) for seed in seeds], [1e-2] * 2, [0.0] * 2)
    history = train_heads(heads, cached_batches(cache.train_features), cache.train_labels, config, seeds=seeds,
                          rows=rows)
    for index, seed in enumerate(seeds):
        single, single_history = train_linear_head(cache.train_features[rows[index]], cache.train_labels[rows[index]],
                                                   cache.test_features, cache.test_labels,
                                                   EpochConfig(5, 4, seed), lr=1e-2)
        assert torch.allclose(heads.as_linear(index).weight, single.weight, atol=1e-5)
        assert [epoch[index] for epoch in history["train_acc"]] == single_history["train_acc"]

    steps = []  # (batch shape, per-head mean loss of the batch before its step)
    budget = LinearHeads([seeded_linear(512, 3, seed) for seed in seeds], [1e-2] * 2, [0.0] * 2)
    real = budget.step

    def step(features, onehot):
        log_probs = real(features, onehot)
        steps.append((tuple(features.shape), -(log_probs * onehot).sum(-1).mean(-1)))
        return log_probs
    budget.step = step
    history = train_heads(budget, cached_batches(cache.train_features), cache.train_labels, config, seeds=seeds,
                          rows=rows, max_steps=7)
    assert [shape for shape, _ in steps] == [(2, 4, 513), (2, 2, 513)] * 3 + [(2, 4, 513)]  # 3 epochs, 1 batch
    assert len(history["train_loss"]) == 4  # the last epoch: the mean over the 4 rows it trained, not all 6
    assert np.allclose(history["train_loss"][-1], steps[-1][1].tolist(), atol=1e-6)


def test_logreg_probe_chooses_c_on_a_validation_split_from_5_images_per_class(cache, monkeypatch):
    """Below 5 images in a class C is 1 and no split is drawn (a 1-image validation split cannot rank
    five Cs); from 5 it is the best on validation_split(labels, val_fraction, seed), as for kNN's k."""
    from featcache.train import logreg as heads_module

    features, labels = cache.train_features.numpy()[:, :1], cache.train_labels.numpy()
    splits = []
    real = heads_module.validation_split
    monkeypatch.setattr(heads_module, "validation_split", lambda *args: splits.append(args[1:]) or real(*args))
    for per_class in (1, 4):
        chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(3)])
        probe = heads_module.logreg_probe(features[chosen], labels[chosen], seed=3)
        assert probe["best"]["C"] == 1.0 and probe["model"][-1].C == 1.0 and not probe["grid"] and not splits
    chosen = np.concatenate([np.flatnonzero(labels == c)[:5] for c in range(3)])
    probe = heads_module.logreg_probe(features[chosen], labels[chosen], Cs=(0.001, 10.0), seed=3)
    assert splits == [(0.2, 3)] and [row["C"] for row in probe["grid"]] == [0.001, 10.0]
    assert probe["model"][-1].C == probe["best"]["C"] and probe["chosen"] == "validation split"


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], "--epochs"), (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--sweep", "--sweep-lrs", "abc"], "--sweep-lrs"), (["--val-fraction", "1.5", "--sweep"], "--val-fraction"),
    (["--sweep", "--head", "logreg"], "--sweep"), (["--weight-decay", "-1"], "--weight-decay"),
])
def test_nonsense_training_settings(small_cache, run_cli, tmp_path, args, words):
    result = run_cli("train-head", small_cache.path, *args, "--out", tmp_path / "run")
    assert result.exit_code != 0 and words in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("problem", ["missing", "incomplete", "other_version"])
def test_bad_cache(small_cache, run_cli, tmp_path, problem):
    path = small_cache.path
    target = tmp_path / path.name
    if problem != "missing":
        shutil.copy(path, target)
        with h5py.File(target, "r+") as handle:
            handle.attrs["complete" if problem == "incomplete" else "format_version"] = False if problem == "incomplete" else 0
    before = tree_digest(tmp_path)
    result = run_cli("train-head", target, "--out", tmp_path / "run")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert {"missing": "does not exist", "incomplete": "incomplete", "other_version": "version 0"}[problem] in result.stderr
    assert all(tree_digest(tmp_path).get(k) == v for k, v in before.items())

"""Fine-tuning under torchrun (gloo on CPU): 2 ranks compute what 1 does, each test image counted once,
rank 0 alone writes, a killed run resumes from its checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.ranks import share_range
from featcache.train.end_to_end import build_finetune_model
from torchvision.models import resnet18
from conftest import tree_digest

pytestmark = pytest.mark.slow

# 7 training images per class (21: the last batch of 8 has 5, split 3 + 2) and 3 test images per class
# (9: split 5 + 4); image size 32, random weights, layer3 and layer4 trained (their BatchNorm synced)
OPTIONS = ["--weights", "random", "--image-size", "32", "--per-class", "7", "--batch-size", "8", "--epochs", "2",
           "--unfreeze", "layer3,layer4", "--quiet"]


@pytest.fixture(scope="module")
def folder(make_image_folder):
    return make_image_folder(7, 3)


def torchrun(ranks: int, folder, out, *extra, command="finetune", start_only=False):
    arguments = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                 "-m", "featcache", command, "--data", str(folder), *OPTIONS, "--out", str(out), *extra]
    return arguments if start_only else subprocess.run(arguments, capture_output=True, text=True, timeout=600)


def read(out):
    history = json.loads((out / "history.json").read_text())
    return history, torch.load(out / "weights.pt"), np.load(out / "predictions.npz")


def assert_same_run(out, reference, seed=0):
    (history, weights, predictions), (ref_history, ref_weights, ref_predictions) = read(out), read(reference)
    for key in ("train_loss", "train_acc", "test_acc"):
        np.testing.assert_allclose(history[key], ref_history[key], rtol=1e-3, atol=1e-6)
    # Adam moves a weight by about lr whatever its gradient's size, so rounding that flips the sign of a
    # near-zero gradient moves it the other way: compare each tensor's difference to how far it trained
    init = build_finetune_model("random", 3, seed, ["layer3", "layer4"]).state_dict()
    # (measured: 0.8% of the update for the median tensor, 4% at most, 2 epochs)
    assert weights.keys() == ref_weights.keys()
    differences, updates = [], []
    for name in weights:
        if not weights[name].is_floating_point():
            assert torch.equal(weights[name], ref_weights[name]), name
            continue
        updates.append((ref_weights[name] - init[name]).norm())
        differences.append((weights[name] - ref_weights[name]).norm())
        assert differences[-1] <= 0.1 * updates[-1] + 1e-7, name
    assert sum(updates) > 0 and torch.stack(differences).norm() <= 0.02 * torch.stack(updates).norm()
    assert list(predictions["ids"]) == list(ref_predictions["ids"]) and len(predictions["ids"]) == 9
    np.testing.assert_allclose(predictions["probabilities"], ref_predictions["probabilities"], atol=1e-4)


def test_scratch_on_two_gloo_ranks_trains_what_one_process_trains(folder, tmp_path):
    """Every BatchNorm layer synced, and every parameter trained."""
    runs = {ranks: subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                   str(ranks), "-m", "featcache", "scratch", "--data", str(folder), "--image-size", "32",
                                   "--per-class", "7", "--batch-size", "8", "--epochs", "1", "--quiet",
                                   "--out", str(tmp_path / str(ranks))], capture_output=True, text=True, timeout=600)
            for ranks in (1, 2)}
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    assert "deprecated" not in runs[2].stderr  # the synced BatchNorm's all-reduce is torch's supported one
    (history, weights, _), (ref_history, ref_weights, _) = read(tmp_path / "2"), read(tmp_path / "1")
    np.testing.assert_allclose(history["train_loss"], ref_history["train_loss"], rtol=1e-3)
    assert history["test_acc"] == ref_history["test_acc"]
    with torch.random.fork_rng(devices=[]):  # scratch's seeded init (seed 0)
        torch.manual_seed(0)
        init = resnet18(num_classes=3).state_dict()
    names = [name for name in weights if weights[name].is_floating_point()]
    differences = torch.stack([(weights[name] - ref_weights[name]).norm() for name in names])
    updates = torch.stack([(ref_weights[name] - init[name]).norm() for name in names])
    assert differences.norm() <= 0.03 * updates.norm()  # measured: 0.8% after 1 epoch


def test_two_gloo_ranks_train_what_one_process_trains(folder, tmp_path):
    one, two = torchrun(1, folder, tmp_path / "one"), torchrun(2, folder, tmp_path / "two")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert len(two.stdout.strip().splitlines()) == 1  # rank 0 alone prints its summary line
    assert_same_run(tmp_path / "two", tmp_path / "one")
    assert json.loads((tmp_path / "two" / "history.json").read_text())["config"]["ranks"] == 2
    assert not (tmp_path / "two" / "checkpoint.pt").exists()  # removed once the run is written
    # test accuracy is a count over the 9 test images, each once: a multiple of 1/9
    for accuracy in read(tmp_path / "two")[0]["test_acc"]:
        assert abs(accuracy * 9 - round(accuracy * 9)) < 1e-9


def test_four_ranks_share_nine_test_images_and_a_last_batch_of_five(folder, tmp_path):
    """9 test images on 4 ranks (3 + 2 + 2 + 2) and a last training batch of 5 (2 + 1 + 1 + 1)."""
    one, four = torchrun(1, folder, tmp_path / "one"), torchrun(4, folder, tmp_path / "four")
    assert one.returncode == 0, one.stderr
    assert four.returncode == 0, four.stderr
    assert_same_run(tmp_path / "four", tmp_path / "one")


def workers(parent: int) -> list[int]:
    """torchrun's worker processes, found through /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"PPid:\t{parent}\n" in (entry / "status").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="finding torchrun's workers needs /proc")
def test_a_killed_run_resumes_from_its_last_checkpoint(folder, tmp_path):
    reference = torchrun(1, folder, tmp_path / "whole")
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "resumed"
    command = torchrun(2, folder, out, command="finetune", start_only=True)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in [*workers(process.pid), process.pid]:  # both ranks, then torchrun, after epoch 1's checkpoint
        os.kill(pid, signal.SIGKILL)
    process.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "history.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 0
    refused = torchrun(2, folder, out, "--resume", "--lr-head", "0.01")
    assert refused.returncode != 0 and "other options (lr_head)" in refused.stderr
    resumed = torchrun(2, folder, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, tmp_path / "whole")


@pytest.mark.parametrize("seeds", [[], ["--seeds", "2"]])
def test_a_batch_that_does_not_divide_among_ranks_is_refused(folder, tmp_path, seeds):
    result = torchrun(3, folder, tmp_path / "three", *seeds)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "does not divide" in line]
    assert len(lines) == 1 and "multiple of 3" in lines[0]
    assert not (tmp_path / "three").exists()


@pytest.mark.parametrize("count", [1, 2, 7, 9, 10])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_test_shares_cover_every_image_once(count, world_size):
    ranges = [share_range(count, rank, world_size) for rank in range(world_size)]
    covered = [index for start, stop in ranges for index in range(start, stop)]
    assert covered == list(range(count))
    assert [stop - start for start, stop in ranges] == [len(part) for part in
                                                        torch.tensor_split(torch.arange(count), world_size)]


def test_a_checkpoint_that_cannot_be_written_stops_every_rank_in_one_line(folder, small_disk):
    out = small_disk("20m") / "run"  # the first checkpoint (model and Adam state) needs about 100 MB
    result = torchrun(2, folder, out)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "cannot write the checkpoint" in line]
    assert len(lines) == 1 and "--resume" in lines[0], result.stderr  # rank 0 alone reports it
    assert not list(out.glob(".tmp-*")) and not (out / "history.json").exists()  # featcache.files' temporaries


def test_seeds_on_two_gloo_ranks_train_what_one_process_trains(folder, tmp_path, run_cli):
    """--seeds under torchrun: one process group for every seed, rank 0 alone writes and prints."""
    one = run_cli("finetune", "--data", folder, *OPTIONS, "--seeds", "2", "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    two = torchrun(2, folder, tmp_path / "two", "--seeds", "2")
    assert two.returncode == 0, two.stderr
    lines = two.stdout.strip().splitlines()
    assert len(lines) == 1 and "over 2 seeds" in lines[0], two.stdout  # --quiet: the summary alone, once
    assert "Traceback" not in two.stderr and "deprecated" not in two.stderr
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == ["seed-0", "seed-1", "seeds.json"]
    for seed in (0, 1):
        assert_same_run(tmp_path / "two" / f"seed-{seed}", tmp_path / "one" / f"seed-{seed}", seed)
        config = json.loads((tmp_path / "two" / f"seed-{seed}" / "history.json").read_text())["config"]
        assert config["ranks"] == 2 and config["seed"] == seed
        assert not (tmp_path / "two" / f"seed-{seed}" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "two" / "seeds.json").read_text())["seeds"] == [0, 1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="SIGKILL of a child process")
def test_seeds_resume_keeps_finished_seeds_and_finishes_the_killed_one(folder, tmp_path, run_cli):
    """A SIGKILL in seed 1; --resume keeps seed 0 untouched and finishes seed 1 from its checkpoint, equal to
    an uninterrupted run (one process each, the same threads: bit for bit)."""
    options = [*OPTIONS[:OPTIONS.index("--epochs")], "--epochs", "4", *OPTIONS[OPTIONS.index("--epochs") + 2:],
               "--seeds", "2"]
    whole = run_cli("finetune", "--data", folder, *options, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "featcache", "finetune", "--data", str(folder), *options,
                                "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "seed-1" / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert (out / "seed-0" / "history.json").exists() and not (out / "seeds.json").exists()
    assert (out / "seed-1" / "checkpoint.pt").exists() and not (out / "seed-1" / "history.json").exists()
    finished = tree_digest(out / "seed-0")
    for other, name in ((["--lr-head", "0.01"], "lr_head"), (["--per-class", "6"], "data")):
        refused = run_cli("finetune", "--data", folder, *options, "--out", out, "--resume", *other)
        assert refused.exit_code == 1 and f"seed-0 holds a finished run with other options ({name})" in refused.stderr
    resumed = run_cli("finetune", "--data", folder, *[o for o in options if o != "--quiet"], "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "over 2 seeds" in resumed.output
    assert "Epoch 4/4" in resumed.stdout and "Epoch 1/4" not in resumed.stdout  # seed 1 went on from its checkpoint
    assert tree_digest(out / "seed-0") == finished  # kept, not trained again
    for seed in (0, 1):
        (history, weights, predictions), (ref_history, ref_weights, ref_predictions) = (
            read(out / f"seed-{seed}"), read(tmp_path / "whole" / f"seed-{seed}"))
        assert all(history[key] == ref_history[key] for key in ("train_loss", "train_acc", "test_acc"))
        assert all(torch.equal(weights[name], ref_weights[name]) for name in ref_weights)
        assert np.array_equal(predictions["probabilities"], ref_predictions["probabilities"])
    assert not (out / "seed-1" / "checkpoint.pt").exists()
    assert json.loads((out / "seeds.json").read_text())["final_test_acc"] == \
        json.loads((tmp_path / "whole" / "seeds.json").read_text())["final_test_acc"]


def test_a_timm_network_on_two_gloo_ranks_trains_what_one_process_trains(folder, tmp_path):
    """timm's tf_efficientnet_lite0, its default last stage (blocks.6, conv_head, bn2) fine-tuned: its
    BatchNormAct2d layers are synced with their activation kept (without it the two runs part at the first
    step), and it draws nothing at random, so 2 ranks compute what 1 does."""
    pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    name = "timm:tf_efficientnet_lite0"
    runs = {ranks: subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                   str(ranks), "-m", "featcache", "finetune", "--data", str(folder), "--weights", "random",
                                   "--image-size", "32", "--per-class", "7", "--batch-size", "8", "--epochs", "1",
                                   "--lr-backbone", "1e-3", "--backbone", name, "--quiet", "--out", str(tmp_path / str(ranks))],
                                  capture_output=True, text=True, timeout=600)
            for ranks in (1, 2)}
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    (history, weights, _), (ref_history, ref_weights, _) = read(tmp_path / "2"), read(tmp_path / "1")
    np.testing.assert_allclose(history["train_loss"], ref_history["train_loss"], rtol=1e-3)
    assert history["test_acc"] == ref_history["test_acc"]
    init = build_finetune_model("random", 3, 0, None, name).state_dict()
    names = [key for key in weights if weights[key].is_floating_point()]
    differences = torch.stack([(weights[key] - ref_weights[key]).norm() for key in names])
    updates = torch.stack([(ref_weights[key] - init[key]).norm() for key in names])
    assert updates.norm() > 0 and differences.norm() <= 0.03 * updates.norm()

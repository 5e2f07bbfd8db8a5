"""finetune and scratch: frozen means frozen, two learning rates on the right parameters."""
import json

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from featcache.cache.key import BACKBONE_PARAMETERS
from featcache.data.images import decode_all
from featcache.data.datasets import load_dataset
from featcache.data.images import ImageData
from featcache.train.config import EpochConfig
from featcache.train.end_to_end import build_finetune_model, finetune_model as finetune, scratch_model as scratch


@pytest.fixture(scope="module")
def data(image_folder):
    dataset = load_dataset(str(image_folder))
    return ImageData(decode_all(dataset.train, 32), torch.from_numpy(dataset.train.labels),
                     decode_all(dataset.test, 32), torch.from_numpy(dataset.test.labels), dataset.classes, 32, 0)


def _frozen_bn_statistics(model, unfrozen=("layer4",)):
    return {f"{name}.{buffer}": getattr(module, buffer).clone()
            for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)
            and not name.startswith(unfrozen) for buffer in ("running_mean", "running_var", "num_batches_tracked")}


@pytest.mark.parametrize("unfreeze", [("layer4",), ("layer2", "layer4")])
def test_frozen_batchnorm_statistics_never_change(data, unfreeze):
    before = _frozen_bn_statistics(build_finetune_model("random", 3, 0, list(unfreeze)), unfreeze)
    model, _ = finetune(data, "random", EpochConfig(epochs=2, batch_size=8), unfreeze=unfreeze, log=None)
    after = _frozen_bn_statistics(model, unfreeze)
    assert before.keys() == after.keys() and len(before) > 10
    assert all(torch.equal(before[key], after[key]) for key in before)
    # ... whereas the notebook's behaviour (whole model in train mode) does move them
    notebook, _ = finetune(data, "random", EpochConfig(epochs=1, batch_size=8), frozen_bn="train", log=None)
    moved = _frozen_bn_statistics(notebook)
    assert any(not torch.equal(before[key], moved[key]) for key in before if key.endswith("running_mean"))


def test_two_learning_rates_reach_the_right_parameters(data):
    initial = build_finetune_model("random", 3, 0, ["layer4"]).state_dict()
    model, _ = finetune(data, "random", EpochConfig(epochs=1, batch_size=100), lr_head=1e-3, lr_backbone=1e-5,
                        log=None)  # one batch of all 24 images: exactly one Adam step
    trained = model.state_dict()
    parameters = dict(model.named_parameters())
    for name, value in trained.items():
        change = (value.float() - initial[name].float()).abs().max().item()
        if name.startswith("fc."):
            assert change == pytest.approx(1e-3, rel=1e-2), name  # Adam's first step moves by ~lr
        elif name.startswith("layer4.") and name in parameters:
            assert change == pytest.approx(1e-5, rel=1e-2), name
        elif name in parameters:
            assert change == 0, name
    assert all(p.requires_grad == (n.startswith(("fc.", "layer4."))) for n, p in model.named_parameters())


@pytest.mark.parametrize("unfreeze", [("layer4",), ("layer3", "layer4")])
def test_cached_trunk_test_accuracy_equals_evaluating_the_whole_model(data, unfreeze):
    """finetune computes the frozen trunk's test outputs once; the last epoch's test accuracy must be
    what the whole trained model scores on the test images from scratch."""
    model, history = finetune(data, "random", EpochConfig(epochs=2, batch_size=8), unfreeze=unfreeze, log=None)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(data.test_batch(slice(start, start + 5))) for start in range(0, 12, 5)])
    assert history["test_acc"][-1] == (logits.argmax(1) == data.test_labels).sum().item() / len(data.test_labels)


def test_scratch_trains_everything(data):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        initial = resnet18(num_classes=3).state_dict()  # scratch's seeded init (seed 0)
    model, history = scratch(data, EpochConfig(epochs=2, batch_size=8), log=None)
    trained = model.state_dict()
    unchanged = [name for name, value in initial.items()
                 if value.is_floating_point() and torch.equal(value, trained[name].cpu())]
    assert not unchanged, unchanged  # every weight, bias and BatchNorm statistic moved
    assert len(history["test_acc"]) == 2 and all(0 <= acc <= 1 for acc in history["test_acc"])


def test_backbone_parameter_constant():
    model = resnet18()
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.fc.parameters()) \
        == BACKBONE_PARAMETERS


def test_finetune_cli_with_init_head(image_folder, small_cache, run_cli, tmp_path):
    args = ["--data", image_folder, "--weights", "random", "--image-size", "32"]
    head = run_cli("train-head", small_cache.path, "--epochs", "2", "--out", tmp_path / "head")
    assert head.exit_code == 0, head.output
    result = run_cli("finetune", *args, "--epochs", "1", "--init-head", tmp_path / "head", "--out", tmp_path / "ft",
                     "--quiet")
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "ft" / "weights.pt")
    head_state = torch.load(tmp_path / "head" / "weights.pt")
    assert (state["fc.weight"] - head_state["weight"]).abs().max() <= 1.01e-3  # started from it, one epoch of steps
    record = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert record["approach"] == "fine-tuning" and record["trainable_params"] == 8393728 + 3 * 512 + 3
    bad = run_cli("finetune", *args, "--unfreeze", "layer9", "--out", tmp_path / "bad")
    assert bad.exit_code != 0 and "layer9" in bad.stderr and "Traceback" not in bad.output


def test_decoding_per_batch_in_workers_trains_exactly_as_decoding_once(data, image_folder):
    """Splits that do not fit --max-memory are decoded per batch (training batches by DataLoader workers):
    the same pixels, so the same weights and history, bit for bit."""
    from featcache.data.images import DecodedSplit

    dataset = load_dataset(str(image_folder))
    lazy = ImageData(DecodedSplit(dataset.train, 32), data.train_labels, DecodedSplit(dataset.test, 32),
                     data.test_labels, data.classes, 32, 0, num_workers=2)
    assert lazy.decoding == "per batch (train and test)" and data.decoding == "in memory"
    config = EpochConfig(epochs=2, batch_size=7)
    for train in (lambda images: finetune(images, "random", config, unfreeze=("layer3", "layer4"), log=None),
                  lambda images: scratch(images, EpochConfig(epochs=1, batch_size=7), log=None)):
        (once, once_history), (per_batch, per_batch_history) = train(data), train(lazy)
        assert once_history["train_loss"] == per_batch_history["train_loss"]
        assert once_history["test_acc"] == per_batch_history["test_acc"]
        assert all(torch.equal(value, per_batch.state_dict()[name]) for name, value in once.state_dict().items())


def test_max_memory_decides_what_is_decoded_once(image_folder):
    from featcache import DataSpec, load_images

    spec = DataSpec(str(image_folder))
    assert load_images(spec, 32, max_memory="1GB").decoding == "in memory"
    test_only = 12 * 37 * 37 * 3  # the test split decoded (R = 37 for 32 px), the training split not
    assert load_images(spec, 32, max_memory=test_only).decoding == "per batch (train)"
    assert load_images(spec, 32, max_memory=1, num_workers=1).decoding == "per batch (train and test)"


def test_the_progress_bar_counts_training_and_test_images_of_every_epoch(image_folder, tmp_path):
    """24 training and 12 test images, 2 epochs: the bar's total is 2 x (24 + 12), and it reaches it."""
    import re

    from click.testing import CliRunner

    from featcache.cli import main

    result = CliRunner().invoke(main, ["scratch", "--data", str(image_folder), "--image-size", "32", "--epochs", "2",
                                       "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    counts = re.findall(r"train\+test: +\d+%\|[^|]*\| *(\d+)/(\d+)", result.stderr)
    assert counts and counts[-1] == ("72", "72"), result.stderr[-500:]

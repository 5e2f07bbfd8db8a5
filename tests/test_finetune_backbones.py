"""Fine-tuning and training from scratch on other backbones than ResNet-18: the default last stage of
each family and nothing else trains, dropout and stochastic depth are seeded, timm's BatchNorm with
activation survives synced BatchNorm, and a fine-tuned non-ResNet run loads, exports and predicts."""
import numpy as np
import pytest
import torch

import featcache
from featcache.backbone import default_unfreeze, load_backbone
from featcache.cache.reader import load_cache
from featcache.train.config import EpochConfig
from featcache.train.end_to_end import build_finetune_model
from featcache.train.loop import seeded_linear

from conftest import assert_clean_failure, cached_and_end_to_end_heads, export_and_predict

LAST_STAGES = {  # what each family's default --unfreeze trains besides the head
    "resnet18": ("layer4",),
    "efficientnet_b0": ("features.7", "features.8"),
    "mobilenet_v3_small": ("features.11", "features.12", "classifier.0"),
    "convnext_tiny": ("features.7", "classifier.0"),
    "vit_b_16": ("encoder.layers.encoder_layer_11", "encoder.ln"),
    "timm:tf_efficientnet_lite0": ("blocks.6", "conv_head", "bn2"),
    "timm:convnext_atto": ("stages.3", "head.norm"),
    "timm:vit_tiny_patch16_224": ("blocks.11", "norm"),
    "timm:mobilenetv3_small_100": ("blocks.4", "blocks.5", "conv_head"),  # blocks.5: a lone 1x1 ConvBnAct
}


@pytest.mark.parametrize("name", sorted(LAST_STAGES))
def test_each_family_has_its_last_stage(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    assert default_unfreeze(name) == LAST_STAGES[name]


def _trained_names(model, unfreeze):
    return tuple(name for name, _ in model.named_parameters()
                 if any(name.startswith(prefix + ".") for prefix in (model.head_name, *unfreeze)))


@pytest.mark.parametrize("name", ["efficientnet_b0", "timm:tf_efficientnet_lite0"])
def test_finetune_trains_the_last_stage_and_nothing_else_with_the_same_numbers_twice(image_folder, name):
    """One epoch: every parameter and BatchNorm statistic outside the head and the default last stage is
    bit-identical to the pretrained network's; the stage moved. EfficientNet-B0's last stage draws
    stochastic depth from the global generator: two runs with the same seed still agree exactly."""
    if name.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    images = featcache.load_images(featcache.DataSpec(str(image_folder)), image_size=32, seed=0, device="cpu")
    settings = {"weights": "random", "epochs": 1, "batch_size": 8, "backbone": name}
    first, second = featcache.finetune(images, **settings), featcache.finetune(images, **settings)
    start = build_finetune_model("random", 3, 0, None, name).state_dict()
    assert first.config["unfreeze"] == list(LAST_STAGES[name])
    prefix = "model." if name.startswith("timm:") else ""  # timm's Lite0 runs behind its (0.5, 0.5) normalisation
    trained = {key for key in start if any(key.startswith(prefix + module + ".") for module in
                                           (*LAST_STAGES[name], first.model.head_name.removeprefix(prefix)))}
    after = first.model.state_dict()
    for key, value in start.items():
        if key not in trained:
            assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[key], start[key]) for key in trained if key.startswith(prefix + LAST_STAGES[name][0]))
    assert all(torch.equal(a, b) for a, b in zip(after.values(), second.model.state_dict().values()))
    assert first.history == second.history


@pytest.mark.slow
def test_a_finetuned_mobilenet_loads_exports_and_predicts(image_folder, tmp_path, run_cli, monkeypatch):
    """finetune --backbone mobilenet_v3_small: the run records its backbone and the modules it trained,
    Run.load rebuilds it, the exported file predicts the test folder with the run's accuracy; scratch on
    the same backbone loads too, and a network torch.export cannot trace is refused in one line."""
    common = ["--data", image_folder, "--image-size", 32, "--epochs", 1, "--batch-size", 8, "--quiet",
              "--backbone", "mobilenet_v3_small"]
    tuned = run_cli("finetune", *common, "--weights", "random", "--out", tmp_path / "ft")
    assert tuned.exit_code == 0, tuned.output
    run = featcache.Run.load(tmp_path / "ft")
    assert run.config["backbone"] == "mobilenet_v3_small"
    assert run.config["unfreeze"] == ["features.11", "features.12", "classifier.0"]
    assert run.model.classifier[3].out_features == 3
    accuracy, metadata = export_and_predict(run_cli, tmp_path / "ft", image_folder / "test", tmp_path)
    assert accuracy == run.final_test_acc and metadata["backbone"] == "torchvision.mobilenet_v3_small"
    scratch = run_cli("scratch", *common, "--out", tmp_path / "scratch")
    assert scratch.exit_code == 0, scratch.output
    assert featcache.Run.load(tmp_path / "scratch").model.classifier[3].out_features == 3

    def untraceable(*args, **kwargs):  # as torch.export fails on code it cannot trace (pages of detail)
        raise RuntimeError("Could not guard on data-dependent expression\nand forty more lines")

    monkeypatch.setattr(torch.export, "export", untraceable)
    assert_clean_failure(run_cli("export", tmp_path / "scratch", "--out", tmp_path / "scratch.pt2"),
                         "torch.export cannot trace the network of", "torchvision.mobilenet_v3_small",
                         "Could not guard on data-dependent expression and forty more lines")
    assert not (tmp_path / "scratch.pt2").exists()


def test_unknown_families_and_modules_are_one_line(image_folder, tmp_path, run_cli):
    common = ["--data", image_folder, "--weights", "random", "--image-size", 32, "--epochs", 1, "--quiet"]
    assert_clean_failure(run_cli("finetune", *common, "--backbone", "regnet_y_400mf", "--out", tmp_path / "a"),
                         "regnet_y_400mf (RegNet) has no default last stage", "--unfreeze",
                         "stem, trunk_output, fc")
    assert_clean_failure(run_cli("finetune", *common, "--backbone", "efficientnet_b0", "--unfreeze", "layer4",
                                 "--out", tmp_path / "b"),
                         "--unfreeze: layer4 is not a module of efficientnet_b0", "features, classifier")
    assert_clean_failure(run_cli("finetune", *common, "--unfreeze", "layer4/x", "--out", tmp_path / "c"),
                         "--unfreeze", "layer4/x, not a module name", exit_code=2)
    assert_clean_failure(run_cli("finetune", *common, "--backbone", "efficientnet_b0", "--unfreeze",
                                 "features.8,classifier", "--out", tmp_path / "d"),
                         "--unfreeze: classifier holds efficientnet_b0's new head (classifier.1)")
    assert_clean_failure(run_cli("finetune", *common, "--unfreeze", "layer4,layer4.1", "--out", tmp_path / "e"),
                         "--unfreeze: layer4.1 is named twice (or inside layer4)")
    for command, extra in (("finetune", common), ("scratch", common[:2] + common[4:])):  # before any decoding
        assert_clean_failure(run_cli(command, *extra, "--backbone", "vit_b_16", "--out", tmp_path / command),
                             "vit_b_16 cannot run a 32-px image")
    assert not any(tmp_path.iterdir())  # refused before any run folder was written


def test_a_run_from_before_backbones_resumes_as_resnet18(image_folder, tmp_path, run_cli):
    """history.json without `backbone` (written before --backbone): --resume finds it finished with the
    same options, and it loads as a ResNet-18."""
    import json

    common = ["--data", image_folder, "--weights", "random", "--image-size", 32, "--epochs", 1, "--quiet",
              "--out", tmp_path / "ft"]
    assert run_cli("finetune", *common).exit_code == 0
    history = json.loads((tmp_path / "ft" / "history.json").read_text())
    del history["config"]["backbone"]
    (tmp_path / "ft" / "history.json").write_text(json.dumps(history))
    resumed = run_cli("finetune", *common, "--resume", "--overwrite")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "ft" / "history.json").read_text()) == history  # kept as it was
    assert featcache.Run.load(tmp_path / "ft").model.fc.out_features == 3


def test_synced_batchnorm_keeps_timms_activation():
    """GlooSyncBatchNorm takes the place of timm's BatchNormAct2d (BatchNorm, then its activation) and
    gives it back: in eval mode the converted network computes what the original does, and reverting
    restores the original modules with the state trained in between."""
    pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    from timm.layers import BatchNormAct2d

    from featcache.train.ddp import GlooSyncBatchNorm, revert_batchnorm

    model = load_backbone("random", 0, "timm:tf_efficientnet_lite0").eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels)
        kinds = [type(module) for module in model.modules()]
        GlooSyncBatchNorm.convert(model)
        assert not any(isinstance(module, BatchNormAct2d) for module in model.modules())
        assert torch.equal(model(pixels), expected)  # the activation is still applied
        synced = next(module for module in model.modules() if isinstance(module, GlooSyncBatchNorm))
        synced.running_mean.add_(1.0)  # as training would change it
        revert_batchnorm(model)
    assert [type(module) for module in model.modules()] == kinds
    assert any(isinstance(module, BatchNormAct2d) and bool((module.running_mean != 0).all()) for module in model.modules())


def test_cached_training_equals_the_end_to_end_loop_on_a_non_resnet_backbone(image_folder, tmp_path):
    """As tests/test_heads.py checks for ResNet-18: a head trained from a mobilenet_v3_small cache equals
    the notebook's loop running that backbone on every batch (1,024-d features)."""
    spec = featcache.CacheSpec(featcache.DataSpec(str(image_folder)), "random", 32, 2, cache_dir=tmp_path,
                               backbone="mobilenet_v3_small")
    cache = load_cache(featcache.extract(spec, progress=False).path)
    config = EpochConfig(epochs=3, batch_size=4, seed=3)  # 3 epochs > 2 augmented views: the view cycle wraps
    (head, history), (reference_head, reference) = cached_and_end_to_end_heads(image_folder, cache,
                                                                               "mobilenet_v3_small", config, 1e-2)
    assert head.weight.shape == (3, 1024)
    assert torch.allclose(head.weight, reference_head.weight, atol=1e-4)
    assert torch.allclose(head.bias, reference_head.bias, atol=1e-4)
    assert np.allclose(history["train_loss"], reference["train_loss"], atol=1e-4)
    assert history["train_acc"] == reference["train_acc"] and history["test_acc"] == reference["test_acc"]
    assert not torch.equal(head.weight, seeded_linear(1024, 3, config.seed).weight)  # it trained


def test_backbones_side_by_side(image_folder, tmp_path, run_cli):
    """featcache backbones: one cache per backbone (each its own image size), every head over the same seeds
    on each, a row per backbone and head, a paired comparison per pair and head, the runs on disk; a lone
    backbone or two labelled alike are one line."""
    common = ["--data", image_folder, "--weights", "random", "--image-size", 32, "--views", 2, "--cache-dir",
              tmp_path / "cache", "--seeds", "0-2", "--epochs", 2, "--heads", "linear,knn", "--quiet"]
    result = run_cli("backbones", *common, "--backbone", "resnet18", "--backbone",
                     "mobilenet_v3_small,image-size=48,label=mnv3", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = __import__("json").loads((tmp_path / "out" / "backbones.json").read_text())
    rows = {(row["backbone"], row["head"]): row for row in report["rows"]}
    assert set(rows) == {(label, head) for label in ("resnet18 (random)", "mnv3") for head in ("linear", "knn")}
    assert rows["mnv3", "knn"]["feature_dim"] == 1024 and rows["mnv3", "knn"]["image_size"] == 48
    assert rows["resnet18 (random)", "linear"]["feature_dim"] == 512
    assert all(row["seeds"] == 3 and row["forward_images_per_s"] > 0 for row in rows.values())
    assert sorted((c["head"], c["a"], c["b"]) for c in report["comparisons"]) == \
        [(head, "resnet18 (random)", "mnv3") for head in ("knn", "linear")]
    linear = featcache.SeedRuns.load(tmp_path / "out" / "mnv3" / "linear")
    assert linear.seeds == [0, 1, 2] and rows["mnv3", "linear"]["test_acc"] == pytest.approx(
        np.mean(linear.final_test_accs))
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 2
    for name in ("backbones.md", "backbones.csv", "backbones.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert_clean_failure(run_cli("backbones", *common, "--backbone", "resnet18", "--out", tmp_path / "one"),
                         "needs at least two")
    assert_clean_failure(run_cli("backbones", *common, "--backbone", "resnet18,label=a", "--backbone",
                                 "mobilenet_v3_small,label=a", "--out", tmp_path / "same"), "same label")
    assert_clean_failure(run_cli("backbones", *common, "--backbone", "resnet18,size=64", "--out", tmp_path / "bad"),
                         "'size=64' is not weights=W, image-size=S or label=L", exit_code=2)

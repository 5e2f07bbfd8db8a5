"""A torchvision classification model as a feature extractor (ResNet-18, 512-d, by default), from ImageNet,
a local file or a seeded random init."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from .errors import FeatcacheError
from .settings import DEFAULT_BACKBONE


def imagenet_weights_path() -> Path:
    """Where torchvision's own cache keeps the ImageNet ResNet-18 file."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict(name: str) -> dict:
    import torchvision.models

    enum = ResNet18_Weights.IMAGENET1K_V1 if name == DEFAULT_BACKBONE else torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    try:
        return enum.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # urllib, ssl, hash and socket errors all mean the same to a user
        raise FeatcacheError(
            f"ImageNet {name} weights are not in torchvision's cache ({path}) and could not be "
            f"downloaded ({type(error).__name__}: {error}); put the file there, or pass `weights` PATH "
            "with a local state dict") from None


def _file_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise FeatcacheError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load's own messages run to many lines and suggest unsafe loading
        raise FeatcacheError(f"weights file {path} is not a state dict that torch.load(weights_only=True) "
                             f"can read ({type(error).__name__})") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatcacheError(f"weights file {path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def torchvision_model(name: str) -> nn.Module:
    """torchvision's classification model `name` (torchvision.models.list_models), untrained; an unknown
    name is one line naming the closest ones."""
    import difflib

    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        raise FeatcacheError(f"`backbone` {name} is not a torchvision classification model"
                             + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + "; see torchvision.models.list_models()")
    return torchvision.models.get_model(name, weights=None)


def classifier_name(model: nn.Module) -> str:
    """The qualified name of the model's last Linear layer, its classifier: what it is without it is the
    feature extractor (ResNet `fc`, EfficientNet and MobileNet `classifier.1`/`classifier.3`, ConvNeXt
    `classifier.2` after its LayerNorm and Flatten, ViT `heads.head`)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise FeatcacheError(f"{type(model).__name__} has no Linear classifier to take its features before")
    return linears[-1]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def load_backbone(weights: str = "imagenet", seed: int = 0, name: str = DEFAULT_BACKBONE) -> nn.Module:
    """torchvision's model `name` whose forward returns its pooled features: its classifier (the last
    Linear, `classifier_name`) replaced by Identity. `feature_dim` and `classifier_name` are set on the
    returned module. `weights` is "imagenet" (the model's default ImageNet weights), "random" (seeded
    init, for tests) or a path to a state dict; a file's own classifier is dropped, and a file for
    another architecture is a FeatcacheError naming what differs.
    """
    build = resnet18 if name == DEFAULT_BACKBONE else lambda: torchvision_model(name)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):  # the seeded init leaves the caller's random state alone
            torch.manual_seed(seed)
            model = build()
    else:
        model = build()  # every parameter is then loaded
    head = classifier_name(model)
    feature_dim = model.get_submodule(head).in_features
    replace_module(model, head, nn.Identity())
    model.feature_dim, model.classifier_name = feature_dim, head
    if weights == "random":
        return model
    state = _imagenet_state_dict(name) if weights == "imagenet" else _file_state_dict(Path(weights))
    state = {key: value for key, value in state.items() if not key.startswith(head + ".")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
                   for key, value in expected.items() if key in state and state[key].shape != value.shape]
    if missing or unexpected or wrong_shape:
        details = "; ".join(part for part in (
            f"missing {len(missing)} keys (e.g. {missing[0]})" if missing else "",
            f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})" if unexpected else "",
            f"wrong shape: {wrong_shape[0]}" if wrong_shape else "") if part)
        raise FeatcacheError(f"weights {weights} do not fit torchvision {name}: {details}")
    model.load_state_dict(state)
    return model


def check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    """One forward of a blank image, so that a backbone that cannot take `image_size` (ViT's fixed 224,
    a network whose pooling leaves nothing at a small size) says so in one line before any work."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError) as error:
        reason = " ".join(str(error).split())[:150] or type(error).__name__
        raise FeatcacheError(f"`backbone` {name} cannot take {image_size}-px images ({reason}); choose another "
                             "`image_size` or backbone") from None


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise FeatcacheError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FeatcacheError(f"device {device} requested but CUDA is not available")
    return resolved


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total

"""torchvision ResNet-18 as a 512-d feature extractor, from ImageNet, a local file or a seeded random init."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from .errors import FeatcacheError


def imagenet_weights_path() -> Path:
    """Where torchvision's own cache keeps the ImageNet ResNet-18 file."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict() -> dict:
    path = imagenet_weights_path()
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # urllib, ssl, hash and socket errors all mean the same to a user
        raise FeatcacheError(
            f"ImageNet ResNet-18 weights are not in torchvision's cache ({path}) and could not be "
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


def load_backbone(weights: str = "imagenet", seed: int = 0) -> nn.Module:
    """ResNet-18 whose forward returns the 512-d pooled features (fc replaced by Identity).

    `weights` is "imagenet", "random" (seeded init, for tests) or a path to a state dict; a file's
    own fc is dropped, and a file for another architecture is a FeatcacheError naming what differs.
    """
    if weights == "random":
        with torch.random.fork_rng(devices=[]):  # the seeded init leaves the caller's random state alone
            torch.manual_seed(seed)
            model = resnet18()
        model.fc = nn.Identity()
        return model
    state = _imagenet_state_dict() if weights == "imagenet" else _file_state_dict(Path(weights))
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    model = resnet18()
    model.fc = nn.Identity()
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
        raise FeatcacheError(f"weights {weights} do not fit torchvision resnet18: {details}")
    model.load_state_dict(state)
    return model


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

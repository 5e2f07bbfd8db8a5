"""A torchvision classification model as a feature extractor (ResNet-18, 512-d, by default), from ImageNet,
a local file or a seeded random init."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from .errors import FeatcacheError
from .npz import check_torch_file
from .data.transform import IMAGENET_MEAN, IMAGENET_STD
from .settings import DEFAULT_BACKBONE


def imagenet_weights_path() -> Path:
    """Where torchvision's own cache keeps the ImageNet ResNet-18 file."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict(name: str) -> dict:
    """ResNet-18's ImageNet weights, as every featcache before --backbone loaded them."""
    path = imagenet_weights_path()
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # urllib, ssl, hash and socket errors all mean the same to a user
        raise FeatcacheError(
            f"ImageNet {name} weights are not in torchvision's cache ({path}) and could not be "
            f"downloaded ({type(error).__name__}: {error}); put the file there, or pass `weights` PATH "
            "with a local state dict") from None


def _file_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise FeatcacheError(f"weights file {path} does not exist")
    try:
        check_torch_file(path)
    except ValueError as problem:
        raise FeatcacheError(f"weights file {path} cannot be read safely: {problem}") from None
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


def torchvision_model(name: str, imagenet: bool = False, classes: int = 1000) -> nn.Module:
    """torchvision's classification model `name` (torchvision.models.list_models), untrained, or with
    `imagenet` built by torchvision's own builder with its DEFAULT weights (which also sets what they
    expect, such as Inception's transform_input); an unknown name is one line naming the closest ones."""
    import difflib

    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        raise FeatcacheError(f"`backbone` {name} is not a torchvision classification model"
                             + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + "; see torchvision.models.list_models()")
    if not imagenet:
        return torchvision.models.get_model(name, weights=None, num_classes=classes)
    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except Exception as error:  # urllib, ssl, hash and socket errors all mean the same to a user
        raise FeatcacheError(f"ImageNet {name} weights are not in torchvision's cache ({torch.hub.get_dir()}) and "
                             f"could not be downloaded ({type(error).__name__}); pass `weights` PATH with a local "
                             "state dict") from None


TIMM = "timm:"  # a backbone name with this prefix is a timm model (the optional extra featcache[timm])


def timm_model(name: str, pretrained: bool, classes: int = 1000) -> nn.Module:
    """timm's model `name` with its 1000-class classifier (its own pretrained weights through timm with
    `pretrained`); timm missing, or a name timm does not know, is one line."""
    try:
        import timm
    except ImportError:
        raise FeatcacheError(f"`backbone` {TIMM}{name} needs timm: pip install 'featcache[timm]'") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:3]
        raise FeatcacheError(f"`backbone` {TIMM}{name} is not a timm model"
                             + (f" (did you mean {', '.join(close)}?)" if close else "") + "; see timm.list_models()")
    try:  # the model's own number of classes unless told otherwise (an in21k tag's head is not 1000)
        return timm.create_model(name, pretrained=pretrained, **({"num_classes": classes} if classes != 1000 else {}))
    except Exception as error:  # no network, no cached file: huggingface_hub and urllib raise many kinds
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:150]}"
        if not pretrained:
            raise FeatcacheError(f"timm could not build {name} ({reason})") from None
        raise FeatcacheError(f"timm could not load the pretrained weights of {name} ({reason}); pass `weights` "
                             "PATH to a local file") from None


class Renormalized(nn.Module):
    """A backbone that expects another normalisation than ImageNet's (timm's pretrained_cfg mean and std),
    fed featcache's ImageNet-normalised views: x * ImageNet std + ImageNet mean gives the pixels in
    [0, 1] again, then (pixels - mean) / std is the model's own normalisation."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        imagenet_mean, imagenet_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (mean, std))
        self.register_buffer("scale", imagenet_std / std, persistent=False)
        self.register_buffer("shift", (imagenet_mean - mean) / std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


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


def load_network(weights: str = "imagenet", seed: int = 0, name: str = DEFAULT_BACKBONE) -> nn.Module:
    """The classification network `name` (a torchvision model, or timm's as 'timm:NAME') with its own
    classifier. `weights` is "imagenet" (the model's default ImageNet weights), "random" (seeded init,
    for tests) or a path to a state dict; a file's own classifier may be for other classes, and a file
    for another architecture is a FeatcacheError naming what differs."""
    if weights == "random":
        with torch.random.fork_rng(devices=[]):  # the seeded init leaves the caller's random state alone
            torch.manual_seed(seed)
            model = untrained_network(name)
    elif weights == "imagenet" and name != DEFAULT_BACKBONE:
        model = untrained_network(name, imagenet=True)  # through torchvision's or timm's own loader
    else:
        model = untrained_network(name)  # every parameter is then loaded
        state = _imagenet_state_dict(name) if weights == "imagenet" else _file_state_dict(Path(weights))
        _load_whole(model, by_order(state, model.state_dict()), weights, name)
    return model


def untrained_network(name: str, imagenet: bool = False, classes: int = 1000) -> nn.Module:
    """The network `name` in its library's own init (or its library's ImageNet weights)."""
    if name.startswith(TIMM):
        return timm_model(name[len(TIMM):], imagenet, classes)
    if name == DEFAULT_BACKBONE and not imagenet:
        return resnet18(num_classes=classes)
    return torchvision_model(name, imagenet, classes)


def load_backbone(weights: str = "imagenet", seed: int = 0, name: str = DEFAULT_BACKBONE) -> nn.Module:
    """The backbone `name` whose forward returns its pooled features: load_network's network with its
    classifier (the last Linear, `classifier_name`) replaced by Identity. `feature_dim` and
    `classifier_name` are set on the returned module. A timm model normalised otherwise than ImageNet's
    mean and std (its pretrained_cfg) is wrapped in Renormalized."""
    model = load_network(weights, seed, name)
    if name.startswith(TIMM):  # timm's own way: every head (a distilled model has two) becomes Identity
        head, feature_dim = None, model.num_features
        model.reset_classifier(0)
    else:
        head = classifier_name(model)
        feature_dim = model.get_submodule(head).in_features
        replace_module(model, head, nn.Identity())
    model = _renormalized(model, name)
    model.feature_dim, model.classifier_name = feature_dim, head  # head None: a trained head goes after the model
    return model


def _renormalized(model: nn.Module, name: str) -> nn.Module:
    config = getattr(model, "pretrained_cfg", None) or {}
    if name.startswith(TIMM) and "mean" in config and (tuple(config["mean"]), tuple(config["std"])) != \
            (IMAGENET_MEAN, IMAGENET_STD):
        return Renormalized(model, config["mean"], config["std"])
    return model


def with_new_head(model: nn.Module, name: str, make_head: Callable[[int], nn.Module]) -> nn.Module:
    """load_network's `model` with its classifier replaced by make_head(feature size), as fine-tuning
    trains it; Renormalized where load_backbone's would be. Sets `head_name` (the head's qualified name
    in the returned module) and `feature_dim`."""
    if name.startswith(TIMM):
        model.reset_classifier(1)  # one Linear where timm's head goes, replaced below
    head = classifier_name(model)
    feature_dim = model.get_submodule(head).in_features
    replace_module(model, head, make_head(feature_dim))
    return _named_head(_renormalized(model, name), head, feature_dim)


def scratch_network(name: str, classes: int, seed: int) -> nn.Module:
    """The network `name` from its library's init seeded by `seed`, `classes` outputs; the same modules
    and state-dict names as with_new_head's (a fine-tuned run's weights load into it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = untrained_network(name, classes=classes)
    head = classifier_name(model)
    return _named_head(_renormalized(model, name), head, model.get_submodule(head).in_features)


def _named_head(model: nn.Module, head: str, feature_dim: int) -> nn.Module:
    model.head_name = f"model.{head}" if isinstance(model, Renormalized) else head
    model.feature_dim = feature_dim
    return model


FINETUNE_FAMILIES = {"ResNet", "EfficientNet", "MobileNetV2", "MobileNetV3", "ConvNeXt", "VisionTransformer"}
STAGE_LISTS = ("blocks", "stages", "encoder.layers", "features")  # where each family keeps its stages, in order


def network_of(model: nn.Module) -> nn.Module:
    """The library's own network inside a Renormalized wrapper: the module names users write."""
    return model.model if isinstance(model, Renormalized) else model


def last_stage(model: nn.Module, name: str) -> tuple[str, ...]:
    """The modules fine-tuning trains by default besides the head (its `unfreeze`): the last stage of a
    family featcache knows (torchvision's and timm's ResNet, EfficientNet, MobileNet, ConvNeXt, ViT) and
    every parameter after it up to the head (EfficientNet's final 1x1 convolution, ConvNeXt's and ViT's
    final norm). ResNet: layer4, as before --backbone. Another family is one line asking for `unfreeze`."""
    network = network_of(model)
    family = type(network).__name__
    stage = "layer4" if hasattr(network, "layer4") else None
    for path in STAGE_LISTS if stage is None and family in FINETUNE_FAMILIES else ():
        try:
            stages = network.get_submodule(path)
        except AttributeError:
            continue
        blocks = [child for child, module in stages.named_children()
                  if not _is_final_conv(module) and any(True for _ in module.parameters())]
        if blocks:
            stage = f"{path}.{blocks[-1]}"
            break
    if stage is None or family not in FINETUNE_FAMILIES:
        raise FeatcacheError(f"`backbone` {name} ({family}) has no default last stage to fine-tune; name the "
                             f"modules to train with `unfreeze` (its top-level modules: {_top_level(network)})")
    names = [key for key, _ in network.named_parameters()]
    head = own_head_name(model)
    first = next(k for k, key in enumerate(names) if key.startswith(stage + "."))
    return _covering_modules(network, {key for key in names[first:] if not key.startswith(head + ".")})


def network_structure(name: str) -> nn.Module:
    """The network `name` without weights, for what its structure alone answers (module names, parameter
    counts): built on the meta device (no memory, no init) where its init code allows, else initialised
    on the CPU; the caller's random state is untouched either way."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return untrained_network(name)
        except Exception:  # init code that reads values (RegNet's) cannot run on meta tensors; a real error recurs
            return untrained_network(name)


def default_unfreeze(name: str) -> tuple[str, ...]:
    """last_stage of the network `name`, from its structure alone."""
    with torch.random.fork_rng(devices=[]):
        return last_stage(with_new_head(network_structure(name), name, lambda width: nn.Linear(width, 1)), name)


def check_trainable(name: str, image_size: int, unfreeze) -> tuple[str, ...]:
    """Before any image is decoded: the network `name` (its library's init, no weights) runs an
    `image_size` image and has the `unfreeze` modules (None: its family's last stage); returns them."""
    with torch.random.fork_rng(devices=[]):
        model = with_new_head(untrained_network(name), name, lambda width: nn.Linear(width, 1))
    check_input_size(model, name, image_size)
    unfreeze = tuple(unfreeze) if unfreeze is not None else last_stage(model, name)
    check_unfreeze(model, name, unfreeze)
    return unfreeze


def own_head_name(model: nn.Module) -> str:
    """with_new_head's head, by its name in the library's own network (network_of)."""
    return model.head_name.removeprefix("model.") if isinstance(model, Renormalized) else model.head_name


def _is_final_conv(module: nn.Module) -> bool:
    """torchvision's and timm's final 1x1 convolution among a network's stages (alone, or alone in a
    Sequential as in timm's MobileNetV3): what follows the last stage, not a stage."""
    while type(module) is nn.Sequential and len(module) == 1:
        module = module[0]
    return type(module).__name__ in ("Conv2dNormActivation", "ConvBnAct")


def _covering_modules(network: nn.Module, parameters: set[str]) -> tuple[str, ...]:
    """The fewest modules whose parameters are exactly `parameters`, in registration order."""
    chosen = []
    for path, module in network.named_modules():
        own = {f"{path}.{key}" for key, _ in module.named_parameters()}
        if path and own and own <= parameters and not any(path.startswith(c + ".") for c in chosen):
            chosen.append(path)
    return tuple(chosen)


def _top_level(network: nn.Module) -> str:
    return ", ".join(child for child, module in network.named_children() if any(True for _ in module.parameters()))


def check_unfreeze(model: nn.Module, name: str, unfreeze) -> None:
    """Each of `unfreeze` names a module of the network with parameters, apart from its head and from each
    other (a parameter in two of them would be trained twice): one line if not."""
    network, head = network_of(model), own_head_name(model)
    for module in unfreeze:
        try:
            found = network.get_submodule(module)
        except AttributeError:
            found = None
        if found is None or not any(True for _ in found.parameters()):
            raise FeatcacheError(f"`unfreeze`: {module} is not a module of {name} with parameters; its top-level "
                                 f"modules: {_top_level(network)}")
        if module == head or head.startswith(module + "."):
            raise FeatcacheError(f"`unfreeze`: {module} holds {name}'s new head ({head}), which always trains; name "
                                 "the modules before it")
        inside = [other for other in unfreeze if other != module and module.startswith(other + ".")]
        if inside or list(unfreeze).count(module) > 1:
            raise FeatcacheError(f"`unfreeze`: {module} is named twice (or inside {', '.join(inside)})")


def module_path(model: nn.Module, module: str) -> str:
    """`module` (a name in the library's own network) as a name in `model`."""
    return f"model.{module}" if isinstance(model, Renormalized) else module


def by_order(state: dict, expected: dict) -> dict:
    """`state` under `expected`'s names when none of its names match but its tensors have the same shapes
    in the same order (BatchNorm's num_batches_tracked aside): another implementation's names for the
    same network, such as the EfficientNet-Lite0 wheel's (lukemelas-style) for timm's
    tf_efficientnet_lite0. Otherwise `state` as it is."""
    def tensors(names):
        return [name for name in names if not name.endswith("num_batches_tracked")]

    mine, theirs = tensors(expected), tensors(state)
    if set(mine) & set(theirs) or len(mine) != len(theirs) or \
            any(state[a].shape != expected[b].shape or a.rsplit(".", 1)[-1] != b.rsplit(".", 1)[-1]
                for a, b in zip(theirs, mine)):  # the same kind of tensor too: BatchNorm's four share a shape
        return state
    return {b: state[a] for a, b in zip(theirs, mine)}


def _load_whole(model: nn.Module, state: dict, weights: str, name: str) -> None:
    """Every tensor of the model from `state`, the classifier's included when it has them (a file without
    the classifier, or with another number of classes, leaves the model's: it is dropped next)."""
    expected = model.state_dict()
    head = classifier_name(model) + "."
    state = {key: value for key, value in state.items()
             if not key.startswith(head) or (key in expected and expected[key].shape == value.shape)}
    for key in expected:
        if key.startswith(head) and key not in state:
            state[key] = expected[key]
        elif key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
                   for key, value in expected.items() if key in state and state[key].shape != value.shape]
    if missing or unexpected or wrong_shape:
        details = "; ".join(part for part in (
            f"missing {len(missing)} keys (e.g. {missing[0]})" if missing else "",
            f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})" if unexpected else "",
            f"wrong shape: {wrong_shape[0]}" if wrong_shape else "") if part)
        raise FeatcacheError(f"weights {weights} do not fit {'' if name.startswith(TIMM) else 'torchvision '}{name}: "
                             f"{details}")
    model.load_state_dict(state)


def check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    """One forward of a blank image, so that a backbone that cannot take `image_size` (ViT's fixed 224,
    a network whose pooling leaves nothing at a small size) says so in one line before any work."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    except Exception as error:  # each model fails its own way: assertions, shape errors, index errors
        reason = " ".join(str(error).split())[:150] or type(error).__name__
        raise FeatcacheError(f"`backbone` {name} cannot run a {image_size}-px image ({reason}); choose another "
                             "`image_size` or backbone") from None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host timer counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_throughput(backbone: nn.Module, batch: torch.Tensor, batches: int) -> float:
    """Images/s of the backbone alone on one prepared batch (after a warm-up forward): the ceiling for
    extraction, and the cost `featcache backbones` sets each backbone's accuracy against."""
    with torch.inference_mode():
        backbone(batch)  # warm-up: allocator, kernels
        synchronize(batch.device)
        started = time.perf_counter()
        for _ in range(batches):
            backbone(batch).float().cpu()
        synchronize(batch.device)
    return batches * len(batch) / (time.perf_counter() - started)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total

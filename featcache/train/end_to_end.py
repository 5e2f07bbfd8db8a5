"""End-to-end training on images: fine-tuning, training from scratch, and the notebook's feature
extraction (the reference the cache is checked and timed against), all on featcache.train.loop's epochs."""
from __future__ import annotations

import time

import torch
from torch import nn
from tqdm import tqdm

from ..errors import FeatcacheError
from ..data.images import ImageData
from ..backbone import check_unfreeze, last_stage, load_network, module_path, scratch_network, with_new_head
from ..settings import DEFAULT_BACKBONE
from .ddp import Ranks, revert_batchnorm
from .heads import LinearHeads, single_head_history, train_heads, with_bias_column
from ..cache.reader import view_for_epoch
from .config import EpochConfig
from .loop import EVAL_BATCH, evaluate, run_epochs, seeded_linear

def build_finetune_model(weights: str, classes: int, seed: int, unfreeze: list[str] | None,
                         backbone: str = DEFAULT_BACKBONE) -> nn.Module:
    """The pretrained network with a new seeded head, everything frozen but the head and the `unfreeze`
    modules (featcache.backbone.check_unfreeze); None means the family's last stage
    (featcache.backbone.last_stage: ResNet's layer4). The modules it trains are its `unfreeze`."""
    model = with_new_head(load_network(weights, seed, backbone), backbone,
                          lambda width: seeded_linear(width, classes, seed))
    if unfreeze is None:
        unfreeze = list(last_stage(model, backbone))
    check_unfreeze(model, backbone, unfreeze)
    model.requires_grad_(False)
    for name in (model.head_name, *(module_path(model, module) for module in unfreeze)):
        model.get_submodule(name).requires_grad_(True)
    model.unfreeze = list(unfreeze)
    return model


RESNET_ORDER = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]


def split_trunk(model: nn.Module, unfreeze: list[str]) -> tuple[nn.Sequential, nn.Sequential] | None:
    """(frozen trunk, trainable rest) of a torchvision ResNet, split before the first unfrozen stage, so
    that the trunk runs without gradients and its test outputs are computed once; None for another
    network, which runs whole (autograd records nothing below the first trainable module either way)."""
    from torchvision.models import ResNet

    if not isinstance(model, ResNet) or not set(unfreeze) <= set(RESNET_ORDER):
        return None
    first = min(RESNET_ORDER.index(stage) for stage in unfreeze) if unfreeze else len(RESNET_ORDER)
    trunk = nn.Sequential(*(getattr(model, name) for name in RESNET_ORDER[:first]))
    rest = nn.Sequential(*(getattr(model, name) for name in RESNET_ORDER[first:]), nn.Flatten(1), model.fc)
    return trunk, rest


def finetune_model(data: ImageData, weights: str, config: EpochConfig, lr_head: float = 1e-3,
             lr_backbone: float = 1e-5, unfreeze: list[str] | None = None, frozen_bn: str = "eval",
             init_head: dict | None = None, log=tqdm.write, progress: bool = False, ranks=None,
             checkpoint=None, backbone: str = DEFAULT_BACKBONE) -> tuple[nn.Module, dict]:
    """Fine-tune the `unfreeze` modules (default: the backbone's last stage) and a new head with two
    learning rates.

    frozen_bn="eval" keeps frozen modules in eval mode (BatchNorm statistics never change), which also
    makes a ResNet's frozen trunk's output on the test images fixed: computed once, reused every epoch.
    frozen_bn="train" reproduces the notebook (whole model in train mode). `ranks` and `checkpoint`:
    featcache.train.ddp (torchrun, and resuming a killed run).
    """
    ranks = ranks or Ranks()
    model = build_finetune_model(weights, len(data.classes), config.seed, unfreeze, backbone)
    unfreeze = model.unfreeze
    if init_head is not None:
        try:
            model.get_submodule(model.head_name).load_state_dict(init_head)
        except RuntimeError as error:
            raise FeatcacheError(f"`init_head` does not fit this head ({len(data.classes)} classes): {error}") from None
    model = ranks.sync_batchnorm(model.to(data.device).to(memory_format=torch.channels_last))
    trained = [model.head_name, *(module_path(model, name) for name in unfreeze)]  # after sync_batchnorm's swaps
    split = split_trunk(model, unfreeze)
    trunk, rest = split if split is not None else (nn.Identity(), model)
    backbone_params = [p for name in trained[1:] for p in model.get_submodule(name).parameters()]
    optimizer = torch.optim.Adam([{"params": model.get_submodule(model.head_name).parameters(), "lr": lr_head},
                                  {"params": backbone_params, "lr": lr_backbone}])

    def set_train_mode():
        if frozen_bn == "train":
            model.train()
            return
        model.eval()
        for name in trained:  # only modules with trainable parameters train
            model.get_submodule(name).train()

    def train_inputs(epoch, shares):
        for views in data.view_batches("train", [share.tolist() for share in shares], 1 + epoch):
            with torch.no_grad():  # nothing below the first unfrozen stage needs gradients
                features = trunk(views)
            yield features  # outside no_grad: the consumer trains between yields

    test_labels = data.test_labels.to(data.device)
    last = checkpoint.carry if checkpoint is not None else {}  # the latest epoch's test probabilities
    if frozen_bn == "eval" and split is not None:
        trunk.eval()
        first, stop = ranks.own(len(test_labels))  # this rank's test images
        with torch.no_grad():
            test_trunk = [trunk(data.test_batch(slice(s, min(s + EVAL_BATCH, stop)))) for s in range(first, stop, EVAL_BATCH)]
        test_trunk = torch.cat(test_trunk) if test_trunk else None

        def test_accuracy():
            rest.eval()
            accuracy, last["probabilities"] = evaluate(
                rest, lambda window: test_trunk[window.start - first:window.stop - first], test_labels, ranks)
            return accuracy
    else:
        def test_accuracy():
            model.eval()
            accuracy, last["probabilities"] = evaluate(model, data.test_batch, test_labels, ranks)
            return accuracy

    history = run_epochs(ranks.wrap(rest), optimizer, data.train_labels.to(data.device), train_inputs, test_accuracy,
                         config, set_train_mode, log, progress, ranks, checkpoint, saved=model,
                         test_images=len(test_labels))
    return revert_batchnorm(model), {**history, "test_probabilities": last["probabilities"]}


def scratch_model(data: ImageData, config: EpochConfig, lr: float = 1e-3, log=tqdm.write,
            progress: bool = False, ranks=None, checkpoint=None, backbone: str = DEFAULT_BACKBONE) -> tuple[nn.Module, dict]:
    """The backbone's network (ResNet-18) from a seeded random init, everything trained, same loop and
    augmentation."""
    ranks = ranks or Ranks()
    model = scratch_network(backbone, len(data.classes), config.seed)
    model = ranks.sync_batchnorm(model.to(data.device).to(memory_format=torch.channels_last))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    test_labels = data.test_labels.to(data.device)
    last = checkpoint.carry if checkpoint is not None else {}  # the latest epoch's test probabilities

    def test_accuracy():
        model.eval()
        accuracy, last["probabilities"] = evaluate(model, data.test_batch, test_labels, ranks)
        return accuracy

    history = run_epochs(ranks.wrap(model), optimizer, data.train_labels.to(data.device),
                         lambda epoch, shares: data.view_batches("train", [share.tolist() for share in shares], 1 + epoch),
                         test_accuracy, config, model.train, log, progress, ranks, checkpoint,
                         test_images=len(data.test_labels))
    return revert_batchnorm(model), {**history, "test_probabilities": last["probabilities"]}


def timed(function, *args, **kwargs):
    """(result, seconds) of a call, synchronising CUDA so GPU work is counted."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def reference_feature_extraction(data: ImageData, backbone: nn.Module, config: EpochConfig, lr: float,
                                 views: int, log=None) -> tuple[nn.Linear, dict]:
    """The notebook's feature extraction: the frozen backbone runs on every batch, every epoch, and
    over the whole test set every epoch.

    Epoch e trains on augmented view 1 + e % views of each image, exactly what a head trained from a
    cache with `views` augmented views sees; kept as the reference the cache is checked and timed against.
    """
    backbone = backbone.to(data.device).eval().to(memory_format=torch.channels_last)
    heads = LinearHeads([seeded_linear(backbone.feature_dim, len(data.classes), config.seed)], [lr], [0.0])

    @torch.inference_mode()
    def train_batches(epoch, order, batch_size):
        for start in range(0, len(order), batch_size):  # the backbone runs batch by batch, as in the notebook
            indices = order[start:start + batch_size].tolist()
            yield with_bias_column(backbone(data.views("train", indices, view_for_epoch(epoch, views))).cpu())

    @torch.inference_mode()
    def test_accuracy():
        correct = torch.zeros(1, dtype=torch.long)  # counted, then divided once: exactly correct / count
        for start in range(0, len(data.test_labels), EVAL_BATCH):
            window = slice(start, start + EVAL_BATCH)
            features = backbone(data.test_batch(window)).cpu()
            correct += (heads.log_probs(features).argmax(-1) == data.test_labels[window]).sum(-1)
        return correct.double() / len(data.test_labels)

    history = train_heads(heads, train_batches, data.train_labels, config, test_accuracy, log)
    return heads.as_linear(), single_head_history(history)

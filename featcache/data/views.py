"""The reference transforms, applied to whole batches as tensor operations.

Training transform: Resize(s*256/224) -> RandomResizedCrop(s) -> RandomHorizontalFlip ->
ColorJitter(brightness=0.2, contrast=0.2) -> ImageNet normalisation. Validation transform:
Resize(s*256/224) -> CenterCrop(s) -> normalisation. The resize happens once at decode time
(featcache.data.images.DecodedSplit), with featcache.data.clean_view's exactly named resize, the one an exported model runs;
the random steps then run on whole batches.

A view is a pure function of (seed, split, sample index, view index): its random parameters come
from a generator seeded by those four numbers, never from global RNG state, so the same view can be
recomputed anywhere (another batch size, a resumed run, the end-to-end reference loop). View 0 is the
clean validation view; views 1.. are augmented. torchvision's RandomResizedCrop.get_params draws from
the global torch RNG, hence our own copy of its algorithm below. Python's random.Random seeded with a
string is used because it is stable across versions and seeds in ~5 us, against ~13 us for numpy's
default_rng: a measurable share of the input pipeline at 64 px.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from .clean_view import center_crop, normalize_
from .transform import BRIGHTNESS, CONTRAST, RATIO, SCALE

@dataclass(frozen=True)
class ViewParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool
    brightness: float
    contrast: float
    brightness_first: bool


def view_params(seed: int, split: str, index: int, view: int, height: int, width: int) -> ViewParams:
    """The random parameters of one augmented view; torchvision's RandomResizedCrop/ColorJitter logic."""
    rng = random.Random(f"featcache/{seed}/{split}/{index}/{view}")  # string seeds: stable across Pythons
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (rng.randint(0, height - h), rng.randint(0, width - w), h, w)
            break
    if box is None:  # torchvision's fallback: a central crop at the closest allowed ratio
        in_ratio = width / height
        if in_ratio < RATIO[0]:
            w, h = width, int(round(width / RATIO[0]))
        elif in_ratio > RATIO[1]:
            h, w = height, int(round(height * RATIO[1]))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    return ViewParams(*box, flip=bool(rng.random() < 0.5),
                      brightness=float(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)),
                      contrast=float(rng.uniform(1 - CONTRAST, 1 + CONTRAST)),
                      brightness_first=bool(rng.random() < 0.5))


def _sent_ahead(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of host values on `device`: on a GPU through pinned memory without blocking, as
    torch.tensor(values, device=cuda) would wait for the work already queued (the previous forward)."""
    tensor = torch.tensor(values, dtype=dtype)
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def _resized_crops(images: torch.Tensor, params: list[ViewParams], size: int) -> torch.Tensor:
    """Crop each image to its box, resize to size x size (bilinear) and mirror the flipped ones, in one
    grid_sample call: a flip is the same sample points in reverse order, so it costs no extra pass."""
    _, _, height, width = images.shape
    device = images.device
    boxes = _sent_ahead([[p.top, p.left, p.height, p.width] for p in params], torch.float32, device)
    steps = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
    # Pixel-centre coordinates of the output in the source image, then grid_sample's [-1, 1] units.
    ys = boxes[:, 0:1] + steps * boxes[:, 2:3] - 0.5
    xs = boxes[:, 1:2] + steps * boxes[:, 3:4] - 0.5
    ys = (2 * ys + 1) / height - 1
    xs = (2 * xs + 1) / width - 1
    flip = _sent_ahead([p.flip for p in params], torch.bool, device)[:, None]
    xs = torch.where(flip, xs.flip(-1), xs)
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    return nnf.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _adjust_brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul_(factor).clamp_(0, 1)


def _adjust_contrast_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the grayscale image; mean(gray) = sum_c w_c mean(x_c), one reduction.

    The weighted sum over channels is written out element-wise, never as a matmul: a GEMM across the
    batch (MKL's AVX-512 kernels on Intel CPUs) rounds differently with the number of rows, and a
    view's pixels must not depend on what else is in its batch."""
    channel_means = x.mean(dim=(2, 3))
    mean = (channel_means[:, 0] * 0.2989 + channel_means[:, 1] * 0.587 + channel_means[:, 2] * 0.114)
    return x.mul_(factor).add_((1 - factor) * mean.view(-1, 1, 1, 1)).clamp_(0, 1)


def _color_jitter_(batch: torch.Tensor, params: list[ViewParams]) -> torch.Tensor:
    """In place: torchvision's adjust_brightness/adjust_contrast, in each view's own random order.
    In place because at 224 px every fresh batch-sized tensor costs as much as the arithmetic."""
    device = batch.device
    brightness = _sent_ahead([p.brightness for p in params], torch.float32, device).view(-1, 1, 1, 1)
    contrast = _sent_ahead([p.contrast for p in params], torch.float32, device).view(-1, 1, 1, 1)
    first = [k for k, p in enumerate(params) if not p.brightness_first]  # found on the host: no device sync
    other = _sent_ahead(first, torch.long, device)
    contrast_first = batch[other] if first else None  # a copy, taken before the in-place steps
    _adjust_contrast_(_adjust_brightness_(batch, brightness), contrast)
    if contrast_first is not None:
        batch[other] = _adjust_brightness_(_adjust_contrast_(contrast_first, contrast[other]), brightness[other])
    return batch


def views_params(images: list[torch.Tensor], indices: list[int], views: list[int], split: str,
                 seed: int) -> dict[int, list[ViewParams]]:
    """view_params of each augmented view in `views` for each image: what extraction's DataLoader
    workers draw beside the decode, off the GPU's path (the same numbers make_views would draw)."""
    return {view: [view_params(seed, split, index, view, *image.shape[1:]) for index, image in zip(indices, images)]
            for view in views if view != 0}


class ImageBatch:
    """Decoded uint8 images grouped by shape and converted to float once, so that every view made of
    the same batch (extract makes 1 + V) reuses the conversion. On a GPU each group is stacked straight
    into pinned memory and copied without blocking (one host copy, not a stack then a pin)."""

    def __init__(self, images: list[torch.Tensor], device: torch.device | str = "cpu"):
        self.count, self.device = len(images), torch.device(device)
        by_shape: dict[tuple, list[int]] = {}
        for k, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(k)
        self.groups = [(members, self._on_device([images[k] for k in members]).float().div_(255))
                       for members in by_shape.values()]
        # where each group's views go in the batch: all of it (one shape, the usual case), else an index
        # tensor sent ahead (a Python list as an index would be copied to the device with a wait)
        self.rows = [slice(None) if len(self.groups) == 1 else _sent_ahead(members, torch.long, self.device)
                     for members, _ in self.groups]

    def _on_device(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.stack(images)
        pinned = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=True)
        return torch.stack(images, out=pinned).to(self.device, non_blocking=True)


def make_views(images: list[torch.Tensor] | ImageBatch, indices: list[int], view: int, split: str, seed: int,
               image_size: int, device: torch.device | str = "cpu",
               params: list[ViewParams] | None = None) -> torch.Tensor:
    """Normalised float views [B, 3, S, S] of decoded uint8 images (sample `indices[k]` is images[k]).

    Images of equal shape are processed together; each output depends only on its own image and
    parameters, so the pixels do not depend on how samples are batched. `params`: the view's
    parameters drawn beforehand (views_params), else drawn here.
    """
    batch = images if isinstance(images, ImageBatch) else ImageBatch(images, device)
    out = torch.empty(batch.count, 3, image_size, image_size, device=batch.device,
                      memory_format=torch.channels_last)  # the backbone's layout, kept by in-place ops
    if view == 0:
        for rows, (_, group) in zip(batch.rows, batch.groups):
            out[rows] = center_crop(group, image_size)
        return normalize_(out)
    drawn = params is None
    params = [None] * batch.count if drawn else params
    for (members, group), rows in zip(batch.groups, batch.rows):
        if drawn:
            for k in members:
                params[k] = view_params(seed, split, indices[k], view, *group.shape[2:])
        out[rows] = _resized_crops(group, [params[k] for k in members], image_size)
    return normalize_(_color_jitter_(out, params))

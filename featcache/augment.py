"""The reference transforms, applied to whole batches as tensor operations.

Training transform: Resize(s*256/224) -> RandomResizedCrop(s) -> RandomHorizontalFlip ->
ColorJitter(brightness=0.2, contrast=0.2) -> ImageNet normalisation. Validation transform:
Resize(s*256/224) -> CenterCrop(s) -> normalisation. The resize happens once at decode time
(see data.DecodedSplit); this module does the rest.

A view is a pure function of (seed, split, sample index, view index): its random parameters come
from a generator seeded by those four numbers, never from global RNG state, so the same view can be
recomputed anywhere (another batch size, a resumed run, the end-to-end reference loop). View 0 is the
clean validation view; views 1.. are augmented. torchvision's RandomResizedCrop.get_params draws from
the global torch RNG, hence our own copy of its algorithm below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_CODES = {"train": 0, "test": 1}
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
BRIGHTNESS = 0.2
CONTRAST = 0.2


def transform_description(image_size: int) -> dict:
    """Everything about the transforms that determines the pixels, for provenance and the cache key."""
    from .data import resize_size

    return {
        "train": [f"Resize({resize_size(image_size)})", f"RandomResizedCrop({image_size}, scale={SCALE}, "
                  f"ratio=({RATIO[0]:.4f}, {RATIO[1]:.4f}))", "RandomHorizontalFlip(0.5)",
                  f"ColorJitter(brightness={BRIGHTNESS}, contrast={CONTRAST})", "Normalize(ImageNet)"],
        "val": [f"Resize({resize_size(image_size)})", f"CenterCrop({image_size})", "Normalize(ImageNet)"],
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "params": "numpy default_rng([seed, split, index, view])",
        "sampling": "bilinear crop-resize (grid_sample), border padding",
    }


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
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index, view])
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
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


def _normalize(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)


def _center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    _, height, width = image.shape
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image[:, top:top + size, left:left + size]


def _resized_crops(images: torch.Tensor, params: list[ViewParams], size: int) -> torch.Tensor:
    """Crop each image to its box and resize to size x size, bilinear, in one grid_sample call."""
    _, _, height, width = images.shape
    boxes = torch.tensor([[p.top, p.left, p.height, p.width] for p in params],
                         dtype=torch.float32, device=images.device)
    steps = (torch.arange(size, dtype=torch.float32, device=images.device) + 0.5) / size
    # Pixel-centre coordinates of the output in the source image, then grid_sample's [-1, 1] units.
    ys = boxes[:, 0:1] + steps * boxes[:, 2:3] - 0.5
    xs = boxes[:, 1:2] + steps * boxes[:, 3:4] - 0.5
    ys = (2 * ys + 1) / height - 1
    xs = (2 * xs + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    return nnf.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _color_jitter(batch: torch.Tensor, params: list[ViewParams]) -> torch.Tensor:
    """torchvision's adjust_brightness/adjust_contrast, in each view's own random order."""
    device = batch.device
    brightness = torch.tensor([p.brightness for p in params], device=device).view(-1, 1, 1, 1)
    contrast = torch.tensor([p.contrast for p in params], device=device).view(-1, 1, 1, 1)
    brightness_first = torch.tensor([p.brightness_first for p in params], device=device).view(-1, 1, 1, 1)

    def adjust_brightness(x):
        return (x * brightness).clamp(0, 1)

    def adjust_contrast(x):
        gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        mean = gray.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return (contrast * x + (1 - contrast) * mean).clamp(0, 1)

    return torch.where(brightness_first, adjust_contrast(adjust_brightness(batch)),
                       adjust_brightness(adjust_contrast(batch)))


def make_views(images: list[torch.Tensor], indices: list[int], view: int, split: str, seed: int,
               image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised float views [B, 3, S, S] of decoded uint8 images (sample `indices[k]` is images[k]).

    Images of equal shape are processed together; each output depends only on its own image and
    parameters, so the pixels do not depend on how samples are batched.
    """
    out = torch.empty(len(images), 3, image_size, image_size, device=device)
    if view == 0:
        for k, image in enumerate(images):
            out[k] = _center_crop(image.to(device), image_size).float().div_(255)
        return _normalize(out)
    params = [view_params(seed, split, index, view, *image.shape[1:]) for index, image in zip(indices, images)]
    by_shape: dict[tuple, list[int]] = {}
    for k, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape), []).append(k)
    for members in by_shape.values():
        group = torch.stack([images[k] for k in members]).to(device).float().div_(255)
        out[members] = _resized_crops(group, [params[k] for k in members], image_size)
    flip = [k for k, p in enumerate(params) if p.flip]
    out[flip] = out[flip].flip(-1)
    return _normalize(_color_jitter(out, params))

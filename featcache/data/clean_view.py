"""The clean view in torch alone: featcache decodes with these functions, and an exported model runs them.

One resize, named exactly, so that featcache's features and an exported file's input pipeline give the
same pixels: the uint8 image as float32, `torch.nn.functional.interpolate(mode="bilinear",
antialias=True, align_corners=False)` to shorter side R = round(S*256/224) and longer side
floor(R*long/short), rounded half to even and clamped to 0..255 (whole numbers: uint8 again). PIL's
resize, uint8 antialiased interpolate and this one each differ by a grey level here and there, and
PIL cannot run inside an exported program. The centre crop starts at floor((extent - S) / 2).

Nothing here branches on a size in Python: torch.export traces these functions with symbolic
heights and widths, and a branch would become a guard that fails on the other orientation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from .transform import IMAGENET_MEAN, IMAGENET_STD, resize_size

RESIZE = ("float32 torch.nn.functional.interpolate(bilinear, antialias=True, align_corners=False) to shorter "
          "side round(S*256/224), longer side floor(R*long/short), rounded half to even, clamped to 0..255")
CROP = "centre crop S x S at floor((extent - S) / 2)"


def resize_shorter_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] uint8 (or whole-number float) images, shorter side resized to `size`: float32 whole numbers."""
    height, width = images.shape[-2:]
    shorter = torch.sym_min(height, width)
    resized = nnf.interpolate(images.float(), size=(size * height // shorter, size * width // shorter),
                              mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


def normalization(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) with (x - mean) / std == x * scale + shift, each [1, 3, 1, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return -mean / std, 1 / std


def normalize_(batch: torch.Tensor) -> torch.Tensor:
    """In place, [0, 1] pixels to ImageNet-normalised ones: one fused x * scale + shift."""
    shift, scale = normalization(batch.device)
    return torch.addcmul(shift, batch, scale, out=batch)


class CleanView(nn.Module):
    """uint8 images [N, 3, H, W] of any size to the normalised clean view [N, 3, S, S], as featcache
    makes view 0: resize_shorter_side, center_crop, /255, normalise."""

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size, self.resize_size = image_size, resize_size(image_size)
        shift, scale = normalization()
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = center_crop(resize_shorter_side(images, self.resize_size), self.image_size).div(255)
        return torch.addcmul(self.shift, pixels, self.scale)


def batchable(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """One uint8 image [3, H, W] resized as CleanView resizes it, then cropped to one of three shapes
    (R x R, R x R+1, R+1 x R) that CleanView maps to the same clean view: its resize of an image whose
    shorter side is already R is the identity, and keeping each side's parity keeps the centre crop
    where it was. Lets a folder of mixed sizes be batched without changing a single pixel."""
    size = resize_size(image_size)
    resized = resize_shorter_side(image[None], size)[0]
    height, width = resized.shape[-2:]
    keep_h, keep_w = size + (height - size) % 2, size + (width - size) % 2
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return resized[:, top:top + keep_h, left:left + keep_w].to(torch.uint8)

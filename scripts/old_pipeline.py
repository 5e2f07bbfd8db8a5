"""Extraction's loop as it was before featcache 0.3 (featcache/data/views.py's batch code and
featcache/cache/writer.py's _compute_shards at commit 0f02b07, copied verbatim but for names), kept for
scripts/profile_extraction.py's before/after run: each batch stacked then pinned, view parameters drawn
per sample on the main thread, small parameter tensors made on the device (each a wait for queued
work), features copied back blocking, each shard committed inline. Its features must equal the new
pipeline's bit for bit."""
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf

from featcache.cache.shards import plan_shards, write_shard
from featcache.cache.writer import autocast
from featcache.data.clean_view import center_crop, normalize_
from featcache.data.images import DecodedChunks, DecodedSplit
from featcache.data.views import ViewParams, view_params


def _resized_crops(images: torch.Tensor, params: list[ViewParams], size: int) -> torch.Tensor:
    """Crop each image to its box, resize to size x size (bilinear) and mirror the flipped ones, in one
    grid_sample call: a flip is the same sample points in reverse order, so it costs no extra pass."""
    _, _, height, width = images.shape
    device = images.device
    boxes = torch.tensor([[p.top, p.left, p.height, p.width] for p in params], dtype=torch.float32, device=device)
    steps = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
    # Pixel-centre coordinates of the output in the source image, then grid_sample's [-1, 1] units.
    ys = boxes[:, 0:1] + steps * boxes[:, 2:3] - 0.5
    xs = boxes[:, 1:2] + steps * boxes[:, 3:4] - 0.5
    ys = (2 * ys + 1) / height - 1
    xs = (2 * xs + 1) / width - 1
    flip = torch.tensor([p.flip for p in params], device=device)[:, None]
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
    brightness = torch.tensor([p.brightness for p in params], device=device).view(-1, 1, 1, 1)
    contrast = torch.tensor([p.contrast for p in params], device=device).view(-1, 1, 1, 1)
    other = torch.tensor([not p.brightness_first for p in params], device=device).nonzero().flatten()
    contrast_first = batch[other] if len(other) else None  # a copy, taken before the in-place steps
    _adjust_contrast_(_adjust_brightness_(batch, brightness), contrast)
    if contrast_first is not None:
        batch[other] = _adjust_brightness_(_adjust_contrast_(contrast_first, contrast[other]), brightness[other])
    return batch


class ImageBatch:
    """Decoded uint8 images grouped by shape and converted to float once, so that every view made of
    the same batch (extract makes 1 + V) reuses the conversion."""

    def __init__(self, images: list[torch.Tensor], device: torch.device | str = "cpu"):
        self.count, self.device = len(images), device
        by_shape: dict[tuple, list[int]] = {}
        for k, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(k)
        self.groups = [(members, _to_device(torch.stack([images[k] for k in members]), device).float().div_(255))
                       for members in by_shape.values()]


def _to_device(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 images to the device before any float work: on a GPU the augmentation runs there, and
    the copy comes from pinned memory without blocking."""
    device = torch.device(device)
    if device.type != "cuda":
        return images
    return images.pin_memory().to(device, non_blocking=True)


def make_views(images: list[torch.Tensor] | ImageBatch, indices: list[int], view: int, split: str, seed: int,
               image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised float views [B, 3, S, S] of decoded uint8 images (sample `indices[k]` is images[k]).

    Images of equal shape are processed together; each output depends only on its own image and
    parameters, so the pixels do not depend on how samples are batched.
    """
    batch = images if isinstance(images, ImageBatch) else ImageBatch(images, device)
    out = torch.empty(batch.count, 3, image_size, image_size, device=batch.device,
                      memory_format=torch.channels_last)  # the backbone's layout, kept by in-place ops
    if view == 0:
        for members, group in batch.groups:
            out[members] = center_crop(group, image_size)
        return normalize_(out)
    params = [None] * batch.count
    for members, group in batch.groups:
        for k in members:
            params[k] = view_params(seed, split, indices[k], view, *group.shape[2:])
        out[members] = _resized_crops(group, [params[k] for k in members], image_size)
    return normalize_(_color_jitter_(out, params))


def old_pipeline(dataset, backbone, provenance: dict, folder: Path, batch_size: int, shard_size: int,
                 num_workers: int, device: torch.device) -> dict:
    """The old loop over every shard of both splits, committing each inline to `folder`. Returns the
    features per split ([rows, views, D]) and the seconds it took (no assembly: compare with the new
    run's seconds less its assembly)."""
    started = time.perf_counter()
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    record = {"key": "old-pipeline", "shard_size": shard_size, "batch_size": batch_size}
    shards = plan_shards({"train": len(dataset.train), "test": len(dataset.test)}, shard_size)
    features = {}
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        views = list(range(1 + provenance["views"])) if name == "train" else [0]
        mine = [shard for shard in shards if shard.split == name]
        rows = np.empty((len(split), len(views), backbone.feature_dim), dtype=np.float32)
        ranges = [(start, min(start + batch_size, shard.stop)) for shard in mine
                  for start in range(shard.start, shard.stop, batch_size)]
        loader = torch.utils.data.DataLoader(DecodedChunks(DecodedSplit(split, provenance["image_size"]), ranges),
                                             batch_size=None, num_workers=num_workers)
        for chunk in loader:
            indices = list(range(chunk.start, chunk.start + len(chunk.images)))
            images = [image.pin_memory() for image in chunk.images] if device.type == "cuda" else chunk.images
            batch = ImageBatch(images, device)  # the old loader pinned each chunk's images
            for position, view in enumerate(views):
                made = make_views(batch, indices, view, name, provenance["seed"], provenance["image_size"], device)
                with torch.inference_mode(), autocast(device, provenance["precision"]):
                    rows[chunk.start:chunk.start + len(made), position] = backbone(made).float().cpu().numpy()
            for shard in mine:
                if shard.stop == chunk.start + len(chunk.images):
                    write_shard(folder, shard, rows[shard.start:shard.stop] if name == "train"
                                else rows[shard.start:shard.stop, 0], record, 0)
        features[name] = rows
    return {"features": features, "seconds": time.perf_counter() - started}

"""The reference transforms, applied to whole batches as tensor operations.

Training transform: Resize(s*256/224) -> RandomResizedCrop(s) -> RandomHorizontalFlip ->
ColorJitter(brightness=0.2, contrast=0.2) -> ImageNet normalisation. Validation transform:
Resize(s*256/224) -> CenterCrop(s) -> normalisation. The resize happens once at decode time
(DecodedSplit), with featcache.data.clean_view's exactly named resize, the one an exported model runs;
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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F

from ..errors import FeatcacheError
from .datasets import Split
from .clean_view import center_crop, normalize_, resize_shorter_side
from .transform import BRIGHTNESS, CONTRAST, RATIO, SCALE, resize_size

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


class DecodedSplit(torch.utils.data.Dataset):
    """Sample i decoded and resized (shorter side to resize_size) as a uint8 [3, H, W] tensor.

    The resize is the reference pipeline's first, deterministic step, done once per image with
    clean_view.resize_shorter_side, exactly as an exported model does it; the random steps then run
    batched on tensors.
    """

    def __init__(self, split: Split, image_size: int):
        self.split = split
        self.size = resize_size(image_size)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = F.pil_to_tensor(self.split.read(index))
        return resize_shorter_side(image[None], self.size)[0].to(torch.uint8)


class DecodedChunks(torch.utils.data.Dataset):
    """Chunks of consecutive samples, so DataLoader workers decode a whole chunk at a time."""

    def __init__(self, decoded: DecodedSplit, ranges: list[tuple[int, int]]):
        self.decoded, self.ranges = decoded, ranges

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, position: int):
        """(start, images), or (start, FeatcacheError): returned, not raised, because a DataLoader
        worker would wrap a raised error in a multi-line traceback message."""
        start, stop = self.ranges[position]
        try:
            return start, [self.decoded[i] for i in range(start, stop)]
        except FeatcacheError as error:
            return start, error


def decoded_chunks(split: Split, image_size: int, ranges: list[tuple[int, int]], num_workers: int = 0,
                   device: torch.device | str = "cpu"):
    """(start, decoded images) for each (start, stop) range, decoded by `num_workers` DataLoader
    workers; a decoding error is raised here, as the one-line FeatcacheError naming the file."""
    chunks = DecodedChunks(DecodedSplit(split, image_size), ranges)
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=num_workers,
                                         pin_memory=torch.device(device).type == "cuda")
    for start, images in loader:
        if isinstance(images, FeatcacheError):
            raise images
        yield start, images


class DecodedOrError(torch.utils.data.Dataset):
    """A DecodedSplit for DataLoader workers: a decoding error is returned, not raised, because a worker
    would wrap a raised one in a multi-line traceback message."""

    def __init__(self, decoded: DecodedSplit):
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, index: int):
        try:
            return self.decoded[index]
        except FeatcacheError as error:
            return error


@dataclass
class ImageData:
    """Images of both splits (uint8, resized once) and everything needed to make their views. A split is
    held decoded in memory (a list) or decoded per batch (a DecodedSplit), by `num_workers` DataLoader
    workers for training batches: the pixels, and so the numbers, are the same either way."""

    train_images: list[torch.Tensor] | DecodedSplit
    train_labels: torch.Tensor
    test_images: list[torch.Tensor] | DecodedSplit
    test_labels: torch.Tensor
    classes: list[str]
    image_size: int
    view_seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    test_ids: list[str] | None = None  # what a run's stored predictions are keyed by
    num_workers: int = 0
    source: dict | None = None  # the DataSpec they were loaded from, as history.json records it

    @property
    def decoding(self) -> str:
        """'in memory', or which splits are decoded per batch."""
        lazy = [name for name, images in (("train", self.train_images), ("test", self.test_images))
                if not isinstance(images, list)]
        return "in memory" if not lazy else f"per batch ({' and '.join(lazy)})"

    def views(self, split: str, indices: list[int], view: int) -> torch.Tensor:
        images = self.train_images if split == "train" else self.test_images
        return make_views([images[i] for i in indices], indices, view, split, self.view_seed,
                          self.image_size, self.device)

    def view_batches(self, split: str, index_lists: list[list[int]], view: int):
        """The views of each list of sample indices in turn: from memory, or decoded by DataLoader
        workers that work ahead while the model trains on the previous batches."""
        images = self.train_images if split == "train" else self.test_images
        if isinstance(images, list):
            yield from (self.views(split, indices, view) for indices in index_lists)
            return
        loader = torch.utils.data.DataLoader(DecodedOrError(images), batch_sampler=index_lists,
                                             num_workers=self.num_workers, collate_fn=list)
        for indices, decoded in zip(index_lists, loader):
            for image in decoded:
                if isinstance(image, FeatcacheError):
                    raise image
            yield make_views(decoded, indices, view, split, self.view_seed, self.image_size, self.device)

    def test_batch(self, window: slice) -> torch.Tensor:
        return self.views("test", list(range(len(self.test_images)))[window], 0)



def decode_all(split: Split, image_size: int) -> list[torch.Tensor]:
    """Every sample of a split decoded once, for the end-to-end trainers that revisit them each epoch."""
    decoded = DecodedSplit(split, image_size)
    return [decoded[i] for i in range(len(decoded))]


def decoded_bytes(split: Split, image_size: int) -> int:
    """Memory a split takes decoded, estimated as square images (R x R x 3 bytes each, R the resize)."""
    return len(split) * resize_size(image_size) ** 2 * 3

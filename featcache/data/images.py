"""Decoded images: each resized once (the reference pipeline's deterministic first step) and held in
memory, or decoded per batch by DataLoader workers when they do not fit; what extraction decodes
chunk by chunk and what the end-to-end trainers draw their views from (ImageData, decode_images).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F

from ..errors import FeatcacheError
from ..settings import memory_budget
from .clean_view import resize_shorter_side
from .datasets import DataSpec, Split, layout_record, summary_line
from .transform import DEFAULT_IMAGE_SIZE, resize_size
from .views import make_views, views_params


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
        return self.timed(index)[0]

    def timed(self, index: int) -> tuple[torch.Tensor, float, float]:
        """(sample, seconds decoding it, seconds resizing it): the extraction profile's two stages."""
        started = time.perf_counter()
        image = F.pil_to_tensor(self.split.read(index))
        decoded = time.perf_counter()
        resized = resize_shorter_side(image[None], self.size)[0].to(torch.uint8)
        return resized, decoded - started, time.perf_counter() - decoded


@dataclass(frozen=True)
class ViewPlan:
    """The views a chunk's images will be made into (split name, view seed, view indices): their random
    parameters are drawn in the DataLoader worker that decodes the chunk (views.views_params)."""

    split: str
    seed: int
    views: tuple[int, ...]


@dataclass
class Chunk:
    """Decoded consecutive samples from `start`, with their views' parameters (ViewPlan) and the
    worker's seconds spent decoding and drawing them (for featcache's extraction profile)."""

    start: int
    images: list[torch.Tensor]
    params: dict = field(default_factory=dict)
    decode_seconds: float = 0.0
    resize_seconds: float = 0.0
    params_seconds: float = 0.0


class DecodedChunks(torch.utils.data.Dataset):
    """Chunks of consecutive samples, so DataLoader workers decode a whole chunk at a time (and draw its
    views' parameters with `plan`)."""

    def __init__(self, decoded: DecodedSplit, ranges: list[tuple[int, int]], plan: ViewPlan | None = None):
        self.decoded, self.ranges, self.plan = decoded, ranges, plan

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, position: int):
        """A Chunk, or a FeatcacheError: returned, not raised, because a DataLoader worker would wrap a
        raised error in a multi-line traceback message."""
        start, stop = self.ranges[position]
        try:
            samples = [self.decoded.timed(i) for i in range(start, stop)]
        except FeatcacheError as error:
            return error
        chunk = Chunk(start, [image for image, _, _ in samples], decode_seconds=sum(s[1] for s in samples),
                      resize_seconds=sum(s[2] for s in samples))
        if self.plan is not None:
            started = time.perf_counter()
            chunk.params = views_params(chunk.images, list(range(start, stop)), list(self.plan.views), self.plan.split,
                                        self.plan.seed)
            chunk.params_seconds = time.perf_counter() - started
        return chunk


def decoded_chunks(split: Split, image_size: int, ranges: list[tuple[int, int]], num_workers: int = 0,
                   device: torch.device | str = "cpu", plan: ViewPlan | None = None):
    """A Chunk for each (start, stop) range, decoded by `num_workers` DataLoader workers; a decoding
    error is raised here, as the one-line FeatcacheError naming the file."""
    chunks = DecodedChunks(DecodedSplit(split, image_size), ranges, plan)
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=num_workers)  # not pinned here:
    for chunk in loader:  # ImageBatch stacks what goes to a GPU straight into pinned memory
        if isinstance(chunk, FeatcacheError):
            raise chunk
        yield chunk


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


def decode_images(data: DataSpec, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, device: str = "auto",
                max_memory: int | str | None = None, num_workers: int = 0, echo=None) -> ImageData:
    """Both splits resized for `image_size`: what the end-to-end trainers draw their views from, seeded
    by `seed`. Decoded once into memory when they fit `max_memory` (bytes or '8GB'; default half the
    available RAM, shared among torchrun's local ranks), the test split first; a split that does not
    fit is decoded per batch, training batches by `num_workers` DataLoader workers. The numbers are the
    same either way."""
    from ..ranks import resolve_device

    budget = memory_budget(max_memory, sharers=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    dataset = data.load()
    if echo is not None:  # before any decoding: what was found, and how it was split
        echo(summary_line(dataset))
    splits = {}
    for split in (dataset.test, dataset.train):
        needed = decoded_bytes(split, image_size)
        splits[id(split)] = decode_all(split, image_size) if needed <= budget else DecodedSplit(split, image_size)
        budget -= needed if needed <= budget else 0
    return ImageData(splits[id(dataset.train)], torch.from_numpy(dataset.train.labels),
                     splits[id(dataset.test)], torch.from_numpy(dataset.test.labels),
                     dataset.classes, image_size, seed, resolve_device(device), dataset.test.ids, num_workers,
                     {**data_record(data), **layout_record(dataset)})


def timed_load_images(data: DataSpec, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, device: str = "auto",
                      max_memory: int | str | None = None, num_workers: int = 0, echo=None) -> tuple[ImageData, float]:
    """(decode_images(...), seconds it took)."""
    started = time.perf_counter()
    images = decode_images(data, image_size, seed, device, max_memory, num_workers, echo)
    return images, time.perf_counter() - started


def decoded_line(images: ImageData, seconds: float) -> str:
    """What a command says once the images are decoded (or that they will be, per batch)."""
    if images.decoding != "in memory":
        return (f"{len(images.train_labels)} training and {len(images.test_labels)} test images of "
                f"{', '.join(images.classes)}, decoded {images.decoding} ({images.num_workers} workers): "
                "they do not fit `max_memory`")
    return (f"decoded {len(images.train_labels)} training and {len(images.test_labels)} test images of "
            f"{', '.join(images.classes)} in {seconds:.1f} s")


def data_record(images) -> dict | None:
    """The DataSpec the images come from, for history.json (None for ImageData built by hand)."""
    if not isinstance(images, DataSpec):
        return images.source
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(images).items()
            if key != "exclude" or value is not None}  # no exclusions: the record of every earlier release

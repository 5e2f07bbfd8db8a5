"""How long extraction or end-to-end training will take, from a short warm-up measured on this device,
said in one line before the work starts.

The warm-up runs the real work on batches of the run's own size of real images, after an untimed one:
decoding and resizing (extraction), the views, the backbone's forward (extraction) or a training step
and a test forward (end to end). It runs on a copy of the network and a fresh optimizer, inside
torch.random.fork_rng, and a view is a pure function of (seed, split, sample, view): it draws nothing
from any run's random streams, so a run's numbers are the same with or without it (tested). Where the
estimate is over 30 minutes the line names what shortens it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from .backbone import synchronize
from .data.images import DecodedSplit, ImageData
from .data.views import make_views

TIMED_IMAGES = 32  # at least, timed after one untimed batch; batches of the run's own size, since the cost
# per image depends on it (EfficientNet-Lite0 at 224 px on 2 CPU cores: 16 ms at 16 a batch, 25-31 at 64)
LONG = 30 * 60  # seconds beyond which the line says what shortens the work


def duration(seconds: float) -> str:
    """'40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def shorter(image_size: int, device: torch.device, views: int | None = None) -> str:
    """What shortens the work, for the line of an estimate over LONG."""
    ways = []
    if image_size > 64:
        ways.append(f"--image-size 64 (about {(image_size / 64) ** 2:.0f}x fewer pixels)")
    if views:
        ways.append("fewer --views")
    ways.append("a smaller backbone (--backbone)")
    if device.type != "cuda":
        ways.append("--device cuda on a machine with a GPU")
    return "; to shorten it: " + ", ".join(ways)


@dataclass
class Estimate:
    """A piece of work in words and the seconds it is estimated to take."""

    what: str
    seconds: float


def work_line(estimates: list[Estimate], image_size: int, device: torch.device, views: int | None = None,
              world_size: int = 1) -> str:
    """The one line said before long work: each piece with its estimate, the total, and where the total is
    over LONG, what shortens it."""
    total = sum(estimate.seconds for estimate in estimates) / world_size
    ranks = f" over {world_size} processes" if world_size > 1 else ""
    pieces = [estimate.what + (f" (about {duration(estimate.seconds / world_size)})" if len(estimates) > 1 else "")
              for estimate in estimates]
    line = ("work: " + "; ".join(pieces)
            + f"; estimated {duration(total)} in all on {device.type}{ranks}, from a warm-up measured here")
    return line + (shorter(image_size, device, views) if total > LONG else "")


def _timed(work, device: torch.device, batch: int) -> float:
    """Seconds per image of `work` on a batch of `batch` images, after one untimed call."""
    work()
    synchronize(device)
    calls = max(1, -(-TIMED_IMAGES // batch))
    started = time.perf_counter()
    for _ in range(calls):
        work()
    synchronize(device)
    return (time.perf_counter() - started) / (calls * batch)


def _forks(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def extraction(split, train_views: int, test_images: int, backbone: nn.Module, image_size: int, seed: int,
               device: torch.device, batch_size: int) -> Estimate:
    """Extracting `split` (the training split: its clean view and `train_views` augmented views each) and
    `test_images` (clean view) in batches of `batch_size`: decoding timed on `split`'s first images, their
    views and forward on a copy of `backbone`."""
    count = min(batch_size, len(split))
    indices = list(range(count))
    decoded = DecodedSplit(split, image_size)
    with _forks(device):
        started = time.perf_counter()
        images = [decoded[index] for index in indices]
        decode_each = (time.perf_counter() - started) / count
        model = copy.deepcopy(backbone).to(device).eval()

        def forward():
            with torch.inference_mode():
                model(make_views(images, indices, 1, "train", seed, image_size, device)).float().cpu()

        view_each = _timed(forward, device, count)
    views = len(split) * (1 + train_views) + test_images
    return Estimate(f"extraction of {views:,} views ({len(split):,} training images x {1 + train_views}, "
                    f"{test_images:,} test images x 1) at {image_size} px, {1 / view_each:.0f} views/s",
                    (len(split) + test_images) * decode_each + views * view_each)


def training(what: str, build, images: ImageData, epochs: int, batch_size: int, runs: int = 1) -> Estimate:
    """`runs` trainings of `epochs` epochs of the network `build()` makes on `images`: one training step
    (a fresh Adam) and one test forward timed on the first images. The network is built inside the fork
    of the random streams, since building draws its initial weights from the global generator."""
    device = images.device
    count = min(batch_size, len(images.train_labels))
    indices = list(range(count))
    test_indices = list(range(min(batch_size, len(images.test_labels))))
    with _forks(device):
        model = build().to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad])
        labels = images.train_labels[:count].to(device)
        train_batch = images.views("train", indices, 1)
        test_batch = images.views("test", test_indices, 0)

        def step():
            model.train()
            loss = nn.functional.cross_entropy(model(train_batch), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def test():
            model.eval()
            with torch.no_grad():
                model(test_batch).cpu()

        train_each = _timed(step, device, count)
        test_each = _timed(test, device, len(test_indices)) if test_indices else 0.0
    train, test = len(images.train_labels), len(images.test_labels)
    seeds = f"{runs} seeds x " if runs > 1 else ""
    return Estimate(f"{what}, {seeds}{epochs} epochs of {train:,} training and {test:,} test images at "
                    f"{images.image_size} px, {1 / train_each:.0f} training images/s",
                    runs * epochs * (train * train_each + test * test_each))

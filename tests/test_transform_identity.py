"""The cache key names the transform by TRANSFORM_VERSION, so a view's pixels must not change without it.

Fixed synthetic images go through everything that makes a view's pixels (the file read, the decode resize,
the clean view and augmented views) and the sha256 of those pixels must be the one recorded for the current
TRANSFORM_VERSION. The pixels, not the source: a refactoring that keeps every pixel passes, a change of
comments or formatting passes, and the test reads the same on every Python version.

Recorded with torch 2.14.1, torchvision 0.29.1 and Pillow 13.0.0 on an x86-64 CPU. The images are PNG
(decoded losslessly by any Pillow) and the decode resize is rounded to whole numbers by featcache itself;
the augmented views are float32 arithmetic (grid_sample, a channel mean), hashed as grey levels 0-255, whose
rounding another torch release or CPU could in principle move by one level for a pixel: the failure message
names the recorded versions so that case can be told from a change of the code.

The constants (ImageNet mean and std, crop scale and ratio, jitter strengths) are in the cache key
themselves (transform_description): test_pixel_constants_and_the_version_are_in_the_cache_key.
"""
import hashlib
from importlib.metadata import version

import numpy as np
import torch
from PIL import Image

from featcache.cache.key import cache_key, cache_provenance
from featcache.data import transform
from featcache.data.datasets import Split, load_dataset
from featcache.data.images import DecodedSplit
from featcache.data.views import make_views, view_params

# TRANSFORM_VERSION -> sha256 of the pixels pixel_digest() makes. Changing the pixels: bump
# transform.TRANSFORM_VERSION and record the new hash here.
RECORDED = {
    2: "03b186d8cb991ad52c5f4c548a4955d1c5dada213bbdfabc863bf9cd5a228833",
}
RECORDED_WITH = "torch 2.14.1, torchvision 0.29.1, Pillow 13.0.0"
IMAGE_SIZE = 32  # the decode resize makes the shorter side 37
# (width, height, mode): shrunk and grown, both orientations, one already at 37, one greyscale file
IMAGES = ((64, 48, "RGB"), (30, 58, "RGB"), (37, 37, "RGB"), (28, 40, "L"))
VIEWS = (0, 1, 2, 3, 4)  # the clean view and four augmented ones


def synthetic_image(width: int, height: int, mode: str) -> Image.Image:
    """Pixels from arithmetic alone (no random generator whose stream could change): a texture with edges."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    pixels = (((x * 73 + y * 151 + c * 47) ^ (x * y)) % 256).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.convert("L") if mode == "L" else image


def grey_levels(views: torch.Tensor) -> np.ndarray:
    """Normalised views back to whole grey levels 0-255 (uint8)."""
    mean = torch.tensor(transform.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(transform.IMAGENET_STD).view(1, 3, 1, 1)
    return (views.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).contiguous().numpy()


def decoded_images(folder) -> list[torch.Tensor]:
    """IMAGES written as PNG files to folder, read and decoded as featcache does: uint8 [3, H, W], shorter
    side 37."""
    paths = []
    for index, (width, height, mode) in enumerate(IMAGES):
        paths.append(str(folder / f"{index}.png"))
        synthetic_image(width, height, mode).save(paths[-1])
    split = Split(ids=[f"train/x/{index}.png" for index in range(len(paths))], labels=np.zeros(len(paths), np.int64),
                  paths=paths)
    decoded = DecodedSplit(split, IMAGE_SIZE)
    return [decoded[index] for index in range(len(split))]


def pixel_digest(images: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(repr(tuple(image.shape)).encode())
        digest.update(image.numpy().tobytes())
    indices = list(range(len(images)))
    for view in VIEWS:
        digest.update(grey_levels(make_views(images, indices, view, "train", 0, IMAGE_SIZE)).tobytes())
    return digest.hexdigest()


def test_pixels_match_their_transform_version(tmp_path):
    current = pixel_digest(decoded_images(tmp_path))
    installed = f"torch {version('torch')}, torchvision {version('torchvision')}, Pillow {version('pillow')}"
    assert RECORDED.get(transform.TRANSFORM_VERSION) == current, (
        f"a view's pixels changed (sha256 {current}) but transform.TRANSFORM_VERSION is still "
        f"{transform.TRANSFORM_VERSION}: bump it (every cache gets a new key) and record the new hash here. "
        f"The hashes were recorded with {RECORDED_WITH}; installed: {installed}"
        + ("" if installed == RECORDED_WITH else " (another version: it may be the library that moved the pixels)"))


def test_the_images_exercise_every_branch_of_the_augmentation(tmp_path):
    """The augmented views hashed above flip and do not, and jitter brightness first and contrast first."""
    images = decoded_images(tmp_path)
    assert {tuple(image.shape[1:]) for image in images} == {(37, 49), (71, 37), (37, 37), (52, 37)}
    params = [view_params(0, "train", index, view, *image.shape[1:])
              for index, image in enumerate(images) for view in VIEWS if view]
    assert {p.flip for p in params} == {True, False}
    assert {p.brightness_first for p in params} == {True, False}


def test_pixel_constants_and_the_version_are_in_the_cache_key(image_folder, monkeypatch):
    """What the key promises: another TRANSFORM_VERSION, or another value of any constant that decides the
    pixels, is another cache."""
    dataset = load_dataset(str(image_folder))

    def key():
        return cache_key(cache_provenance(dataset, "random", 0, IMAGE_SIZE, 2))

    keys = {"as it is": key()}
    for name, value in (("TRANSFORM_VERSION", transform.TRANSFORM_VERSION + 1), ("IMAGENET_MEAN", (0.5, 0.5, 0.5)),
                        ("IMAGENET_STD", (0.25, 0.25, 0.25)), ("SCALE", (0.2, 1.0)), ("RATIO", (0.5, 2.0)),
                        ("BRIGHTNESS", 0.3), ("CONTRAST", 0.3)):
        with monkeypatch.context() as patch:
            patch.setattr(transform, name, value)
            keys[name] = key()
    assert len(set(keys.values())) == len(keys), keys
    assert key() == keys["as it is"]  # and the same again with the constants put back

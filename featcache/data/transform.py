"""What defines a view's pixels, without torch: the augmentation's constants, the resize ratio, and
TRANSFORM_VERSION, which names the pixel code (featcache.data.clean_view, featcache.data.views) in
every cache key. Finding a finished cache builds its key from this module alone.
"""
from __future__ import annotations



MIN_IMAGE_SIZE = 16  # the smallest crop accepted, by the CLI (--image-size) and the API alike
MAX_IMAGE_SIZE = 2048  # the largest (an exported file's too): resized to 2,341 px a side, 66 MB of float32 for a
# square image, 1.3 GB for one at featcache's 20:1 bound on aspect ratio (data/datasets.py)
DEFAULT_IMAGE_SIZE = 224  # the reference crop
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
BRIGHTNESS = 0.2
CONTRAST = 0.2


def resize_size(image_size: int) -> int:
    """The reference pipeline resizes to 256 before cropping 224; scale that ratio to any size."""
    return int(round(image_size * 256 / 224))


# The identity of the code that turns an image file into a view's pixels (the decode resize and
# clean view in featcache.data.clean_view, view_params, the crop, flip, jitter and normalisation in
# featcache.data.views, and the constants above): bump it with any change to them, which gives every cache a new key.
# tests/test_transform_identity.py hashes the pixels fixed images make and fails when they change and this does not.
# 2: the decode resize is torch's float32 antialiased bilinear interpolate, rounded (was PIL's), the
# one an exported model runs; the centre crop starts at floor((extent - S) / 2).
TRANSFORM_VERSION = 2


def transform_description(image_size: int) -> dict:
    """Everything about the transforms that determines the pixels, for provenance and the cache key."""
    return {
        "version": TRANSFORM_VERSION,
        "resize": "float32 interpolate(bilinear, antialias=True, align_corners=False), round half to even, clamp 0..255",
        "train": [f"Resize({resize_size(image_size)})", f"RandomResizedCrop({image_size}, scale={SCALE}, "
                  f"ratio=({RATIO[0]:.4f}, {RATIO[1]:.4f}))", "RandomHorizontalFlip(0.5)",
                  f"ColorJitter(brightness={BRIGHTNESS}, contrast={CONTRAST})", "Normalize(ImageNet)"],
        "val": [f"Resize({resize_size(image_size)})", f"CenterCrop({image_size})", "Normalize(ImageNet)"],
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "params": "random.Random('featcache/{seed}/{split}/{index}/{view}')",
    }

"""A view is a pure function of (seed, split, index, view): batching must not change its pixels."""
import torch

from featcache.data.views import make_views, view_params
from featcache.data.images import decode_all
from featcache.data.datasets import load_dataset


def _images(image_folder, size=32):
    dataset = load_dataset(str(image_folder))
    return decode_all(dataset.train, size)


def test_views_do_not_depend_on_batching(image_folder):
    images = _images(image_folder)
    indices = list(range(len(images)))
    whole = make_views(images, indices, view=3, split="train", seed=7, image_size=32)
    pieces = torch.cat([make_views(images[i:i + 5], indices[i:i + 5], 3, "train", 7, 32)
                        for i in range(0, len(images), 5)])
    single = torch.cat([make_views([images[i]], [i], 3, "train", 7, 32) for i in reversed(indices)]).flip(0)
    assert torch.equal(whole, pieces)
    assert torch.equal(whole, single)


def test_views_differ_by_view_seed_and_split(image_folder):
    images = _images(image_folder)[:6]
    indices = list(range(6))
    base = make_views(images, indices, 1, "train", 0, 32)
    assert torch.equal(base, make_views(images, indices, 1, "train", 0, 32))
    for other in (make_views(images, indices, 2, "train", 0, 32),
                  make_views(images, indices, 1, "train", 1, 32),
                  make_views(images, indices, 1, "test", 0, 32)):
        assert not torch.allclose(base, other)


def test_clean_view_is_the_center_crop(image_folder):
    images = _images(image_folder)[:3]
    out = make_views(images, [0, 1, 2], 0, "train", 0, 32)
    image = images[0]
    top = int(round((image.shape[1] - 32) / 2))
    left = int(round((image.shape[2] - 32) / 2))
    expected = image[:, top:top + 32, left:left + 32].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(out[0], (expected - mean) / std, atol=1e-6)


def test_view_params_follow_torchvision_ranges():
    params = [view_params(0, "train", i, 1, 256, 300) for i in range(300)]
    for p in params:
        assert 0 <= p.top and p.top + p.height <= 256 and 0 <= p.left and p.left + p.width <= 300
        assert 0.8 <= p.brightness <= 1.2 and 0.8 <= p.contrast <= 1.2
    flips = sum(p.flip for p in params)
    assert 100 < flips < 200  # a fair coin, not a constant
    areas = [p.height * p.width / (256 * 300) for p in params]
    assert min(areas) < 0.2 and max(areas) > 0.8


def test_view_arithmetic_has_no_matmul_across_the_batch(image_folder):
    """On Intel CPUs MKL's AVX-512 GEMM rounds differently with the number of rows, so a matmul over the
    batch would make a view depend on its batch mates; this CPU may not show it, the op list does."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    images = _images(image_folder)[:6]
    with RecordOps() as recorder:
        for view in (0, 1, 2):
            make_views(images, list(range(6)), view, "train", 0, 32)
    assert "grid_sampler_2d" in recorder.ops  # the recorder sees the augmentation's ops
    gemms = {"mm", "bmm", "addmm", "baddbmm", "matmul", "mv", "dot", "linear", "einsum", "tensordot"}
    assert not recorder.ops & gemms, recorder.ops & gemms

"""Memory stays bounded on any image: one outside featcache's bound (pixels or aspect ratio, read from
its header) is refused in one line before a pixel is decoded, in extract, finetune and predict, and those
commands peak within 150 MB of the same command on one 32 x 32 image."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featcache.data.datasets import MAX_ASPECT, MAX_PIXELS, check_image_size, read_image
from featcache.errors import FeatcacheError

# A 1 x 20,000 strip (the clean view's resize made it about 30 GB) and a 13,000 x 13,000 square (2 GB as
# float32; PIL only warns below 179 megapixels): each a valid 1-bit PNG of a few kilobytes.
HUGE = {"strip": (1, 20_000), "square": (13_000, 13_000)}


def write_png(path, size):
    Image.new("1", size).save(path, optimize=True)
    return path


@pytest.mark.parametrize("width, height, inside", [
    (32, 32, True), (1 << 13, 1 << 13, True), ((1 << 13) + 1, 1 << 13, False),
    (10, 10 * MAX_ASPECT, True), (10, 10 * MAX_ASPECT + 1, False), (10 * MAX_ASPECT + 1, 10, False),
    (1, 20_000, False), (13_000, 13_000, False), (0, 5, False)])
def test_the_bound_on_pixels_and_aspect_ratio(width, height, inside):
    assert (1 << 13) ** 2 == MAX_PIXELS
    assert (check_image_size(width, height) is None) == inside


@pytest.mark.parametrize("name", HUGE)
def test_a_huge_image_is_refused_from_its_header(tmp_path, name):
    path = write_png(tmp_path / f"{name}.png", HUGE[name])
    assert path.stat().st_size < 50_000
    with pytest.raises(FeatcacheError, match=f"cannot read image {path}: .*bound") as raised:
        read_image(path)
    assert "\n" not in str(raised.value)
    small = write_png(tmp_path / "small.png", (32, 32))
    assert read_image(small).size == (32, 32)


def dataset(root, victim_size):
    """train/ and test/ with classes a and b, one image each; train/a/0.png is `victim_size`."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / name / "0.png")
    write_png(root / "train" / "a" / "0.png", victim_size)
    return root


def peak_run(args, cwd):
    """(exit status, stderr, peak RSS in MB) of `featcache ARGS` in a process of its own."""
    with open(cwd / "stderr.txt", "w+") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "featcache", *map(str, args)], cwd=cwd,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        return process.returncode, stderr.read(), usage.ru_maxrss / 1024


COMMON = ["--weights", "random", "--image-size", "32", "--batch-size", "4"]
COMMANDS = {
    "extract": lambda data, work: ["extract", "--data", data, "--cache-dir", work / "cache", "--views", "1", *COMMON],
    "finetune": lambda data, work: ["finetune", "--data", data, "--out", work / "run", "--epochs", "1", "--quiet",
                                    *COMMON],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", [*COMMANDS, "predict"])
def test_huge_images_refused_in_bounded_memory(tmp_path, command):
    baseline = tmp_path / "baseline"
    data = dataset(baseline / "data", (32, 32))
    if command == "predict":  # a model from the baseline's data: a finetune run directory
        assert peak_run(COMMANDS["finetune"](data, baseline), baseline)[0] == 0
        def args(data, work):
            return ["predict", baseline / "run", data / "train" / "a", "--out", work / "p.csv", "--quiet"]
    else:
        args = COMMANDS[command]
    status, stderr, small_peak = peak_run(args(data, baseline), baseline)
    assert status == 0, stderr
    for name, size in HUGE.items():
        work = tmp_path / name
        data = dataset(work / "data", size)
        status, stderr, peak = peak_run(args(data, work), work)
        lines = stderr.strip().splitlines()
        assert status == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert str(data / "train" / "a" / "0.png") in lines[0] and "bound" in lines[0], lines[0]
        assert peak < small_peak + 150, f"{command} on the {name}: {peak:.0f} MB, on 32 x 32: {small_peak:.0f} MB"


def test_predict_skip_bad_lists_and_skips_a_huge_image(small_cache, image_folder, tmp_path):
    """With --skip-bad, an image outside the bound is one of the unreadable: its row names the bound and
    the other images are predicted."""
    import featcache

    run = tmp_path / "run"
    featcache.train_head(small_cache.path, epochs=1, out=run)
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "strip.png", HUGE["strip"])
    Image.open(next((image_folder / "test").rglob("*.png"))).save(folder / "small.png")
    result = featcache.predict(run, [folder], tmp_path / "p.csv", progress=False, skip_bad=True)
    assert (result["images"], result["unreadable"]) == (1, 1)
    rows = {row["path"]: row for row in featcache.read_csv(tmp_path / "p.csv")}
    assert "bound" in rows[str(folder / "strip.png")]["error"] and rows[str(folder / "small.png")]["class_1"]

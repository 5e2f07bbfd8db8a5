"""Bad input: one clear line on stderr, a non-zero exit, no traceback, and existing caches untouched."""
import shutil

import h5py
import pytest
import torch
from torchvision.models import resnet18, resnet34

from conftest import assert_clean_failure, tree_digest

SMALL = ["--weights", "random", "--image-size", "32", "--views", "2", "--batch-size", "8"]


@pytest.fixture
def workspace(image_folder, small_cache, tmp_path):
    """A dataset and a cache dir that already holds its finished cache: copies of the shared ones, which
    these tests change."""
    data = shutil.copytree(image_folder, tmp_path / image_folder.name)  # the same name: the same cache file name
    cache_dir = shutil.copytree(small_cache.spec.cache_dir, tmp_path / "cache")
    return data, cache_dir


def test_the_workspace_cache_is_the_one_extract_finds(workspace, run_cli):
    data, cache_dir = workspace
    result = run_cli(*extract_args(data, cache_dir))
    assert result.exit_code == 0 and "reused complete cache" in result.output, result.output


def extract_args(data, cache_dir, *extra):
    return ["extract", "--data", data, "--cache-dir", cache_dir, *(extra or SMALL)]


def test_missing_folder(workspace, run_cli, tmp_path):
    data, cache_dir = workspace
    before = tree_digest(cache_dir)
    assert_clean_failure(run_cli(*extract_args(tmp_path / "nope", cache_dir)), "nope", "does not exist")
    assert tree_digest(cache_dir) == before


def test_unknown_class(workspace, run_cli):
    data, cache_dir = workspace
    before = tree_digest(cache_dir)
    assert_clean_failure(run_cli(*extract_args(data, cache_dir), "--classes", "ant,zebra"), "zebra", "ant, bee, cow")
    assert tree_digest(cache_dir) == before


def test_per_class_zero(workspace, run_cli):
    data, cache_dir = workspace
    assert_clean_failure(run_cli(*extract_args(data, cache_dir), "--per-class", "0"), "--per-class", exit_code=2)


def test_empty_class_folder(workspace, run_cli):
    data, cache_dir = workspace
    (data / "train" / "emu").mkdir()
    (data / "test" / "emu").mkdir()
    before = tree_digest(cache_dir)
    assert_clean_failure(run_cli(*extract_args(data, cache_dir)), "emu", "no images")
    assert tree_digest(cache_dir) == before


@pytest.mark.parametrize("damage, workers", [("garbage", "0"), ("truncated", "0"), ("truncated", "1")])
def test_corrupt_image_is_named(workspace, run_cli, damage, workers):
    data, cache_dir = workspace
    victim = data / "train" / "ant" / "0002.jpg"  # in the first batch: no progress bar before the error
    content = victim.read_bytes()
    victim.write_bytes(b"not an image at all" if damage == "garbage" else content[: len(content) // 2])
    before = tree_digest(cache_dir)
    assert_clean_failure(run_cli(*extract_args(data, cache_dir), "--num-workers", workers), str(victim))
    assert tree_digest(cache_dir) == before  # and no empty shard folder left behind
    assert not list(cache_dir.glob("*.shards"))


@pytest.mark.parametrize("kind", ["resnet34", "wrong_shape", "not_a_state_dict", "json"])
def test_weights_of_the_wrong_kind(workspace, run_cli, tmp_path, kind):
    data, cache_dir = workspace
    path = tmp_path / f"{kind}.pth"
    if kind == "resnet34":
        torch.save(resnet34().state_dict(), path)
    elif kind == "wrong_shape":
        state = resnet18().state_dict()
        state["layer4.0.conv1.weight"] = torch.zeros(512, 256, 1, 1)
        torch.save(state, path)
    elif kind == "json":
        path.write_text('{"arch": "resnet18", "image_size": 64}')  # the stand-in weights' JSON, passed by mistake
    else:
        path.write_text("hello")
    before = tree_digest(cache_dir)
    assert_clean_failure(run_cli(*extract_args(data, cache_dir, "--weights", path, "--image-size", "32")), str(path))
    assert tree_digest(cache_dir) == before


def test_imagenet_offline_says_where_the_file_goes(workspace, run_cli, monkeypatch, tmp_path):
    data, cache_dir = workspace
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    result = run_cli(*extract_args(data, cache_dir, "--weights", "imagenet", "--image-size", "32"))
    assert_clean_failure(result, "resnet18-f37072fd.pth", "--weights PATH")


@pytest.mark.parametrize("problem", ["not_featcache", "other_version", "not_hdf5"])
def test_foreign_or_other_version_cache_file(workspace, run_cli, problem):
    data, cache_dir = workspace
    [path] = cache_dir.glob("*.h5")
    if problem == "not_hdf5":
        path.write_bytes(b"just some bytes")
    else:
        with h5py.File(path, "r+") as handle:
            if problem == "not_featcache":
                handle.attrs["format"] = "something-else"
            else:
                handle.attrs["format_version"] = 999
    before = tree_digest(cache_dir)
    assert_clean_failure(run_cli(*extract_args(data, cache_dir)), path.name)
    assert tree_digest(cache_dir) == before


def test_cifar10_not_downloaded_says_how_to_get_it(run_cli, tmp_path):
    result = run_cli("extract", "--data", "cifar10", "--data-root", tmp_path / "nothing-here", "--cache-dir",
                     tmp_path / "cache", *SMALL)
    assert_clean_failure(result, "CIFAR-10 not found", "--download")
    assert not (tmp_path / "cache").exists()

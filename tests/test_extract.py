"""featcache extract: determinism, content-keyed reuse, resume after a kill, and bad input."""
import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from featcache import FeatcacheError
from featcache.backbone import load_backbone
from featcache.cache.reader import load_cache
from featcache.cache.writer import write_cache as extract
from featcache.cache.key import cache_provenance
from featcache.data.datasets import load_dataset
from conftest import SHARED_DATA, SHARED_WEIGHTS, SMALL_CACHE_BATCH, SMALL_CACHE_SHARD, tree_digest

SMALL = ["--weights", "random", "--image-size", "32", "--views", "2", "--batch-size", "5"]


def _extract(image_folder, cache_dir, seed=0, batch_size=SMALL_CACHE_BATCH, views=2, weights="random", on_shard=None,
             force=False, shard_size=SMALL_CACHE_SHARD):  # by default small_cache's cut: the same bytes
    dataset = load_dataset(str(image_folder))
    backbone = load_backbone(weights, seed)
    provenance = cache_provenance(dataset, weights, seed, 32, views)
    return extract(dataset, backbone, provenance, cache_dir, batch_size=batch_size, shard_size=shard_size,
                   progress=False, on_shard=on_shard, force=force)


def test_extract_writes_the_documented_layout(image_folder, tmp_path, run_cli):
    result = run_cli("extract", "--data", image_folder, "--cache-dir", tmp_path, *SMALL)
    assert result.exit_code == 0, result.output
    [path] = tmp_path.glob("*.h5")
    with h5py.File(path, "r") as handle:  # plain h5py, no featcache
        assert handle["train/features"].shape == (24, 3, 512)
        assert handle["test/features"].shape == (12, 512)
        assert list(handle["train/labels"][()]) == [0] * 8 + [1] * 8 + [2] * 8
        assert handle["train/ids"][0].decode() == "train/ant/0000.jpg"
        assert handle.attrs["complete"] and handle.attrs["views"] == 2 and handle.attrs["format"] == "featcache"
        assert handle.attrs["format_version"] == 2 and handle.attrs["shard_size"] == 256
        assert handle.attrs["batch_size"] == 5
        assert json.loads(handle.attrs["checksums"])["train"][0][:2] == [0, 24]  # one shard of 256 covers all
        assert handle["train/features"].chunks == (24, 1, 512)  # one view is read without the others
        assert np.isfinite(handle["train/features"][()]).all()
    again = run_cli("extract", "--data", image_folder, "--cache-dir", tmp_path, *SMALL)
    assert again.exit_code == 0 and "reused complete cache" in again.output


def test_same_seed_same_features_other_seed_other_file(image_folder, small_cache, tmp_path):
    first = load_cache(small_cache.path)
    second = load_cache(_extract(image_folder, tmp_path / "a").path)
    assert torch.equal(first.train_features, second.train_features)
    assert torch.equal(first.test_features, second.test_features)
    other = _extract(image_folder, tmp_path / "a", seed=1)
    assert other.path != second.path and not other.reused


def test_features_do_not_depend_on_batch_size(image_folder, small_cache, tmp_path):
    """The README's promise for another cut (batch or shard size): equal within 1e-4, not bit for bit."""
    small = load_cache(small_cache.path)  # batches of 5 in shards of 7
    large = load_cache(_extract(image_folder, tmp_path, batch_size=16, shard_size=256).path)
    assert torch.allclose(small.train_features, large.train_features, atol=1e-4)
    assert torch.allclose(small.test_features, large.test_features, atol=1e-4)


def test_interrupted_extraction_resumes_to_the_same_result(image_folder, small_cache, tmp_path, commit_thread):
    reference = load_cache(small_cache.path)  # the same cut, uninterrupted

    def crash(shard):
        if shard.split == "train" and shard.stop >= 14:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _extract(image_folder, tmp_path / "run", on_shard=crash)
    [shards] = (tmp_path / "run").glob("*.shards")
    final = shards.with_name(shards.name.removesuffix(".shards"))
    kept = sorted(p.name for p in shards.iterdir())  # committed shards only: no temporary file
    # inline, the interrupt comes right after train-000001's commit; with a writer thread the shard it was
    # writing is finished (the queued ones dropped), so one more may be kept
    assert not final.exists() and kept[:2] == ["train-000000.h5", "train-000001.h5"]
    assert len(kept) == 2 if commit_thread == "0" else len(kept) <= 3
    with pytest.raises(FeatcacheError, match="unfinished extraction"):
        load_cache(final)
    resumed = _extract(image_folder, tmp_path / "run")
    assert resumed.shards_resumed == len(kept) and resumed.shards_total == 4 + 2 and resumed.path == final
    assert not shards.exists()  # removed after a verified assembly
    result = load_cache(final)
    assert torch.equal(result.train_features, reference.train_features)
    assert torch.equal(result.test_features, reference.test_features)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_resumes_to_the_same_result(make_image_folder, tmp_path, commit_thread):
    data = make_image_folder(train_per_class=40, test_per_class=10)
    args = [sys.executable, "-m", "featcache", "extract", "--data", str(data), "--cache-dir", str(tmp_path / "cache"),
            "--weights", "random", "--image-size", "32", "--views", "4", "--batch-size", "4", "--shard-size", "6"]
    rng = np.random.default_rng(2)  # kill delays: reproducible
    for attempt in range(6):
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not list((tmp_path / "cache").glob("*.shards")) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.1, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not list((tmp_path / "cache").glob("*.h5")):
            break
        for path in (tmp_path / "cache").glob("*.h5"):
            path.unlink()
    else:
        pytest.fail("extraction always finished before the kill; make the dataset larger")
    finish = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    [final] = (tmp_path / "cache").glob("*.h5")
    dataset = load_dataset(str(data))
    backbone = load_backbone("random", 0)
    reference = extract(dataset, backbone, cache_provenance(dataset, "random", 0, 32, 4),
                        tmp_path / "reference", batch_size=4, shard_size=6, progress=False)
    resumed, uninterrupted = load_cache(final), load_cache(reference.path)
    assert torch.equal(resumed.train_features, uninterrupted.train_features)  # same cut: the same bytes
    assert torch.equal(resumed.test_features, uninterrupted.test_features)


def test_changed_weights_transform_or_views_never_reuse(image_folder, tmp_path, run_cli):
    cache_dir = tmp_path / "cache"
    assert run_cli("extract", "--data", image_folder, "--cache-dir", cache_dir, *SMALL).exit_code == 0
    before = tree_digest(cache_dir)
    weights = tmp_path / "w.pth"
    model = resnet18()
    torch.save(model.state_dict(), weights)
    base = ["extract", "--data", image_folder, "--cache-dir", cache_dir, "--batch-size", "8"]
    assert run_cli(*base, "--weights", weights, "--image-size", "32", "--views", "2").exit_code == 0
    with torch.no_grad():
        model.layer4[0].conv1.weight.mul_(1.01)  # same path, new content
    torch.save(model.state_dict(), weights)
    assert run_cli(*base, "--weights", weights, "--image-size", "32", "--views", "2").exit_code == 0
    assert run_cli(*base, "--weights", "random", "--image-size", "40", "--views", "2").exit_code == 0
    assert run_cli(*base, "--weights", "random", "--image-size", "32", "--views", "3").exit_code == 0
    assert run_cli(*base, "--weights", "random", "--image-size", "32", "--views", "2", "--precision", "bf16").exit_code == 0
    files = sorted(cache_dir.glob("*.h5"))
    assert len(files) == 6
    after = tree_digest(cache_dir)
    assert all(after[name] == digest for name, digest in before.items())
    copy = tmp_path / "elsewhere.pth"
    copy.write_bytes(weights.read_bytes())
    again = run_cli(*base, "--weights", copy, "--image-size", "32", "--views", "2")
    assert "reused complete cache" in again.output  # identity is content, not path


def test_changed_image_file_never_reuses(make_image_folder, tmp_path, run_cli):
    data = make_image_folder(3, 2)  # its own: this test changes an image
    args = ["extract", "--data", data, "--cache-dir", tmp_path / "cache", *SMALL]
    assert run_cli(*args).exit_code == 0
    image = data / "train" / "bee" / "0001.png"
    pixels = np.array(Image.open(image))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    second = run_cli(*args)
    assert second.exit_code == 0 and "reused" not in second.output
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 2


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (the reference CIFAR-10 subset) is not present")
def test_real_data_with_stand_in_weights(tmp_path, run_cli):
    result = run_cli("extract", "--data", SHARED_DATA, "--weights", SHARED_WEIGHTS / "resnet18-cifar10src-64px.pth",
                     "--image-size", "64", "--views", "1", "--per-class", "6", "--test-per-class", "4",
                     "--classes", "horse,cat", "--cache-dir", tmp_path)
    assert result.exit_code == 0, result.output
    cache = load_cache(next(tmp_path.glob("*.h5")))
    assert cache.classes == ["horse", "cat"]
    assert cache.train_features.shape == (12, 2, 512) and cache.test_features.shape == (8, 512)
    assert cache.train_labels.tolist() == [0] * 6 + [1] * 6  # labels follow the order of --classes


def test_reusing_a_cache_does_not_import_torch(image_folder, small_cache):
    args = ["extract", "--data", str(image_folder), "--cache-dir", str(small_cache.spec.cache_dir), *SMALL]
    probe = ("import sys; from featcache.cli import main; main(sys.argv[1:], standalone_mode=False); "
             "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "reused complete cache" in result.stdout and "NO_TORCH" in result.stdout


def test_features_do_not_depend_on_decoding_workers(image_folder, small_cache, tmp_path):
    dataset = load_dataset(str(image_folder))
    provenance = cache_provenance(dataset, "random", 0, 32, 2)
    path = extract(dataset, load_backbone("random", 0), provenance, tmp_path, batch_size=SMALL_CACHE_BATCH,
                   shard_size=SMALL_CACHE_SHARD, num_workers=2, progress=False).path
    workers, in_process = load_cache(path), load_cache(small_cache.path)  # decoded in this process, same cut
    assert torch.equal(workers.train_features, in_process.train_features)
    assert torch.equal(workers.test_features, in_process.test_features)

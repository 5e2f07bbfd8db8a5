"""Shards on disk: full disks, read-only and vanishing folders, damaged shards and damaged caches.

Faults are real where this machine allows it (a small tmpfs fills up; a read-only mount) and injected
where it does not (ENOSPC from os.write on a shard)."""
import errno
import os
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from featcache import FeatcacheError
from featcache.backbone import load_backbone
from featcache.cache.reader import load_cache
from featcache.cache.writer import write_cache as extract
from featcache.data.datasets import load_dataset
from featcache.cache.shards import shard_folder
from featcache.cache.key import cache_provenance
from conftest import SMALL_CACHE_BATCH, SMALL_CACHE_SHARD, assert_clean_failure, torch_threads, tree_digest

# small_cache's cut: 24 training rows: shards 0-6, 7-13, 14-20, 21-23; 12 test rows: 0-6, 7-11
SHARD_SIZE, BATCH_SIZE = SMALL_CACHE_SHARD, SMALL_CACHE_BATCH


def _extract(data, cache_dir, **kwargs):
    dataset = load_dataset(str(data))
    provenance = cache_provenance(dataset, "random", 0, 32, 2)
    return extract(dataset, load_backbone("random", 0), provenance, cache_dir, batch_size=BATCH_SIZE,
                   shard_size=SHARD_SIZE, progress=False, **kwargs)


@pytest.fixture
def reference(small_cache):
    """An uninterrupted run with the same cut: what every faulty run must end up equal to, bit for bit."""
    return load_cache(small_cache.path)


def assert_same_cache(path, reference):
    result = load_cache(path)
    assert torch.equal(result.train_features, reference.train_features)
    assert torch.equal(result.test_features, reference.test_features)


def assert_error_after_progress(result, *words):
    """A failure in the middle of extraction: the progress bar, then the error on one line of its own."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and sum("Error" in line for line in lines) == 1, result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]


def extract_cli(data, cache_dir, *extra):
    return ["extract", "--data", data, "--cache-dir", cache_dir, "--weights", "random", "--image-size", "32",
            "--views", "2", "--batch-size", BATCH_SIZE, "--shard-size", SHARD_SIZE, *extra]


def fill(folder) -> object:
    """Take every free byte of folder's filesystem; returns the filler file to delete later."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_too_small_a_disk_is_refused_before_any_work(image_folder, small_disk, run_cli):
    disk = small_disk("200k")  # the features alone are 172 KB; shards and the assembled copy need twice that
    result = run_cli(*extract_cli(image_folder, disk / "cache"))
    assert_clean_failure(result, "not enough room", str(disk), "MB is free", "shards still to write")
    assert not list(disk.rglob("*.h5"))


def test_disk_filling_up_during_extraction_then_room_made(image_folder, small_disk, reference, commit_thread):
    disk = small_disk("1m")
    filler = None

    def take_the_rest(shard):
        nonlocal filler
        if filler is None:
            filler = fill(disk)

    with pytest.raises(FeatcacheError) as failure:
        _extract(image_folder, disk / "cache", on_shard=take_the_rest)
    message = str(failure.value)
    assert "\n" not in message and "no room left in" in message and "MB is free" in message
    [shards] = (disk / "cache").glob("*.shards")
    kept = sorted(p.name for p in shards.iterdir())  # the finished shards, no temporary file
    # inline, on_shard runs right after shard 0's commit; a writer thread may have made the next ones durable
    # before on_shard(0) ran on the main thread and filled the disk
    assert kept == ["train-000000.h5"] if commit_thread == "0" else \
        kept == [f"train-{k:06d}.h5" for k in range(len(kept))] and len(kept) >= 1
    assert not list((disk / "cache").glob("*.h5"))
    filler.unlink()
    resumed = _extract(image_folder, disk / "cache")
    assert resumed.shards_resumed == len(kept)
    assert_same_cache(resumed.path, reference)


def test_disk_full_at_assembly_keeps_the_shards_and_the_rerun_only_assembles(image_folder, small_disk, reference,
                                                                            commit_thread):
    disk = small_disk("1m")
    filler = None

    def fill_after_the_last_shard(shard):
        nonlocal filler
        if shard.split == "test" and shard.index == 1:
            filler = fill(disk)

    with pytest.raises(FeatcacheError, match="no room left in .* while assembling"):
        _extract(image_folder, disk / "cache", on_shard=fill_after_the_last_shard)
    assert not list((disk / "cache").glob("*.h5")) and not list((disk / "cache").glob("*.partial"))
    filler.unlink()
    resumed = _extract(image_folder, disk / "cache")
    assert resumed.shards_resumed == resumed.shards_total == 6 and resumed.images == 0
    assert_same_cache(resumed.path, reference)


def test_injected_enospc_on_a_shard_write_is_one_line(image_folder, tmp_path, run_cli, monkeypatch, reference,
                                                     commit_thread):
    real_write = os.write
    calls = {"count": 0}

    def write_until_full(descriptor, data):
        calls["count"] += 1
        if calls["count"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)

    monkeypatch.setattr("featcache.cache.shards.os.write", write_until_full)
    result = run_cli(*extract_cli(image_folder, tmp_path / "cache"))
    assert_error_after_progress(result, "no room left in", "writing shard train-000002.h5", "the cache needs",
                                "make room")
    [shards] = (tmp_path / "cache").glob("*.shards")
    assert sorted(p.name for p in shards.iterdir()) == ["train-000000.h5", "train-000001.h5"]
    monkeypatch.setattr("featcache.cache.shards.os.write", real_write)
    again = run_cli(*extract_cli(image_folder, tmp_path / "cache"))
    assert again.exit_code == 0 and "resumed: 2 of 6 shards" in again.output, again.output
    assert_same_cache(next((tmp_path / "cache").glob("*.h5")), reference)


def test_read_only_folder_is_one_line(image_folder, small_disk, run_cli):
    disk = small_disk("1m", "ro")
    assert_clean_failure(run_cli(*extract_cli(image_folder, disk)), "cannot write to", str(disk), "Read-only")


def test_vanishing_folder_is_one_line(image_folder, tmp_path):
    cache_dir = tmp_path / "cache"

    def remove_the_folder(shard):
        shutil.rmtree(cache_dir)

    with pytest.raises(FeatcacheError, match="disappeared while writing shard") as failure:
        _extract(image_folder, cache_dir, on_shard=remove_the_folder)
    assert "\n" not in str(failure.value)


def _interrupt_after(count):
    done = []

    def interrupt(shard):
        done.append(shard)
        if len(done) == count:
            raise KeyboardInterrupt
    return interrupt


def _flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x10]))


def test_flipped_byte_and_truncated_shard_are_recomputed(image_folder, tmp_path, reference):
    with pytest.raises(KeyboardInterrupt):
        _extract(image_folder, tmp_path, on_shard=_interrupt_after(3))
    [folder] = tmp_path.glob("*.shards")
    with h5py.File(folder / "train-000001.h5", "r") as handle:
        offset = handle["features"].id.get_offset()
    _flip_byte(folder / "train-000001.h5", offset + 1000)  # inside the feature bytes
    truncated = folder / "train-000002.h5"
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    resumed = _extract(image_folder, tmp_path)
    assert resumed.shards_resumed == 1  # only train-000000 survived the scan
    assert len(resumed.shards_removed) == 2
    assert "train-000001.h5 fails its sha256" in resumed.shards_removed[0]
    assert "train-000002.h5 is unreadable" in resumed.shards_removed[1]
    assert_same_cache(resumed.path, reference)


def test_a_shard_damaged_before_assembly_is_recomputed_in_the_same_run(image_folder, tmp_path, reference,
                                                                     commit_thread):
    def damage_the_first_shard(shard):
        if shard.split == "test" and shard.index == 1:  # the last shard: assembly comes next
            [folder] = tmp_path.glob("*.shards")
            with h5py.File(folder / "train-000000.h5", "r") as handle:
                offset = handle["features"].id.get_offset()
            _flip_byte(folder / "train-000000.h5", offset + 99)

    result = _extract(image_folder, tmp_path, on_shard=damage_the_first_shard)
    assert result.shards_removed == ["train-000000.h5 fails its sha256"]
    assert_same_cache(result.path, reference)


def test_verify_names_the_rows_of_a_flipped_byte(small_cache, tmp_path, run_cli):
    path = Path(shutil.copy(small_cache.path, tmp_path))  # a copy: this test damages it
    good = run_cli("verify", path)
    assert good.exit_code == 0 and "all 6 checksummed row ranges match" in good.output
    with h5py.File(path, "r") as handle:
        features = handle["train/features"]
        assert features.chunks == (24, 1, 512)  # one view of every row is read alone
        chunk = features.id.get_chunk_info_by_coord((0, 2, 0))  # view 2's chunk: rows 0-23
    _flip_byte(path, chunk.byte_offset + 16 * 512 * 4 + 7)  # row 16, view 2
    before = tree_digest(tmp_path)
    assert_clean_failure(run_cli("verify", path), "is damaged", "train rows 14-20 fail their sha256")
    with pytest.raises(FeatcacheError, match="train rows 14-20 fail their sha256"):
        load_cache(path)
    assert tree_digest(tmp_path) == before


def test_another_cut_is_refused_and_force_starts_again(image_folder, tmp_path, run_cli, reference):
    with pytest.raises(KeyboardInterrupt):
        _extract(image_folder, tmp_path, on_shard=_interrupt_after(2))
    before = tree_digest(tmp_path)
    other_cut = run_cli("extract", "--data", image_folder, "--cache-dir", tmp_path, "--weights", "random",
                        "--image-size", "32", "--views", "2", "--batch-size", "4", "--shard-size", SHARD_SIZE)
    assert_clean_failure(other_cut, f"--shard-size {SHARD_SIZE} --batch-size {BATCH_SIZE}", "--force")
    assert tree_digest(tmp_path) == before
    forced = run_cli("extract", "--data", image_folder, "--cache-dir", tmp_path, "--weights", "random",
                     "--image-size", "32", "--views", "2", "--batch-size", "4", "--shard-size", "5", "--force")
    assert forced.exit_code == 0 and "resumed" not in forced.output, forced.output
    result = load_cache(next(tmp_path.glob("*.h5")))
    assert result.attrs["batch_size"] == 4 and result.attrs["shard_size"] == 5
    assert torch.allclose(result.train_features, reference.train_features, atol=1e-4)  # another cut: within tolerance


def test_a_resume_with_another_thread_count_is_refused(image_folder, tmp_path, run_cli):
    """On Intel CPUs oneDNN rounds some convolutions differently by thread count: shards computed with 1
    thread are not resumed with 2 (torchrun's ranks have 1 unless OMP_NUM_THREADS says otherwise)."""
    with torch_threads(1), pytest.raises(KeyboardInterrupt):
        _extract(image_folder, tmp_path, on_shard=_interrupt_after(2))
    [folder] = tmp_path.glob("*.shards")
    with h5py.File(folder / "train-000000.h5", "r") as handle:
        assert handle.attrs["threads"] == 1 and handle.attrs["batch_size"] == BATCH_SIZE
    before = tree_digest(tmp_path)
    with torch_threads(2):
        refused = run_cli(*extract_cli(image_folder, tmp_path))
    assert_clean_failure(refused, f"--batch-size {BATCH_SIZE} and 1 thread per process, this run with",
                         "and 2 threads per process", "OMP_NUM_THREADS", "--force")
    assert tree_digest(tmp_path) == before
    with torch_threads(1):
        resumed = run_cli(*extract_cli(image_folder, tmp_path))
    assert resumed.exit_code == 0 and "resumed: 2 of 6 shards" in resumed.output, resumed.output
    assert load_cache(next(tmp_path.glob("*.h5"))).attrs["threads"] == 1


def test_ranks_with_different_thread_counts_are_refused_by_rank_0():
    from featcache.ranks import SingleProcess
    from featcache.cache.writer import _check_ranks_agree

    class TwoRanks(SingleProcess):  # rank 0 of ranks that computed with 2 and 1 threads
        def gather(self, value):
            return [value, 1]

    _check_ranks_agree(TwoRanks(), 1)
    with pytest.raises(FeatcacheError, match=r"different thread counts \(2, 1 by rank\).*OMP_NUM_THREADS"):
        _check_ranks_agree(TwoRanks(), 2)


def test_leftover_shards_of_a_finished_cache_are_removed_on_reuse(image_folder, small_cache, tmp_path, run_cli):
    path = Path(shutil.copy(small_cache.path, tmp_path))  # the finished cache, where this test may change things
    leftover = shard_folder(path)
    leftover.mkdir()
    (leftover / "train-000000.h5").write_bytes(b"killed between the rename and the clean-up")
    again = run_cli(*extract_cli(image_folder, tmp_path))
    assert again.exit_code == 0 and "reused complete cache" in again.output
    assert not leftover.exists()

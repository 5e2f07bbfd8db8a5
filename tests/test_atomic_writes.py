"""Writes that cannot mix or escape (featcache.files): an --overwrite stopped after any file operation
leaves the old run, the new run or no history.json; a symlink at a run's file name is replaced, never
followed; files have the umask's mode; a truncated table of the cache folder is a warning and is
recomputed."""
import os
import shutil

import numpy as np
import pytest
import torch

import featcache
from featcache import files
from featcache.data.fingerprint import LISTINGS, TABLE
from featcache.evaluate.runs import read_predictions
from featcache.npz import read_npz


@pytest.fixture(scope="module")
def two_runs(small_cache, tmp_path_factory):
    """An old run written to a folder, and a new run (another seed, more epochs) held in memory."""
    folder = tmp_path_factory.mktemp("runs")
    old = featcache.train_head(small_cache.path, epochs=1, seed=0, out=folder / "old")
    new = featcache.train_head(small_cache.path, epochs=2, seed=1)
    return folder / "old", old, new


def state_of(folder, old, new):
    """'old', 'new' or 'none' (no history.json): whichever it is, every file agrees with it."""
    if not (folder / "history.json").exists():
        return "none"
    loaded = featcache.Run.load(folder)
    which = {1: old, 2: new}[len(loaded.history["test_acc"])]
    assert loaded.config["seed"] == which.config["seed"]
    for key, value in which.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)
    stored = read_predictions(folder)
    np.testing.assert_array_equal(stored["probabilities"], np.asarray(which.predictions["probabilities"], np.float32))
    assert not any(folder.glob("seeds.json"))
    return "old" if which is old else "new"


def save_stopped_at(k, run, folder):
    """Run.save(folder, overwrite=True) in a forked child that ends with os._exit, as a kill would (no
    cleanup, no finally), just before its k-th file operation; True if it finished first."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            count = [0]

            def step(what):
                count[0] += 1
                if count[0] == k:
                    os._exit(9)
            files._step = step
            run.save(folder, overwrite=True)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the child failed (exit {code}) before its operation {k}"
    return code == 0


def test_an_overwrite_stopped_after_any_file_operation_leaves_one_whole_run_or_none(two_runs, tmp_path):
    source, old, new = two_runs
    seen = []
    for k in range(1, 100):
        folder = tmp_path / f"stop-{k}"
        shutil.copytree(source, folder)
        finished = save_stopped_at(k, new, folder)
        seen.append(state_of(folder, old, new))
        if finished:
            break
    assert finished and seen[-1] == "new", seen
    assert seen[0] == "old" and "none" in seen, seen  # every operation after the first leaves no run at all
    assert seen == sorted(seen, key=["old", "none", "new"].index), seen  # old, then none, then new: never mixed
    assert len(seen) > 10  # remove, remove, then create, write, fsync, rename, fsync per file


def test_a_symlink_at_a_run_file_is_replaced_never_followed(two_runs, tmp_path):
    source, old, new = two_runs
    folder = tmp_path / "run"
    shutil.copytree(source, folder)
    outside = tmp_path / "bashrc"
    outside.write_text("export PATH=$PATH\n")
    for name in ("weights.pt", "predictions.npz", "history.json"):
        (folder / name).unlink()
        (folder / name).symlink_to(outside)
    umask = os.umask(0o027)
    try:
        new.save(folder, overwrite=True)
    finally:
        os.umask(umask)
    assert outside.read_text() == "export PATH=$PATH\n"
    for name in ("weights.pt", "predictions.npz", "history.json"):
        assert not (folder / name).is_symlink()
        assert (folder / name).stat().st_mode & 0o777 == 0o640, name  # 0o666 & ~0o027, as a plain open gives
    assert state_of(folder, old, new) == "new"
    assert not [path.name for path in folder.iterdir() if path.name.startswith(files.TEMPORARY)]


def test_a_temporary_name_that_exists_is_never_opened(tmp_path, monkeypatch):
    """The temporary file is created exclusively: a link planted at the name fails the write, the link's
    target untouched, rather than writing through it."""
    outside = tmp_path / "outside"
    outside.write_text("keep")
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "fixed")
    (tmp_path / f"{files.TEMPORARY}out.json.{os.getpid()}.fixed").symlink_to(outside)
    with pytest.raises(featcache.FeatcacheError, match="cannot write"):
        files.write_file(tmp_path / "out.json", b"{}")
    assert outside.read_text() == "keep" and not (tmp_path / "out.json").exists()


def test_truncated_tables_are_a_warning_and_a_correct_run(image_folder, tmp_path, capfd):
    spec = featcache.CacheSpec(featcache.DataSpec(str(image_folder)), weights="random", image_size=32, views=1,
                               cache_dir=tmp_path / "cache")
    first = featcache.extract(spec, progress=False)
    for name in (TABLE, LISTINGS):
        table = tmp_path / "cache" / name
        table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])  # a power loss mid-write, unsynced
    capfd.readouterr()
    second = featcache.extract(spec, progress=False)
    err = capfd.readouterr().err
    assert f"warning: {tmp_path / 'cache' / TABLE} is damaged" in err, err
    assert f"warning: {tmp_path / 'cache' / LISTINGS} is damaged" in err, err
    assert second.path == first.path and second.reused  # the same key: the finished cache is found
    capfd.readouterr()
    featcache.extract(spec, progress=False)  # the tables were written whole again: no warning now
    assert "warning" not in capfd.readouterr().err
    assert len(read_npz(tmp_path / "cache" / TABLE, ("sha256",))["sha256"]) == 36


def test_a_symlinked_seed_folder_is_replaced_never_written_through(small_cache, tmp_path):
    group = featcache.train_head_seeds(small_cache.path, [0, 1], epochs=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "history.json").write_text("mine")
    folder = tmp_path / "seeds"
    folder.mkdir()
    (folder / "seed-0").symlink_to(outside)
    group.save(folder, overwrite=True)
    assert sorted(path.name for path in outside.iterdir()) == ["history.json"]
    assert (outside / "history.json").read_text() == "mine"
    assert not (folder / "seed-0").is_symlink() and featcache.SeedRuns.load(folder).seeds == [0, 1]


def test_a_fifo_or_link_at_a_lock_is_one_line_not_a_hang(tmp_path):
    from featcache.evaluate.claims import CLAIM, claimed

    os.mkfifo(tmp_path / CLAIM)
    with pytest.raises(featcache.FeatcacheError, match="not a regular file"):
        with claimed(tmp_path, "scratch"):
            pass
    (tmp_path / CLAIM).unlink()
    (tmp_path / CLAIM).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(featcache.FeatcacheError, match="not a regular file"):
        with claimed(tmp_path, "scratch"):
            pass
    assert not (tmp_path / "elsewhere").exists()

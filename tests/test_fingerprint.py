"""The dataset fingerprint reads only changed files: a stat table beside the caches, trusted only for
files unchanged in size, mtime, ctime and inode and not changed within 2 s of being hashed."""
import os
import time

import featcache
from featcache.data import fingerprint
from featcache.data.fingerprint import FileHashes


def age(folder, seconds=60):
    """Every file's mtime put `seconds` into the past (its ctime becomes now: wait out the racy window)."""
    past = time.time() - seconds
    for root, _, files in os.walk(folder):
        for name in files:
            os.utime(os.path.join(root, name), (past, past))


def counting(monkeypatch):
    reads = []
    real = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda path: reads.append(path) or real(path))
    return reads


def locate(data, cache_dir, rehash=False):
    spec = featcache.CacheSpec(featcache.DataSpec(str(data)), weights="random", image_size=32, views=2,
                               cache_dir=cache_dir)
    return spec.locate(rehash)[2]


def test_second_call_reads_no_file_and_a_changed_file_changes_the_key(make_image_folder, tmp_path, monkeypatch):
    data = make_image_folder(3, 2)
    age(data)
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)  # ctime was just set by age(): trust it in this test
    reads = counting(monkeypatch)
    first = locate(data, tmp_path / "cache")
    assert len(reads) == 15 and (tmp_path / "cache" / fingerprint.TABLE).is_file()
    reads.clear()
    assert locate(data, tmp_path / "cache") == first and reads == []  # the stat table answered
    assert locate(data, tmp_path / "cache", rehash=True) == first and len(reads) == 15  # --rehash reads all
    victim = data / "train" / "ant" / "0001.png"
    stat = victim.stat()
    content = bytearray(victim.read_bytes())
    content[-5] ^= 0xFF  # same size, other bytes, mtime put back: only ctime and the bytes differ
    victim.write_bytes(bytes(content))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    reads.clear()
    changed = locate(data, tmp_path / "cache")
    assert reads == [str(victim)] and changed != first  # ctime caught it: re-read, and a new key


def test_racily_clean_files_are_hashed_again(make_image_folder, tmp_path, monkeypatch):
    data = make_image_folder(2, 1)  # just written: within the 2 s window
    reads = counting(monkeypatch)
    locate(data, tmp_path / "cache")
    reads.clear()
    locate(data, tmp_path / "cache")
    assert len(reads) == 9  # not trusted yet: hashed again


def test_a_damaged_table_is_only_a_lost_shortcut(tmp_path):
    (tmp_path / fingerprint.TABLE).write_bytes(b"not numpy")
    hashes = FileHashes(tmp_path)
    assert hashes.paths == []
    path = tmp_path / "file.png"
    path.write_bytes(b"abc")
    assert hashes.digests([str(path)])[0] == fingerprint.file_sha256(str(path))
    hashes.save()
    assert FileHashes(tmp_path).paths == [str(path)]  # the table was rewritten


def test_the_table_serves_other_selections_of_the_same_files(tmp_path, monkeypatch):
    """One table for every dataset in the cache folder: a subset, or the files in another order, is
    matched row by row, and a lookup that reads no file leaves the table as it is."""
    files = []
    for index in range(6):
        files.append(str(tmp_path / f"{index}.png"))
        (tmp_path / f"{index}.png").write_bytes(b"image %d" % index)
    age(tmp_path)
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    reads = counting(monkeypatch)
    expected = [fingerprint.file_sha256(path) for path in files]
    reads.clear()
    table = FileHashes(tmp_path / "cache")
    assert list(table.digests(files)) == expected and len(reads) == 6
    table.save()
    reads.clear()
    for selection in (files[4:1:-1], files[:2], files, files[::-1]):
        table = FileHashes(tmp_path / "cache")
        assert list(table.digests(selection)) == [expected[files.index(path)] for path in selection]
        assert table.paths == files and not table.changed  # read nothing: the table is left as it is
        table.save()
    assert reads == []


def test_class_folders_are_listed_again_only_when_they_change(make_image_folder, tmp_path, monkeypatch):
    """Folder listings are remembered under the folder's mtime and ctime: adding an image changes them,
    so that folder alone is listed again, and the new image enters the key."""
    data = make_image_folder(3, 2)
    age(data)
    for folder in (data / split / name for split in ("train", "test") for name in ("ant", "bee", "cow")):
        os.utime(folder, (time.time() - 60, time.time() - 60))
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    listed = []
    real = featcache.data.layouts.list_folder
    monkeypatch.setattr(featcache.data.layouts, "list_folder", lambda folder: listed.append(folder) or real(folder))
    first = locate(data, tmp_path / "cache")
    assert len(listed) == 9 and (tmp_path / "cache" / fingerprint.LISTINGS).is_file()  # the root, 2 splits, 6 classes
    listed.clear()
    assert locate(data, tmp_path / "cache") == first and listed == []  # every folder from the memo
    (data / "train" / "bee" / "0003.png").write_bytes((data / "train" / "bee" / "0001.png").read_bytes())
    changed = locate(data, tmp_path / "cache")
    assert listed == [str(data / "train" / "bee")] and changed != first
    listed.clear()
    assert locate(data, tmp_path / "cache", rehash=True) == changed and len(listed) == 9


def test_a_repeated_command_on_a_made_split_leaves_the_hash_table_alone(tmp_path, monkeypatch):
    """A made split looks the files up in pool order, the fingerprint in train + test order: a lookup
    that reads nothing must not rewrite the table (at a million files, seconds every run)."""
    from test_own_images import class_folders

    data = class_folders(tmp_path / "pets")
    age(data)
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    first = locate(data, tmp_path / "cache")
    table = tmp_path / "cache" / fingerprint.TABLE
    before = table.stat()
    reads = counting(monkeypatch)
    assert locate(data, tmp_path / "cache") == first and reads == []
    after = table.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

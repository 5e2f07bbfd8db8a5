"""Writing a file so that it cannot mix or escape: every file featcache writes goes through `write_file`.

The content goes to a temporary file created in the final file's folder, exclusively and without
following a link (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0o666 so the kernel applies the umask as a plain
`open` does), is fsynced and renamed over the final name; then the folder is fsynced, so that after a
crash the name says either the old content or the new. A rename replaces a symlink at the final name
itself: a `weights.pt -> ~/.bashrc` unpacked from someone's tarball is replaced, ~/.bashrc untouched.
A folder's other writers never see a half-written file, and two writers of one name leave one whole.

`remove` unlinks a name and fsyncs its folder, for the same reason. Each step calls `_step(what)`
first: tests replace it to stop a process at the k-th file operation (tests/test_atomic_writes.py).
No torch here.
"""
from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import cannot_write

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
TEMPORARY = ".tmp-"  # prefix of every temporary name: `.tmp-<name>.<pid>.<random>`


def _step(what: str) -> None:
    """Called before every file operation below (a hook for tests that stop at the k-th)."""


def write_file(out: str | Path, content: bytes | memoryview | Callable[[BinaryIO], None], what: str | None = None,
               then: str = "free space or choose another folder") -> Path:
    """Write `out` whole or not at all: `content` (bytes, or a function writing to a binary handle, as
    torch.save and np.savez can) to a new temporary file beside it, fsynced, renamed over `out`, the
    folder fsynced. A failure is one line (errors.cannot_write: `what`, default `out`, and `then`); the
    temporary file is removed."""
    out = Path(out)
    temporary = out.with_name(f"{TEMPORARY}{out.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _step(f"create {temporary.name}")
        descriptor = os.open(temporary, FLAGS, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            _step(f"write {temporary.name}")
            if callable(content):
                content(handle)
            else:
                handle.write(content)
            handle.flush()
            _step(f"fsync {temporary.name}")
            os.fsync(handle.fileno())
        _step(f"rename {temporary.name} to {out.name}")
        os.replace(temporary, out)
        sync_folder(out.parent)
    except BaseException as error:
        with suppress(OSError):
            temporary.unlink()
        cause = _os_error(error)
        if cause is None and not (isinstance(error, RuntimeError) and "write" in str(error).lower()):
            raise  # Ctrl-C, or not the disk: as it came
        raise cannot_write(what or str(out), cause.strerror if cause is not None and cause.strerror else error,
                           then) from None
    return out


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind `error` (torch.save reports a full disk as a RuntimeError raised while handling
    one), or None."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def real_folder(folder: str | Path) -> Path:
    """`folder` as a folder of its own inside its parent: a symlink there (from an unpacked tarball) is
    removed first, so what featcache writes into it stays where the user put the run."""
    folder = Path(folder)
    if folder.is_symlink():
        remove(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove(path: str | Path) -> None:
    """Unlink `path` if it is there (a symlink itself, never its target), then fsync its folder."""
    path = Path(path)
    if not path.is_symlink() and not path.exists():
        return
    _step(f"remove {path.name}")
    path.unlink(missing_ok=True)
    sync_folder(path.parent)


def sync_folder(folder: str | Path) -> None:
    """fsync a folder, so that the names renamed or removed in it survive a crash (where the platform
    allows opening a folder: not Windows)."""
    _step(f"fsync folder {Path(folder).name}")
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # a file system that cannot sync a folder: the rename itself is still atomic
        pass
    finally:
        os.close(descriptor)


def new_file(path: str | Path) -> tuple[int, int]:
    """Create `path` empty, exclusively and without following a link, for a writer that opens files by
    name (h5py); returns its (device, inode) for `same_file` to compare once that writer has it open."""
    descriptor = os.open(path, FLAGS, 0o666)
    try:
        info = os.fstat(descriptor)
        return info.st_dev, info.st_ino
    finally:
        os.close(descriptor)


def same_file(descriptor: int, identity: tuple[int, int]) -> bool:
    """Whether an open descriptor is the file `new_file` created (not a link swapped in since)."""
    info = os.fstat(descriptor)
    return (info.st_dev, info.st_ino) == identity

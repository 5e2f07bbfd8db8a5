"""An flock held on a file beside what a process writes: a run folder's claim (evaluate/claims.py) and
one extraction per cache key (cache/writer.py). The kernel drops the lock when the process ends, even
killed, so a dead holder never leaves a stale lock. The file is opened without following a link and
removed by its holder on release; a process that locked a file its predecessor had just removed tries
again on the new one. Where the file system has no flock (Windows, Lustre without -o flock) nothing is
held and the callers go on as they did before locks existed. No torch here.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import FeatcacheError


class Busy(Exception):
    """Another process holds the lock."""


def try_hold(path: Path):
    """An open file on `path`, flocked by this process; None where flock is not available. Busy if
    another process holds it; a link planted at `path` is a FeatcacheError; a folder that cannot be
    written raises its OSError."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    while True:
        try:  # O_NONBLOCK: a FIFO planted at the name would otherwise block the open forever
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK
                                 | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO):  # a link; a FIFO nobody reads
                raise FeatcacheError(f"cannot lock {path}: not a regular file (featcache never follows a link)") from None
            raise  # the caller's folder: read-only, missing, full
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise FeatcacheError(f"cannot lock {path}: not a regular file")
        holder = os.fdopen(descriptor, "a")
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder.close()
            raise Busy(str(path)) from None
        except OSError as error:  # ENOSYS, ENOLCK, EOPNOTSUPP: a file system without flock
            holder.close()
            Path(path).unlink(missing_ok=True)  # nothing is held there: leave no file behind
            if error.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                return None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(holder.fileno()).st_ino:
                return holder
        except FileNotFoundError:  # the previous holder removed the file between our open and flock
            pass
        holder.close()


def release(holder, path: Path) -> None:
    """Remove the lock file, then drop the lock (in this order: a waiter then locks a fresh file)."""
    if holder is not None:
        Path(path).unlink(missing_ok=True)
        holder.close()

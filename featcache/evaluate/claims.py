"""Holding a run directory while a run is written: refused in one line, before any training time is
spent, when it already holds a run or another process holds it."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..errors import FeatcacheError
from ..locks import Busy, release, try_hold
from .runs import default_run_dir, refuse_a_finished_run


@contextmanager
def claimed(out: Path | None, approach: str, overwrite: bool = False, lock: bool = True):
    """The run directory a run will be written to (default runs/<approach>-<time>), held by this process
    for the block: refused in one line, before any training time is spent, if it already holds a run
    (unless `overwrite`) or another process holds it. Two runs given the same `out` can otherwise both
    write, leaving one's history.json beside the other's weights.pt.

    The hold is an flock on a file inside the folder: the kernel drops it when the process ends, even
    killed, so a killed run never leaves a stale claim. Where the file system has no flock (Windows,
    Lustre without -o flock) the folder is only checked, as before there was a hold. `lock=False` only
    checks (torchrun's ranks other than 0, which do not write). Writing the run inside the block only
    writes (Run.save). Folders the claim created are removed again if they stay empty, so a refused or
    failed run leaves nothing."""
    out = Path(out) if out is not None else default_run_dir(approach)
    if not lock:
        refuse_a_finished_run(out, overwrite)
        yield out
        return
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    holder = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        holder = _hold(out)
        refuse_a_finished_run(out, overwrite)  # checked while held: no run can be written in between
        yield out
    finally:
        release(holder, out / CLAIM)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except FileNotFoundError:  # never made (mkdir failed)
                continue
            except OSError:  # not empty: the run was written
                break


def claimed_by_rank(out: Path | None, approach: str, overwrite: bool = False):
    """`claimed` for a run of every torchrun rank: rank 0 holds `out`, the others only check it;
    nothing without `out` (a run kept in memory)."""
    from ..ranks import is_main_process

    return claimed(out, approach, overwrite, lock=is_main_process()) if out is not None else nullcontext()


def saved_by_rank(result, folder: Path | None):
    """A Run or SeedRuns written to the folder `claimed_by_rank` holds (checked before training, so
    no time is lost); under torchrun rank 0 alone writes."""
    from ..ranks import is_main_process

    if folder is not None and is_main_process():
        result.save(folder, overwrite=True)
    return result


CLAIM = ".featcache-claim"


def _hold(out: Path):
    """An open, flocked CLAIM file in `out` (None where flock is not available), or a FeatcacheError if
    another process holds it."""
    try:
        return try_hold(out / CLAIM)
    except OSError as error:
        raise FeatcacheError(f"cannot write to {out}: {error.strerror or error}") from None
    except Busy:
        raise FeatcacheError(f"{out} is being written by another featcache process; choose another `out`, "
                             "or wait until it is done") from None


def claim_run_dir(out: str | Path | None, approach: str, overwrite: bool = False) -> Path:
    """The run directory a run will be written to (default runs/<approach>-<time>), refused if it
    already holds a run and `overwrite` is not set, or if another process is writing to it; checked, not
    held (to hold it while writing, `with claimed(...)`, as every training function does from before
    training until the run is written)."""
    with claimed(out, approach, overwrite) as folder:
        return folder

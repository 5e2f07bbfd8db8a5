"""The errors featcache reports to its users: the bottom floor, imported by every module above."""

import sys


class FeatcacheError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ReportedElsewhere(FeatcacheError):
    """An error that rank 0 of a multi-process run reports; the other ranks exit 1 without repeating it."""


def cannot_write(what: str, error: BaseException | str, then: str) -> FeatcacheError:
    """The one line for a write that failed (a full disk, permissions): what, why, and what the user
    can do; torch.save reports a full disk as a long RuntimeError, hence the squeeze to 200 characters."""
    return FeatcacheError(f"cannot write {what}: {' '.join(str(error).split())[:200]}; {then}")


def warn(message: str) -> None:
    """One line on stderr that says something was recovered from, the command going on."""
    print(f"warning: {message}", file=sys.stderr, flush=True)

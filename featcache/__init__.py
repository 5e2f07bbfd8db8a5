"""featcache: cache frozen-backbone features once, train transfer-learning heads in seconds."""

__version__ = "0.1.0"


class FeatcacheError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ReportedElsewhere(FeatcacheError):
    """An error that rank 0 of a multi-process run reports; the other ranks exit 1 without repeating it."""

"""The errors featcache reports to its users: the bottom floor, imported by every module above."""


class FeatcacheError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ReportedElsewhere(FeatcacheError):
    """An error that rank 0 of a multi-process run reports; the other ranks exit 1 without repeating it."""

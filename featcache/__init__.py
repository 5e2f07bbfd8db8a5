"""featcache: cache frozen-backbone features once, train transfer-learning heads in seconds."""

__version__ = "0.1.0"


class FeatcacheError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ReportedElsewhere(FeatcacheError):
    """An error that rank 0 of a multi-process run reports; the other ranks exit 1 without repeating it."""


# The Python API (featcache.api); defined after the errors it raises. Light to import: torch and the
# rest load when a function needs them.
from .api import (CacheSpec, DataSpec, Run, compare, experiment, extract, finetune, load_images,  # noqa: E402
                  open_cache, read_run, scratch, train_head, verify)

__all__ = ["CacheSpec", "DataSpec", "FeatcacheError", "Run", "compare", "experiment", "extract", "finetune",
           "load_images", "open_cache", "read_run", "scratch", "train_head", "verify"]

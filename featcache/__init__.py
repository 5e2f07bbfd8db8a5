"""featcache: cache frozen-backbone features once, train transfer-learning heads in seconds."""

from ._version import __version__

# The Python API (featcache.api). Light to import: torch and the rest load when a function needs them.
from .errors import FeatcacheError, ReportedElsewhere
from .api import (CacheSpec, DataSpec, Run, compare, experiment, extract, finetune, load_images,
                  open_cache, read_run, scratch, train_head, verify)

__all__ = ["__version__", "CacheSpec", "DataSpec", "FeatcacheError", "ReportedElsewhere", "Run", "compare", "experiment", "extract",
           "finetune", "load_images", "open_cache", "read_run", "scratch", "train_head", "verify"]

"""featcache: cache frozen-backbone features once, train transfer-learning heads in seconds."""

from ._version import __version__

# The Python API (featcache.api). Light to import: torch and the rest load when a function needs them.
from .errors import FeatcacheError, ReportedElsewhere
from .api import (SUMMARY_COLUMNS, CacheSpec, DataSpec, Run, bench, claim_run_dir, compare, default_run_dir,
                  experiment, export, extract, finetune, inspect, load_images, load_model, markdown_table,
                  open_cache, predict, read_run, scratch, summary_line, train_head, verify, SeedRuns,
                  train_head_seeds, finetune_seeds, scratch_seeds, seeds_line, fewshot)

__all__ = ["__version__", "FeatcacheError", "ReportedElsewhere", "SUMMARY_COLUMNS", "CacheSpec", "DataSpec", "Run",
           "bench", "claim_run_dir", "compare", "default_run_dir", "experiment", "export", "extract", "finetune",
           "inspect", "load_images", "load_model", "markdown_table", "open_cache", "predict", "read_run", "scratch",
           "summary_line", "train_head", "verify", "SeedRuns", "train_head_seeds", "finetune_seeds", "scratch_seeds",
           "seeds_line", "fewshot"]

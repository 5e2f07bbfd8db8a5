"""featcache: cache frozen-backbone features once, train transfer-learning heads in seconds."""

from ._version import __version__

# The Python API (featcache.api). Light to import: torch and the rest load when a function needs them.
from .errors import FeatcacheError, ReportedElsewhere
from .api import (SUMMARY_COLUMNS, BackbonesConfig, CacheSpec, DataSpec, ExperimentConfig, ExtractConfig, FinetuneConfig, HeadConfig,
                  Run, ScratchConfig, SeedRuns, UnknownSetting, backbones, bench, claim_run_dir, compare, default_run_dir,
                  experiment, export, extract, fewshot, finetune, finetune_seeds, inspect, load_images, load_model,
                  markdown_table, open_cache, predict, read_run, scratch, scratch_seeds, seeds_line, summary_line,
                  train_head, train_head_seeds, verify)

__all__ = ["__version__", "FeatcacheError", "ReportedElsewhere", "UnknownSetting", "SUMMARY_COLUMNS", "CacheSpec",
           "DataSpec", "ExtractConfig", "HeadConfig", "FinetuneConfig", "ScratchConfig", "ExperimentConfig",
           "BackbonesConfig", "Run", "SeedRuns", "backbones", "bench", "claim_run_dir", "compare", "default_run_dir", "experiment", "export", "extract",
           "fewshot", "finetune", "finetune_seeds", "inspect", "load_images", "load_model", "markdown_table",
           "open_cache", "predict", "read_run", "scratch", "scratch_seeds", "seeds_line", "summary_line", "train_head",
           "train_head_seeds", "verify"]

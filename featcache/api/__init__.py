"""featcache's Python API: what a notebook imports, and what each command of the CLI calls.

    import featcache
    spec = featcache.CacheSpec(featcache.DataSpec("../shared/data/cifar10-catdoghorse"),
                               weights="../shared/weights/resnet18-cifar10src-64px.pth", image_size=64, views=15)
    cache = featcache.open_cache(featcache.extract(spec).path)
    head = featcache.train_head(cache, out="runs/fe")        # head.model is an nn.Linear(D, C): D=512 for ResNet-18

One place for each verb: for each command one config (a validated dataclass: ExtractConfig, HeadConfig,
FinetuneConfig, ScratchConfig, ExperimentConfig, BackbonesConfig, FewshotConfig, ExportConfig,
PredictConfig, InspectConfig, BenchConfig) and one function, which takes the config or its fields as
keyword arguments; a module per family of commands (caching, heads, end_to_end, comparisons,
deployment, inspection). The CLI parses options into these and calls them. Arguments are named like the
CLI's options (per_class is --per-class); errors name them in backquotes (`per_class`), and the CLI
prints its option names there instead. torch, torchvision, scikit-learn and matplotlib are imported by
the functions that use them: `import featcache` stays light, and finding an existing cache needs no torch.
"""
from .._version import __version__
from ..cache.key import CacheSpec, ExtractConfig, ExtractResult
from ..data.datasets import DataSpec
from ..data.transform import MIN_IMAGE_SIZE
from ..deploy.config import ExportConfig, PredictConfig
from ..errors import FeatcacheError, ReportedElsewhere
from ..evaluate.claims import claim_run_dir, claimed
from ..evaluate.config import AuditConfig, BenchConfig, FewshotConfig, InspectConfig
from ..evaluate.runs import Run, SeedRuns, default_run_dir, read_run, seeds_line, summary_line
from ..csvfiles import read_csv
from ..evaluate.tables import SUMMARY_COLUMNS, UNCERTAINTY_COLUMNS, markdown_table
from ..ranks import is_main_process
from ..settings import ConfigError, UnknownSetting
from ..train.config import BackbonesConfig, EpochConfig, ExperimentConfig, FinetuneConfig, HeadConfig, ScratchConfig
from .caching import extract, open_cache, verify
from .comparisons import backbones, compare, experiment
from .deployment import export, load_model, predict
from .end_to_end import finetune, finetune_seeds, load_images, scratch, scratch_seeds
from .heads import fewshot, train_head, train_head_seeds
from .inspection import audit, bench, inspect

__all__ = ["__version__", "FeatcacheError", "ReportedElsewhere", "UnknownSetting", "ConfigError", "DataSpec", "CacheSpec",
           "ExtractConfig", "ExtractResult", "HeadConfig", "EpochConfig", "FinetuneConfig", "ScratchConfig",
           "ExperimentConfig", "BackbonesConfig", "FewshotConfig", "ExportConfig", "PredictConfig", "InspectConfig",
           "BenchConfig", "Run", "SeedRuns", "extract", "open_cache", "verify", "train_head", "train_head_seeds",
           "fewshot", "load_images", "finetune", "finetune_seeds", "scratch", "scratch_seeds", "compare", "experiment",
           "backbones", "export", "load_model", "predict", "inspect", "audit", "AuditConfig", "bench", "read_run", "claim_run_dir", "claimed",
           "default_run_dir", "is_main_process", "summary_line", "seeds_line", "markdown_table", "read_csv", "SUMMARY_COLUMNS",
           "UNCERTAINTY_COLUMNS", "MIN_IMAGE_SIZE"]

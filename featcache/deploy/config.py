"""What exporting a run and predicting with a model take, as validated configs (featcache.api.export and
predict); each field's type and constraint written once (featcache.settings.setting). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from ..cache.key import ExtractConfig
from ..settings import check_fields, like, setting

FORMATS = ("csv", "json")


@dataclass(frozen=True)
class ExportConfig:
    """A run written as one torch.export file (featcache.api.export)."""

    weights: str | None = setting(None, "Feature extraction only: the backbone weights file, if it is no longer where "
                                  "the cache recorded it. Its sha256 must be the one the cache recorded.")

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class PredictConfig:
    """Image files classified by an exported model or a run directory (featcache.api.predict)."""

    output_format: str = setting("csv", "csv: path, class_k and probability_k for k = 1..--top-k, error; json: "
                                 "{classes, model, predictions: [{path, top: [{class, probability}], error}]}.",
                                 option="--format", choices=FORMATS)
    top_k: int | None = setting(None, "Classes listed per image, most probable first; at most the model's number of "
                                "classes. Default: 3, or all of a model's classes when it has fewer.", minimum=1)
    batch_size: int = setting(64, "Images per forward pass (images of any sizes are batched together).", minimum=1)
    device: str = like(ExtractConfig, "device")
    num_workers: int = like(ExtractConfig, "num_workers")
    skip_bad: bool = setting(False, "Report a file that is not a readable image, list it with its error, and go on "
                             "(default: stop with an error naming it, writing nothing).")
    weights: str | None = like(ExportConfig, "weights", "When MODEL is a feature-extraction run directory: its "
                               "backbone weights file, as for featcache export.")

    def __post_init__(self):
        check_fields(self)

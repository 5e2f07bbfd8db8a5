"""Using a trained model: export (a run as one torch.export file that PyTorch alone loads), load_model
and predict (image files classified by an exported model or a run directory)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..deploy.config import ExportConfig, PredictConfig
from ..settings import as_paths, built, require

Log = Callable[[str], None]


def export(run_dir: str | Path, out: str | Path, config: ExportConfig | None = None, **settings) -> dict:
    """Write `out`: a run (any approach) as one torch.export file that PyTorch alone loads: uint8 images
    [N, 3, H, W] in, class probabilities out, the clean-view preprocessing inside, class names and
    provenance in its featcache.json. A feature-extraction run's backbone is read from the weights its
    cache recorded (or `weights`, ExportConfig's field), refused if their sha256 is not the recorded one.
    Returns the metadata."""
    from ..deploy.export import export_run

    config = built(ExportConfig, config, settings, "export")
    require("run_dir", run_dir, (str, Path), "a run directory's path")
    require("out", out, (str, Path), "a file's path")
    return export_run(Path(run_dir), Path(out), config.weights)


def load_model(model: str | Path, *, weights: str | None = None, device: str = "cpu"):
    """(model, metadata) of an exported file or a run directory: model(uint8 images [N, 3, H, W]) gives
    class probabilities in the order of metadata['classes']."""
    from ..deploy.predict import load_classifier
    from ..ranks import resolve_device

    require("model", model, (str, Path), "an exported file's or a run directory's path")
    return load_classifier(model, resolve_device(device), weights)


def predict(model: str | Path, inputs, out: str | Path, config: PredictConfig | None = None, *,
            progress: bool = True, echo: Log | None = None, **settings) -> dict:
    """Classify image files and folders (`inputs`, a list of paths; folders searched recursively) with an
    exported model or a run directory; write each file's top-k classes and probabilities to `out` as CSV
    or JSON, in input order. `config` or PredictConfig's fields (output_format, top_k, batch_size, device,
    num_workers, skip_bad, weights). Returns the rows, the counts and images/s."""
    from ..deploy.predict import classify_files

    config = built(PredictConfig, config, settings, "predict")
    require("model", model, (str, Path), "an exported file's or a run directory's path")
    require("out", out, (str, Path), "a file's path")
    return classify_files(model, as_paths("inputs", inputs), out, config, progress=progress, echo=echo)

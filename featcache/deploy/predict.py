"""featcache predict: classify image files with an exported model or a run directory, in input order.

Images of mixed sizes are batched without changing a pixel: each is resized as the model's clean view
resizes it and cropped to one of at most three shapes the model maps to the same clean view
(clean_view.batchable); images then wait in one queue per shape until a batch is full.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F
from tqdm import tqdm

from ..data.datasets import read_image
from ..data.layouts import IMAGE_EXTENSIONS
from ..errors import FeatcacheError
from ..data.clean_view import batchable
from .config import PredictConfig



def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given and folders' images (recursively, sorted), in the order of `inputs`."""
    if not inputs:
        raise FeatcacheError("no `inputs`: name image files or folders to classify")
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(path for path in item.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FeatcacheError(f"folder {item} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FeatcacheError(f"input {item} does not exist")
    return files


class Prepared(torch.utils.data.Dataset):
    """(index, uint8 image ready to batch) for each file, or (index, error message): returned, not
    raised, so that a DataLoader worker does not wrap it in a traceback."""

    def __init__(self, files: list[Path], image_size: int):
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            pixels = F.pil_to_tensor(read_image(self.files[index]))
        except FeatcacheError as error:
            return index, str(error)
        return index, batchable(pixels, self.image_size)


def load_classifier(model: str | Path, device: torch.device, weights: str | None = None):
    """(callable on uint8 batches, metadata) for an exported file or a run directory."""
    from .export import load_exported, run_model

    if Path(model).is_dir():
        classifier, metadata = run_model(model, weights)
        return classifier.to(device), metadata
    if weights is not None:
        raise FeatcacheError("`weights` applies to a run directory; an exported model already holds its backbone")
    return load_exported(model, device)


def classify_files(model: str | Path, inputs: list[str | Path], out: str | Path, config: PredictConfig, *,
                   progress: bool = True, echo=None) -> dict:
    """Classify `inputs` with `model` and write the top-k classes of each to `out` (CSV or JSON), in
    input order. A file that is not a readable image is an error naming it; with `skip_bad` it is
    reported through `echo`, listed with its error, and the run goes on."""
    from ..ranks import resolve_device

    output_format, top_k, batch_size, num_workers, skip_bad = (config.output_format, config.top_k, config.batch_size,
                                                               config.num_workers, config.skip_bad)
    files = collect_inputs(inputs)
    device = resolve_device(config.device)
    classify, metadata = load_classifier(model, device, config.weights)
    classes = metadata["classes"]
    top_k = min(3, len(classes)) if top_k is None else top_k
    if not 1 <= top_k <= len(classes):
        raise FeatcacheError(f"`top_k` must be between 1 and {len(classes)} (the model's classes), got {top_k}")
    probabilities: list[torch.Tensor | None] = [None] * len(files)
    errors: list[str | None] = [None] * len(files)
    queues: dict[tuple, list] = {}
    forward_passes = 0
    started = time.perf_counter()

    def run(queue):
        nonlocal forward_passes
        forward_passes += 1
        indices, images = zip(*queue)
        batch = torch.stack(images).to(device, non_blocking=True)
        with torch.inference_mode():
            result = classify(batch).float().cpu()
        for index, row in zip(indices, result):
            probabilities[index] = row
        queue.clear()

    loader = torch.utils.data.DataLoader(Prepared(files, metadata["image_size"]), batch_size=None,
                                         num_workers=num_workers)
    with tqdm(total=len(files), unit="img", desc="predict", disable=not progress, dynamic_ncols=True, delay=1) as bar:
        for index, image in loader:
            if isinstance(image, str):
                if not skip_bad:
                    raise FeatcacheError(f"{image}; pass `skip_bad` to list it and go on")
                errors[index] = image
                if echo is not None:
                    bar.clear()
                    echo(f"skipped: {image}")
                bar.update(1)
                continue
            queue = queues.setdefault(tuple(image.shape), [])
            queue.append((index, image))
            if len(queue) == batch_size:
                bar.update(len(queue))
                run(queue)
        for queue in queues.values():
            if queue:
                bar.update(len(queue))
                run(queue)
    seconds = time.perf_counter() - started
    rows = [_row(path, probs, error, classes, top_k) for path, probs, error in zip(files, probabilities, errors)]
    out = _write(Path(out), rows, output_format, top_k, metadata)
    classified = sum(error is None for error in errors)
    return {"path": out, "images": classified, "unreadable": len(files) - classified, "forward_passes": forward_passes,
            "folder_accuracy": folder_accuracy(rows, classes), "seconds": seconds,
            "images_per_second": classified / seconds if seconds else 0.0, "rows": rows, "classes": classes}


def folder_accuracy(rows: list[dict], classes: list[str]) -> float | None:
    """Top-1 accuracy against the folder each image is in, when every classified image's folder is
    named after a class (a test/<class>/* layout); None otherwise."""
    classified = [row for row in rows if row["error"] is None]
    if not classified or any(Path(row["path"]).parent.name not in classes for row in classified):
        return None
    return sum(row["top"][0]["class"] == Path(row["path"]).parent.name for row in classified) / len(classified)


def _row(path: Path, probabilities: torch.Tensor | None, error: str | None, classes: list[str], top_k: int) -> dict:
    if probabilities is None:
        return {"path": str(path), "top": [], "error": error}
    values, indices = probabilities.topk(top_k)
    return {"path": str(path), "top": [{"class": classes[i], "probability": float(p)}
                                       for p, i in zip(values.tolist(), indices.tolist())], "error": None}


def _write(out: Path, rows: list[dict], output_format: str, top_k: int, metadata: dict) -> Path:
    """The whole file at a temporary name, then renamed: an interrupted run leaves no half-written output."""
    from ..files import write_file
    from ..csvfiles import csv_text

    if output_format == "json":
        text = json.dumps({"classes": metadata["classes"], "model": {k: metadata.get(k) for k in (
            "approach", "image_size", "featcache_version", "run_dir")}, "predictions": rows}, indent=1) + "\n"
    else:
        columns = ["path", *(f"{field}_{k}" for k in range(1, top_k + 1) for field in ("class", "probability")),
                   "error"]
        text = csv_text(columns, ({"path": row["path"], "error": row["error"] or "",
                                   **{f"class_{k}": entry["class"] for k, entry in enumerate(row["top"], 1)},
                                   **{f"probability_{k}": f"{entry['probability']:.6f}"
                                      for k, entry in enumerate(row["top"], 1)}} for row in rows))
    return write_file(out, text.encode())

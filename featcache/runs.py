"""Run directories: history.json plus weights, one format for every approach.

`compare` reads only these, so runs made on different days or machines compare cleanly.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from ._version import __version__
from .errors import FeatcacheError

HISTORY = "history.json"
WEIGHTS = "weights.pt"
APPROACHES = ("scratch", "feature-extraction", "fine-tuning")
HISTORY_KEYS = ("train_loss", "train_acc", "test_acc")


def default_run_dir(approach: str) -> Path:
    return Path("runs") / f"{approach}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(out: Path | None, approach: str, overwrite: bool = False) -> Path:
    """The folder a run will write to (created when the run is written); refuses to replace an
    earlier run unless asked, before any training time is spent."""
    out = Path(out) if out is not None else default_run_dir(approach)
    if (out / HISTORY).exists() and not overwrite:
        raise FeatcacheError(f"{out} already holds a run; choose another `out` or pass `overwrite`")
    return out


def device_description(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_run(out: Path, approach: str, history: dict, config: dict, state_dict: dict, wall_time_s: float,
              device, trainable_params: int, total_params: int, **extra) -> Path:
    import torch  # here, not at the top: finding a run directory needs no torch

    record = {
        "approach": approach,
        **{key: [float(v) for v in history[key]] for key in HISTORY_KEYS},
        "epochs": len(history["train_loss"]),
        "wall_time_s": wall_time_s,
        "device": device_description(torch.device(device)),
        "trainable_params": trainable_params,
        "total_params": total_params,
        "config": config,
        "featcache_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, out / WEIGHTS)
    (out / HISTORY).write_text(json.dumps(record, indent=2) + "\n")
    return out


def read_run(folder: Path) -> dict:
    """A run's history; a folder that is not a run directory is a FeatcacheError naming it."""
    path = Path(folder) / HISTORY
    if not path.is_file():
        raise FeatcacheError(f"{folder} is not a featcache run directory (no {HISTORY})")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FeatcacheError(f"{path} is not valid JSON: {error}") from None
    missing = [key for key in ("approach", *HISTORY_KEYS) if key not in record]
    if missing:
        raise FeatcacheError(f"{path} lacks {', '.join(missing)}: not a featcache run history")
    record["run_dir"] = str(folder)
    return record

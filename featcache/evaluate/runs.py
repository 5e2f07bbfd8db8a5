"""Run directories: history.json, weights.pt and predictions.npz, one format for every approach.

`compare` reads only these, so runs made on different days or machines compare cleanly.
predictions.npz holds the last epoch's test predictions: ids [M] (the test images' dataset ids: paths
relative to an image folder, split/index for CIFAR-10), labels [M] and probabilities [M, C] (float32),
loadable with numpy alone.
"""
from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

from .._version import __version__
from ..errors import FeatcacheError

HISTORY = "history.json"
WEIGHTS = "weights.pt"
PREDICTIONS = "predictions.npz"
SEEDS = "seeds.json"
APPROACHES = ("scratch", "feature-extraction", "fine-tuning")
HISTORY_KEYS = ("train_loss", "train_acc", "test_acc")


def default_run_dir(approach: str) -> Path:
    return Path("runs") / f"{approach}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextmanager
def claimed(out: Path | None, approach: str, overwrite: bool = False, lock: bool = True):
    """The run directory a run will be written to (default runs/<approach>-<time>), held by this process
    for the block: refused in one line, before any training time is spent, if it already holds a run
    (unless `overwrite`) or another process holds it. Two runs given the same `out` can otherwise both
    write, leaving one's history.json beside the other's weights.pt.

    The hold is an flock on a file inside the folder: the kernel drops it when the process ends, even
    killed, so a killed run never leaves a stale claim. Holding a folder this process already holds
    (a run saved inside its experiment's claim) is allowed; `lock=False` only checks (torchrun's ranks
    other than 0, which do not write). A folder the claim created is removed again if it stays empty."""
    out = Path(out) if out is not None else default_run_dir(approach)
    if not lock or out.resolve() in _HELD:
        _refuse_a_finished_run(out, overwrite)
        yield out
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    holder = _hold(out)
    _HELD.add(out.resolve())
    try:
        _refuse_a_finished_run(out, overwrite)  # checked while held: no run can be written in between
        yield out
    finally:
        _HELD.discard(out.resolve())
        (out / CLAIM).unlink(missing_ok=True)
        holder.close()
        if created and not any(out.iterdir()):
            out.rmdir()


CLAIM = ".featcache-claim"
_HELD: set[Path] = set()  # the folders this process holds


def _hold(out: Path):
    """An open, flocked CLAIM file in `out`, or a FeatcacheError if another process holds it."""
    import fcntl

    while True:
        holder = open(out / CLAIM, "a")
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder.close()
            raise FeatcacheError(f"{out} is being written by another featcache process; choose another `out`, "
                                 "or wait until it is done") from None
        try:
            if os.stat(out / CLAIM).st_ino == os.fstat(holder.fileno()).st_ino:
                return holder
        except FileNotFoundError:  # the previous holder removed the file between our open and flock
            pass
        holder.close()


def _refuse_a_finished_run(out: Path, overwrite: bool) -> None:
    if ((out / HISTORY).exists() or (out / SEEDS).exists()) and not overwrite:
        raise FeatcacheError(f"{out} already holds a run; choose another `out` or pass `overwrite`")


def clear_run_files(out: Path) -> None:
    """Remove what says `out` holds a run (a single run's files, a folder of seeds' seeds.json), so an
    overwritten folder never passes for a finished one while its new run is being written."""
    for name in (HISTORY, WEIGHTS, PREDICTIONS, SEEDS):
        (Path(out) / name).unlink(missing_ok=True)


def device_description(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_run(out: Path, approach: str, history: dict, config: dict, state_dict: dict, wall_time_s: float,
              device, trainable_params: int, total_params: int, predictions: dict | None = None, **extra) -> Path:
    """history.json, weights.pt and, given test `predictions` (ids, labels, probabilities), predictions.npz."""
    import numpy as np
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
    (out / SEEDS).unlink(missing_ok=True)  # an overwritten folder of seeds is now this single run
    torch.save(state_dict, out / WEIGHTS)
    if predictions is not None:
        np.savez(out / PREDICTIONS, ids=np.asarray(predictions["ids"], dtype=str),
                 labels=np.asarray(predictions["labels"], dtype=np.int64),
                 probabilities=np.asarray(predictions["probabilities"], dtype=np.float32))
    partial = out / f"{HISTORY}.partial"  # written last and renamed: a history.json is a whole run
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, out / HISTORY)
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


def read_predictions(folder: Path) -> dict | None:
    """A run's stored test predictions (ids, labels, probabilities, predicted), or None for a run
    written before featcache stored them."""
    import numpy as np

    path = Path(folder) / PREDICTIONS
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            predictions = {key: stored[key] for key in ("ids", "labels", "probabilities")}
    except (OSError, ValueError, KeyError) as error:
        raise FeatcacheError(f"{path} is not a featcache predictions file: {error}") from None
    return {**predictions, "predicted": predictions["probabilities"].argmax(1)}


def write_seeds(out: Path, approach: str, seeds: list[int], final_test_accs: list[float], summary: dict,
                seconds: float | None) -> Path:
    """seeds.json of a folder of seed-<k>/ run directories: which seeds, their final accuracies, the summary."""
    out.mkdir(parents=True, exist_ok=True)
    for single in (HISTORY, WEIGHTS, PREDICTIONS):  # an overwritten single run is now this folder of seeds
        (out / single).unlink(missing_ok=True)
    record = {"approach": approach, "seeds": seeds, "final_test_acc": final_test_accs, "summary": summary,
              "seconds": seconds, "featcache_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (out / SEEDS).write_text(json.dumps(record, indent=2) + "\n")
    return out / SEEDS


def read_seeds(folder: Path) -> dict:
    path = Path(folder) / SEEDS
    if not path.is_file():
        raise FeatcacheError(f"{folder} is not a folder of seeds (no {SEEDS})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FeatcacheError(f"{path} is not valid JSON: {error}") from None


def is_seed_folder(folder: Path) -> bool:
    return (Path(folder) / SEEDS).is_file()

"""Run directories: history.json, weights.pt and predictions.npz, one format for every approach.

`compare` reads only these, so runs made on different days or machines compare cleanly.
predictions.npz holds the last epoch's test predictions: ids [M] (the test images' dataset ids: paths
relative to an image folder, split/index for CIFAR-10), labels [M] and probabilities [M, C] (float32),
loadable with numpy alone.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import FeatcacheError
from ..files import real_folder, remove, write_file
from ..npz import check_torch_file
from ..settings import DEFAULT_BACKBONE, MAX_SEEDS

HISTORY = "history.json"
WEIGHTS = "weights.pt"
PREDICTIONS = "predictions.npz"
SEEDS = "seeds.json"
APPROACHES = ("scratch", "feature-extraction", "fine-tuning")
MAX_RECORD_BYTES = 64 << 20  # history.json or seeds.json: kilobytes for 15 epochs, megabytes for thousands
MAX_CLASSES = 100_000  # a run's predictions: ImageNet-21k has 21,841 classes
HISTORY_KEYS = ("train_loss", "train_acc", "test_acc")


def balanced_accuracy(labels, predicted, classes: int) -> float:
    """The mean over classes of each class's recall (sklearn.metrics.balanced_accuracy_score's definition,
    written here to spare a run's writer sklearn's import): classes without test images are left out. Beside
    plain accuracy it shows what an imbalanced test set hides, a small class the model gets wrong."""
    import numpy as np

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    counts = np.bincount(labels, minlength=classes)
    hits = np.bincount(labels[labels == predicted], minlength=classes)
    present = counts > 0
    return float(np.mean(hits[present] / counts[present])) if present.any() else float("nan")


def prediction_record(predictions: dict | None) -> dict:
    """What history.json says of the last epoch's test predictions (probabilities [M, C]): balanced accuracy
    and the test images per class (index = label)."""
    import numpy as np

    if predictions is None:
        return {}
    labels = np.asarray(predictions["labels"], dtype=np.int64)
    probabilities = np.asarray(predictions["probabilities"])
    predicted, classes = probabilities.argmax(1), probabilities.shape[1]
    return {"final_test_balanced_acc": balanced_accuracy(labels, predicted, classes),
            "test_class_counts": np.bincount(labels, minlength=classes).tolist()}


def default_run_dir(approach: str) -> Path:
    return Path("runs") / f"{approach}-{time.strftime('%Y%m%d-%H%M%S')}"


def clear_run_files(out: Path) -> None:
    """Remove what says `out` holds a run (a single run's files, a folder of seeds' seeds.json), so an
    overwritten folder never passes for a finished one while its new run is being written."""
    for name in (HISTORY, SEEDS, WEIGHTS, PREDICTIONS):  # what says "a run" first
        remove(Path(out) / name)


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
        **prediction_record(predictions),
    }
    # An overwritten folder holds the old run whole, then no run (no history.json), then the new run
    # whole: history.json goes first and comes back last, each file written whole (featcache.files).
    remove(out / HISTORY)
    remove(out / SEEDS)  # an overwritten folder of seeds is now this single run
    write_file(out / WEIGHTS, lambda handle: torch.save(state_dict, handle))
    if predictions is not None:
        write_file(out / PREDICTIONS, lambda handle: np.savez(
            handle, ids=np.asarray(predictions["ids"], dtype=str), labels=np.asarray(predictions["labels"], dtype=np.int64),
            probabilities=np.asarray(predictions["probabilities"], dtype=np.float32)))
    else:
        remove(out / PREDICTIONS)  # another run's predictions never stand beside this one
    write_file(out / HISTORY, (json.dumps(record, indent=2) + "\n").encode())
    return out


def read_run(folder: Path) -> dict:
    """A run's history; a folder that is not a run directory is a FeatcacheError naming it."""
    path = Path(folder) / HISTORY
    if not path.is_file():
        raise FeatcacheError(f"{folder} is not a featcache run directory (no {HISTORY})")
    record = read_record(path)
    if not isinstance(record, dict):
        raise FeatcacheError(f"{path} holds a JSON {type(record).__name__}, not a featcache run history (an object)")
    missing = [key for key in ("approach", *HISTORY_KEYS) if key not in record]
    if missing:
        raise FeatcacheError(f"{path} lacks {', '.join(missing)}: not a featcache run history")
    wrong = [key for key in HISTORY_KEYS if not isinstance(record[key], list)
             or not all(type(value) in (int, float) for value in record[key])]
    wrong += [key for key in ("config", "cache_attrs", "knn") if not isinstance(record.get(key, {}), dict)]
    seed = record.get("config", {}).get("seed", 0) if isinstance(record.get("config", {}), dict) else 0
    if type(seed) is not int or seed < 0:  # it names the folder seed-<seed> a folder of seeds saves it to
        wrong.append("config.seed")
    if not isinstance(record["approach"], str) or not record["test_acc"]:
        wrong.append("approach or test_acc")
    if wrong:
        raise FeatcacheError(f"{path} is not a featcache run history: {', '.join(wrong)} of the wrong type")
    record["run_dir"] = str(folder)
    return record


def read_record(path: Path):
    """A run's JSON record (history.json, seeds.json), any file from anyone: bounded in size, UTF-8, and
    anything unreadable one FeatcacheError naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise FeatcacheError(f"{path} is {size:,} bytes, over featcache's bound of {MAX_RECORD_BYTES:,} for a run's record")
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FeatcacheError(f"{path} is not valid JSON: {' '.join(str(error).split())[:200]}") from None
    except RecursionError:
        raise FeatcacheError(f"{path} nests too deeply to be a featcache run record") from None
    except OSError as error:
        raise FeatcacheError(f"cannot read {path}: {error.strerror}") from None


def read_predictions(folder: Path) -> dict | None:
    """A run's stored test predictions (ids, labels, probabilities, predicted), or None for a run
    written before featcache stored them."""
    import numpy as np

    from ..npz import read_npz

    path = Path(folder) / PREDICTIONS
    if not path.is_file():
        return None
    try:
        predictions = read_npz(path, ("ids", "labels", "probabilities"))
        ids, labels, probabilities = predictions.values()
        if not (ids.dtype.kind == "U" and labels.dtype == np.int64 and probabilities.dtype == np.float32
                and ids.ndim == labels.ndim == 1 and probabilities.ndim == 2 and probabilities.shape[1] >= 1
                and len(ids) == len(labels) == len(probabilities)):
            raise ValueError(f"its arrays are {ids.dtype} {ids.shape}, {labels.dtype} {labels.shape} and "
                             f"{probabilities.dtype} {probabilities.shape}, not ids [M], int64 labels [M] and "
                             "float32 probabilities [M, C]")
        if probabilities.shape[1] > MAX_CLASSES:
            raise ValueError(f"its {probabilities.shape[1]:,} classes are over featcache's bound of {MAX_CLASSES:,}")
        if len(labels) and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
            raise ValueError(f"its labels are outside its {probabilities.shape[1]} classes")
    except ValueError as error:
        raise FeatcacheError(f"{path} is not a featcache predictions file: {error}") from None
    return {**predictions, "predicted": predictions["probabilities"].argmax(1)}


def write_seeds(out: Path, approach: str, seeds: list[int], final_test_accs: list[float], summary: dict,
                seconds: float | None) -> Path:
    """seeds.json of a folder of seed-<k>/ run directories: which seeds, their final accuracies, the summary."""
    for single in (HISTORY, WEIGHTS, PREDICTIONS):  # an overwritten single run is now this folder of seeds
        remove(out / single)
    record = {"approach": approach, "seeds": seeds, "final_test_acc": final_test_accs, "summary": summary,
              "seconds": seconds, "featcache_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_file(out / SEEDS, (json.dumps(record, indent=2) + "\n").encode())
    return out / SEEDS


def read_seeds(folder: Path) -> dict:
    path = Path(folder) / SEEDS
    if not path.is_file():
        raise FeatcacheError(f"{folder} is not a folder of seeds (no {SEEDS})")
    record = read_record(path)
    if not (isinstance(record, dict) and isinstance(record.get("seeds"), list)
            and 0 < len(record["seeds"]) <= MAX_SEEDS
            and all(type(seed) is int and seed >= 0 for seed in record["seeds"])
            and len(set(record["seeds"])) == len(record["seeds"]) and isinstance(record.get("approach"), str)):
        raise FeatcacheError(f"{path} is not a featcache seeds record (an object whose `seeds` is a list of 1 to "
                             f"{MAX_SEEDS:,} distinct seeds and `approach` a name)")
    return record


def trained_model(folder: Path, record: dict):
    """The model a run directory's weights.pt holds, rebuilt from what its history.json records: a
    Linear(D, C) head, a kNN head (its training features are its weights) or an end-to-end run's network
    (its config's backbone; ResNet-18 for runs from before --backbone). The one loader of a run's
    weights (Run.load, export, predict); a file that does not fit is one line."""
    import torch
    from torch import nn

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FeatcacheError(f"run directory {folder} has no {WEIGHTS}: the trained weights are missing")
    try:
        check_torch_file(path)
    except ValueError as problem:
        raise FeatcacheError(f"{path} cannot be read safely: {problem}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load's messages run to many lines
        raise FeatcacheError(f"{path} is not a state dict torch.load(weights_only=True) can read "
                             f"({type(error).__name__})") from None
    head = record["approach"] == "feature-extraction"
    rows = state.get("weight") if head and isinstance(state, dict) else None
    classes = len(record["classes"]) if record.get("classes") else len(rows) if rows is not None else 0
    if not head:
        from ..backbone import scratch_network

        backbone = record.get("config", {}).get("backbone", DEFAULT_BACKBONE)
        if not classes:  # a run from before runs recorded their classes: its head's rows say how many
            classes = len(state.get(scratch_network(backbone, 1, 0).head_name + ".weight", [])) \
                if isinstance(state, dict) else 0
        model, what = scratch_network(backbone, classes, 0), f"a {backbone} network with {classes} classes"
    elif "knn" in record:
        from ..train.knn import KNNHead

        try:
            model = KNNHead.from_state(state, record["knn"])
        except FeatcacheError as error:
            raise FeatcacheError(f"{path}: {error}") from None
        what = f"a kNN head of {classes} classes"
    else:
        width = rows.shape[1] if rows is not None and rows.dim() == 2 else 0  # the cache's features
        model, what = nn.Linear(width, classes), f"a Linear({width}, {classes}) head"
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        lines = str(error).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
        raise FeatcacheError(f"{path} does not fit {what}: {detail}") from None
    return model


def is_seed_folder(folder: Path) -> bool:
    return (Path(folder) / SEEDS).is_file()


@dataclass
class Run:
    """A trained model and what a run directory records of it; `save` writes history.json and weights.pt."""

    approach: str
    model: object  # torch.nn.Module: the head alone for feature extraction
    history: dict  # per-epoch train_loss, train_acc, test_acc
    config: dict
    wall_time_s: float
    device: object  # torch.device
    trainable_params: int
    total_params: int
    record: dict = field(default_factory=dict)  # what else history.json holds: classes, cache key, sweep grid...
    path: Path | None = None
    predictions: dict | None = None  # last epoch's test ids, labels, probabilities [M, C] (predictions.npz)

    @property
    def final_test_acc(self) -> float:
        return self.history["test_acc"][-1]

    @property
    def final_test_balanced_acc(self) -> float | None:
        """The mean of per-class recall on the last epoch's test predictions (None without them)."""
        if self.predictions is None:
            return None
        return prediction_record(self.predictions)["final_test_balanced_acc"]

    @classmethod
    def load(cls, folder: str | Path) -> Run:
        """A run directory as a Run, its model rebuilt (trained_model) with the saved weights."""
        record = read_run(Path(folder))
        model = trained_model(Path(folder), record)
        known = {"approach", "config", "wall_time_s", "device", "trainable_params", "total_params", "run_dir",
                 *HISTORY_KEYS}
        return cls(record["approach"], model, {key: record[key] for key in HISTORY_KEYS}, record.get("config", {}),
                   record["wall_time_s"], record["device"], record["trainable_params"], record["total_params"],
                   {key: value for key, value in record.items() if key not in known}, Path(folder),
                   read_predictions(Path(folder)))

    def save(self, out: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write the run to `out` (default runs/<approach>-<time>); a finished run there is refused unless
        `overwrite`. Only writes: holding the folder against other processes is the caller's
        (featcache.claimed, or the training functions' `out`)."""
        out = Path(out) if out is not None else default_run_dir(self.approach)
        refuse_a_finished_run(out, overwrite)
        write_run(out, self.approach, self.history, self.config, self.model.state_dict(), self.wall_time_s,
                  self.device, self.trainable_params, self.total_params, self.predictions, **self.record)
        self.path = out
        return out


@dataclass
class SeedRuns:
    """The same approach trained once per training seed: `runs` in seed order, and their statistics.
    A run directory of several seeds holds seed-<k>/ (each a run directory) and seeds.json."""

    approach: str
    runs: list[Run]
    path: Path | None = None
    seconds: float | None = None  # wall time of all seeds together

    @property
    def seeds(self) -> list[int]:
        return [run.config.get("seed") for run in self.runs]

    @property
    def final_test_accs(self) -> list[float]:
        return [run.final_test_acc for run in self.runs]

    def summary(self) -> dict:
        """Mean, standard deviation and 95% t-interval over seeds of the final test accuracy."""
        from .stats import ACCURACY, t_interval

        return t_interval(self.final_test_accs, bounds=ACCURACY)

    def save(self, out: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write every seed's run to `out`/seed-<k>/, then seeds.json; as Run.save, only writes."""
        out = Path(out) if out is not None else default_run_dir(self.approach)
        refuse_a_finished_run(out, overwrite)
        remove(out / SEEDS)  # the old occupant never passes for this folder while its seeds are written
        for run in self.runs:
            run.save(real_folder(out / f"seed-{run.config.get('seed')}"), overwrite=True)  # never through a link
        write_seeds(out, self.approach, self.seeds, self.final_test_accs, self.summary(), self.seconds)
        self.path = out
        return out

    @classmethod
    def load(cls, folder: str | Path) -> SeedRuns:
        record = read_seeds(Path(folder))
        return cls(record["approach"], [Run.load(Path(folder) / f"seed-{seed}") for seed in record["seeds"]],
                   Path(folder), record.get("seconds"))


def refuse_a_finished_run(out: Path, overwrite: bool) -> None:
    if ((out / HISTORY).exists() or (out / SEEDS).exists()) and not overwrite:
        raise FeatcacheError(f"{out} already holds a run; choose another `out` or pass `overwrite`")


def seeds_line(group: SeedRuns) -> str:
    """The line a training command prints after several seeds: mean, std and the 95% interval."""
    summary = group.summary()
    where = f"; runs written to {group.path}" if group.path else ""
    if summary["n"] < 2:
        return f"{group.approach}: final test accuracy {summary['mean']:.4f} (one seed: no interval){where}"
    return (f"{group.approach}: final test accuracy {summary['mean']:.4f} ± {summary['std']:.4f} (std) over "
            f"{summary['n']} seeds, 95% interval [{summary['low']:.4f}, {summary['high']:.4f}] "
            f"({summary['method']}){where}")


def summary_line(run: Run) -> str:
    """The one line each training command prints when it is done."""
    where = f"; run written to {run.path}" if run.path else ""
    balanced = run.final_test_balanced_acc
    accuracy = f"final test accuracy {run.final_test_acc:.4f}" + (
        f" (balanced {balanced:.4f})" if balanced is not None else "")
    if run.approach == "feature-extraction":
        return f"feature extraction: {accuracy}; head trained in {run.wall_time_s:.2f} s{where}"
    return f"{run.approach}: {accuracy} in {run.wall_time_s:.1f} s{where}"

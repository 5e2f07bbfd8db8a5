"""A run as one file that PyTorch alone loads and runs, and featcache's own model of a run directory.

Only on a file you made yourself: `torch.export.load` runs code from the file it loads (pickled
payloads, shape expressions, guards). featcache's own `predict` and `load_model` never call it on a
file (featcache.deploy.archive rebuilds the network from the file's data instead).

The file is a torch.export program (torch.export.save; TorchScript is deprecated): uint8 RGB images
[N, 3, H, W], any N, H and W, in (featcache.json's "input_bound": what featcache predict decodes); class probabilities [N, C] out. Inside: clean_view.CleanView (the
resize featcache decodes with, the centre crop, ImageNet normalisation), the ResNet-18 with the run's
head, softmax. The extra file featcache.json holds the class names and provenance:

    extra = {"featcache.json": ""}
    model = torch.export.load("model.pt2", extra_files=extra).module()
    probabilities = model(images)                      # uint8 [N, 3, H, W]
    classes = json.loads(extra["featcache.json"])["classes"]
"""
from __future__ import annotations

import io
import json
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..errors import FeatcacheError
from ..data.clean_view import CROP, RESIZE, CleanView
from ..data.datasets import IMAGE_BOUND, MAX_ASPECT, MAX_PIXELS
from ..evaluate.runs import WEIGHTS, is_seed_folder, read_run, read_seeds, trained_model
from ..files import write_file
from ..settings import DEFAULT_BACKBONE
from ..cache.key import BACKBONE, backbone_identity, backbone_name, weights_identity
from ..data.transform import IMAGENET_MEAN, IMAGENET_STD, TRANSFORM_VERSION, resize_size

METADATA = "featcache.json"
EXPORT_FORMAT = "featcache-export"
EXPORT_FORMAT_VERSION = 1
MAX_SIDE = 1 << 16  # an exported program's largest input height and width


class Classifier(nn.Module):
    """uint8 images [N, 3, H, W] to class probabilities [N, C]: the clean view, the network, softmax."""
    def __init__(self, network: nn.Module, image_size: int):
        super().__init__()
        self.clean_view, self.network = CleanView(image_size), network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.clean_view(images)).softmax(1)


def attach_head(network: nn.Module, head: nn.Module) -> nn.Module:
    """A feature-extraction run's network: its trained head where the backbone's classifier was (ResNet's
    fc, as before --backbone), or after the pooled features where timm's heads were reset."""
    from ..backbone import replace_module

    if network.classifier_name is None:
        return nn.Sequential(network, head)
    replace_module(network, network.classifier_name, head)
    return network


def exported_head(path: Path, metadata: dict, state: dict) -> nn.Module:
    """The empty head an exported feature-extraction file's tensors fill: a Linear of their shape, or a kNN
    head with the k and temperature featcache.json records (files from featcache 0.3 record no head:
    linear unless their config names kNN)."""
    from ..train.knn import KNNHead

    head = metadata.get("head")
    if head is None and metadata.get("config", {}).get("head", "linear") in ("linear", "logreg"):
        head = {"kind": "linear"}
    if not isinstance(head, dict) or head.get("kind") not in ("linear", "knn"):
        raise FeatcacheError(f"{path} does not record its head (exported by featcache 0.3 from a kNN run?): "
                             "export the run again")
    if head["kind"] == "knn":
        try:
            return KNNHead.from_state(state, head["knn"])
        except (KeyError, TypeError, IndexError, RuntimeError, FeatcacheError) as error:
            raise FeatcacheError(f"{path}: its kNN head does not fit ({' '.join(str(error).split())[:120]})") from None
    weight = state.get("weight")
    if weight is None or weight.dim() != 2:
        raise FeatcacheError(f"{path}: its head's weight is missing or not a matrix")
    return nn.Linear(weight.shape[1], weight.shape[0])


def _backbone_source(record: dict, weights: str | None, run_dir: Path) -> tuple[str, str, int, str]:
    """(weights to load, recorded identity, seed, torchvision name) of a feature-extraction run's backbone, checked
    against the identity the cache recorded: the head is only right on the backbone it was trained on."""
    attrs = record.get("cache_attrs", {})
    identity, seed = attrs.get("weights"), int(attrs.get("seed", 0))
    if not identity:
        raise FeatcacheError(f"{run_dir} does not record its cache's backbone weights: not a featcache "
                             "feature-extraction run")
    source = weights or attrs.get("weights_source")
    if not source:
        raise FeatcacheError(f"{run_dir} does not record where its backbone weights were read from; pass "
                             "`weights` PATH")
    if source not in ("imagenet", "random") and not Path(source).is_file():
        raise FeatcacheError(f"backbone weights {source} " + ("recorded for this run " if not weights else "")
                             + "do not exist; pass `weights` PATH to the file the cache was extracted with")
    recorded = attrs.get("backbone", BACKBONE)
    name = backbone_name(recorded)
    if name.startswith("timm:") and recorded != backbone_identity(name):  # another timm builds other networks
        raise FeatcacheError(f"the head of {run_dir} was trained on features of {recorded}, but here it is "
                             f"{backbone_identity(name)}: install that timm version")
    found = weights_identity(source, seed, name)
    if found != identity:
        if found.split(":")[0] != identity.split(":")[0]:
            raise FeatcacheError(f"the head of {run_dir} was trained on {identity[:23]}… weights, not {source}; "
                                 "pass `weights` PATH to the file the cache was extracted with")
        if source in ("imagenet", "random"):
            raise FeatcacheError(f"the head of {run_dir} was trained on {identity}, but here {source} weights are "
                                 f"{found}: install those torch/torchvision versions, or pass `weights` PATH to a file")
        raise FeatcacheError(f"backbone weights {source} ({found[:23]}…) are not those the head of {run_dir} was "
                             f"trained on ({identity[:23]}…); pass `weights` PATH to the right file")
    return source, identity, seed, name


def _transform_version(record: dict) -> int | None:
    """The preprocessing a run was trained with: its cache's for a head, its own record otherwise."""
    if record["approach"] == "feature-extraction":
        try:
            transform = json.loads(record.get("cache_attrs", {}).get("transform", "{}"))
        except (json.JSONDecodeError, TypeError, RecursionError):
            return None
        return transform.get("version") if isinstance(transform, dict) else None
    return record.get("transform_version")


def run_model(run_dir: str | Path, weights: str | None = None) -> tuple[Classifier, dict]:
    """featcache's own model of a run directory, in eval mode on the CPU, and the metadata an export of
    it records. For a feature-extraction run the backbone comes from the weights the cache recorded
    (or `weights`), checked against their recorded identity."""
    from ..backbone import load_backbone

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FeatcacheError(f"run directory {run_dir} " + ("is not a folder" if run_dir.exists() else "does not exist"))
    if is_seed_folder(run_dir):
        seeds = read_seeds(run_dir)["seeds"]
        raise FeatcacheError(f"{run_dir} holds runs of {len(seeds)} seeds ({', '.join(map(str, seeds))}): pass the "
                             f"run directory of one, e.g. {run_dir / f'seed-{seeds[0]}'}")
    record = read_run(run_dir)
    classes, approach = record.get("classes"), record["approach"]
    if not classes:
        raise FeatcacheError(f"{run_dir} does not record its class names: not a run this featcache can export")
    if weights is not None and approach != "feature-extraction":
        raise FeatcacheError(f"`weights` is for feature-extraction runs; {run_dir} is a {approach} run, whose "
                             f"{WEIGHTS} holds the whole network")
    trained_with = _transform_version(record)
    if trained_with != TRANSFORM_VERSION:
        raise FeatcacheError(f"{run_dir} was trained on images preprocessed by an older featcache (transform "
                             f"version {trained_with}, not {TRANSFORM_VERSION}); an export would "
                             "resize differently: train it again with this featcache")
    trained = trained_model(run_dir, record)  # the head alone for feature extraction
    provenance = {"approach": approach, "run_dir": str(run_dir.resolve()), "config": record.get("config", {}),
                  "final_test_acc": record["test_acc"][-1], "featcache_version_of_run": record.get("featcache_version")}
    if approach == "feature-extraction":
        source, identity, seed, name = _backbone_source(record, weights, run_dir)
        network = attach_head(load_backbone(source, seed, name), trained)
        image_size = int(record["cache_attrs"]["image_size"])
        provenance.update(backbone=record["cache_attrs"].get("backbone", BACKBONE), cache_key=record.get("cache_key"),
                          cache_precision=record["cache_attrs"].get("precision"),
                          backbone_weights={"source": source, "identity": identity},
                          head={"kind": "knn", "knn": {"k": record["knn"]["k"],
                                                       "temperature": record["knn"].get("temperature")}}
                          if "knn" in record else {"kind": "linear"})
    else:
        network = trained
        image_size = int(record.get("config", {}).get("image_size", 224))
        provenance["backbone"] = backbone_identity(record.get("config", {}).get("backbone", DEFAULT_BACKBONE))
        provenance["backbone_weights"] = {"source": record.get("config", {}).get("weights", "random init"),
                                          "identity": weights_identity(str(run_dir / WEIGHTS), 0)}
    metadata = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "classes": list(classes),
        "image_size": image_size, "input": f"uint8 RGB images [N, 3, H, W], any N; H and W from 2 to {MAX_SIDE:,}; upright: "
                 "a photo's EXIF orientation applied first (PIL.ImageOps.exif_transpose), as featcache decodes "
                 "for training and predict. "
                 f"featcache predict decodes only images within its bound ({IMAGE_BOUND}), checked before "
                 "decoding: peak memory near 1 GB (more at sizes over 224 px: data/datasets.py); check the same "
                 "before calling this model on a stranger's image",
        "input_bound": {"max_pixels": MAX_PIXELS, "max_aspect": MAX_ASPECT},
        "output": "class probabilities [N, C], float32, in the order of `classes`",
        "preprocess": {"resize": RESIZE.replace("round(S*256/224)", str(resize_size(image_size))),
                       "crop": CROP.replace("S x S", f"{image_size} x {image_size}"),
                       "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}},
        **provenance,
        "featcache_version": __version__, "torch_version": version("torch"),
        "torchvision_version": version("torchvision"), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Classifier(network, image_size).eval().requires_grad_(False), metadata


def export_run(run_dir: str | Path, out: str | Path, weights: str | None = None) -> dict:
    """Write `out`: the run's model as a torch.export program with dynamic batch, height and width,
    and featcache.json beside it in the same file. Written to a temporary name, then renamed."""
    classifier, metadata = run_model(run_dir, weights)
    size = classifier.clean_view.image_size
    batch, height, width = (torch.export.Dim(name, min=1 if name == "batch" else 2, max=MAX_SIDE)
                            for name in ("batch", "height", "width"))
    example = torch.zeros(2, 3, size + 3, size + 7, dtype=torch.uint8)  # sizes unlike any constant in the graph
    try:
        with torch.no_grad():
            program = torch.export.export(classifier, (example,), dynamic_shapes=({0: batch, 2: height, 3: width},))
    except Exception as error:  # torch.export's own errors (constraint violations, untraceable code) run to pages
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise FeatcacheError(f"torch.export cannot trace the network of {run_dir} ({metadata['backbone']}) for any "
                             f"batch and image size: {reason}") from None
    buffer = io.BytesIO()  # any file name the user likes: torch.export.save warns on names without .pt2
    torch.export.save(program, buffer, extra_files={METADATA: json.dumps(metadata, indent=2)})
    out = write_file(Path(out), buffer.getbuffer())
    return {**metadata, "path": out}


def load_exported(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """(featcache's network of an exported file on `device`, its featcache.json): rebuilt from the file's
    data and tensors (featcache.deploy.archive), never from its program, which torch.export.load would
    deserialize and run code from."""
    from .archive import read_export, rebuilt_classifier

    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"model {path} " + ("is not a file" if path.exists() else "does not exist"))
    metadata, state = read_export(path)
    if metadata.get("format") != EXPORT_FORMAT:
        raise FeatcacheError(f"{path} is a torch.export program but not one written by featcache export "
                             f"(no {METADATA})")
    return rebuilt_classifier(path, metadata, state).to(device), metadata

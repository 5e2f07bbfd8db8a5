"""Backbones compared side by side on one dataset: one cache per backbone (found or extracted), the
bare forward timed for each in the same run, every cached head trained over the same seeds on each,
then the table, plot and paired verdicts of featcache.evaluate.backbones. What featcache.api.backbones
delegates to."""
from __future__ import annotations

import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from ..cache.key import CacheSpec, ExtractConfig
from ..errors import FeatcacheError
from ..evaluate.claims import claimed, saved_by_rank
from ..evaluate.runs import default_run_dir, seeds_line
from ..train.config import BackbonesConfig, HeadConfig
from . import heads
from .extract import extract

Log = Callable[[str], None]
REPORT = "backbones.json"
TIMED_IMAGES = 256  # images timed per backbone (at least 3 batches), after a warm-up batch


def label_of(spec: CacheSpec) -> str:
    """A backbone's name in tables: its name, and its weights file's name when it has one."""
    if spec.weights in ("imagenet", "random"):
        return spec.backbone if spec.weights == "imagenet" else f"{spec.backbone} (random)"
    return f"{spec.backbone} ({Path(spec.weights).stem})"


def compare_backbones(specs: list[CacheSpec], labels: list | None, config: BackbonesConfig, out=None, *,
                      overwrite: bool = False, echo: Log | None = None, progress: bool = False) -> dict:
    """Each spec's cache, its forward images/s, its heads over config.seeds, into `out`/<label>/<head>/;
    returns featcache.evaluate.backbones.write_report's result with the wall time of the whole. A label
    left None is label_of's."""
    from ..evaluate.backbones import write_report

    echo = echo or (lambda line: None)
    labels = list(labels) if labels is not None else [None] * len(specs)
    if len(labels) != len(specs):
        raise FeatcacheError(f"`labels` names {len(labels)} backbones, not {len(specs)}")
    labels = [label or label_of(spec) for spec, label in zip(specs, labels)]
    _check_comparable(specs, labels)
    out = Path(out) if out is not None else default_run_dir("backbones")
    if (out / REPORT).exists() and not overwrite:
        raise FeatcacheError(f"{out} already holds a comparison of backbones; choose another `out` or pass `overwrite`")
    seeds = config.seed_list
    started = time.perf_counter()
    with ExitStack() as held:  # every head's folder, until the report is written
        held.enter_context(claimed(out, "backbones", overwrite))
        folders = {(label, head): held.enter_context(claimed(out / folder_name(label) / head, "feature-extraction",
                                                             overwrite))
                   for label in labels for head in config.heads}
        entries = []
        for spec, label in zip(specs, labels):
            extracted = extract(spec, ExtractConfig(batch_size=config.extract_batch_size, device=config.device,
                                                    num_workers=config.num_workers), progress=progress)
            echo(f"{label}: {'reused' if extracted.reused else 'wrote'} cache {extracted.path} in "
                 f"{extracted.seconds:.1f} s")
            entry = {"label": label, "backbone": spec.backbone, "weights": spec.weights, "image_size": spec.image_size,
                     "cache": str(extracted.path), "extracted_now": not extracted.reused,
                     "extract_s": extracted.seconds if not extracted.reused else None,
                     "extract_images_per_s": extracted.images_per_second if not extracted.reused else None,
                     "forward_images_per_s": forward_throughput(spec, config), "folders": {}}
            echo(f"{label}: bare forward {entry['forward_images_per_s']:.1f} images/s at {spec.image_size} px")
            entry.update(_trained_heads(extracted.path, label, seeds, config, folders, echo, entry["folders"]))
            entries.append(entry)
        return {**write_report(entries, config.heads, out), "seconds": time.perf_counter() - started}


def _trained_heads(path: Path, label: str, seeds: list[int], config: BackbonesConfig, folders: dict, echo: Log,
                   written: dict) -> dict:
    from ..cache.streaming import open_cache

    cache = open_cache(path, stream="comparing backbones")
    for head in config.heads:
        head_config = HeadConfig(head=head, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr)
        group = saved_by_rank(heads.train_head_seeds(cache, seeds, head_config), folders[label, head])
        written[head] = str(folders[label, head])
        echo(f"{label}, {head}: " + seeds_line(group).split(": ", 1)[1])
    return {"feature_dim": int(cache.train_features.shape[-1])}


def forward_throughput(spec: CacheSpec, config: BackbonesConfig) -> float:
    """Images/s of the spec's frozen backbone on a batch of its size (random pixels: the speed does not
    depend on them), timed here so that every backbone is timed in the same run on the same machine."""
    import torch

    from ..backbone import bare_forward_throughput, load_backbone
    from ..ranks import resolve_device

    device = resolve_device(config.device)
    backbone = load_backbone(spec.weights, spec.seed, spec.backbone).to(device).eval()
    batch = torch.randn(config.extract_batch_size, 3, spec.image_size, spec.image_size,
                        generator=torch.Generator().manual_seed(0)).to(device)
    return bare_forward_throughput(backbone.to(memory_format=torch.channels_last),
                                   batch.to(memory_format=torch.channels_last),
                                   max(3, TIMED_IMAGES // config.extract_batch_size))


def folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


def _check_comparable(specs: list[CacheSpec], labels: list[str]) -> None:
    if len(specs) < 2:
        raise FeatcacheError("comparing backbones needs at least two")
    if not all(folder_name(label) for label in labels):
        raise FeatcacheError(f"a label needs a letter or digit to name its folder: {', '.join(labels)}")
    if len({folder_name(label) for label in labels}) < len(labels):
        raise FeatcacheError(f"two backbones have the same label ({', '.join(labels)}): name them apart")
    if any(spec.data != specs[0].data or spec.views != specs[0].views or spec.seed != specs[0].seed
           for spec in specs):  # the same images and views: the paired comparisons need the same test images
        raise FeatcacheError("the backbones compared must read the same data with the same views and seed; only "
                             "the backbone, its weights and its image size may differ")

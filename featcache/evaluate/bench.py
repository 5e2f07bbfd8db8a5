"""Cached versus end-to-end speed, measured side by side in one process.

Every figure comes from the same dataset, config, device and batch size; ratios are computed from
numbers measured in this run, never from constants.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import torch
from torchvision import transforms

from ..data.images import ImageData, decode_all, decoded_chunks
from ..data.views import make_views
from ..backbone import bare_forward_throughput, check_input_size, load_backbone, synchronize
from ..cache.reader import load_cache
from ..cache.writer import write_cache
from ..data.datasets import Dataset
from ..train.heads import train_linear_head
from ..train.config import EpochConfig
from ..data.transform import IMAGENET_MEAN, IMAGENET_STD, resize_size
from ..cache.key import backbone_name, cache_provenance
from ..settings import DEFAULT_BACKBONE
from .tables import markdown_table
from ..train.end_to_end import reference_feature_extraction
from ..files import write_file

TARGETS = {  # ratio: (direction, target)
    "extraction_vs_bare_forward": (">=", 0.90),
    "head_speedup_vs_end_to_end": (">=", 1000.0),
    "first_run_speedup_vs_end_to_end": (">=", 3.0),
    "shard_commit_and_assembly_share": ("<=", 0.03),
}


def bf16_agreement(backbone, batch: torch.Tensor) -> dict:
    """How far bf16-autocast features are from fp32 ones on the same batch, and its throughput."""
    device = batch.device
    with torch.inference_mode():
        reference = backbone(batch).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            backbone(batch)  # warm-up
            synchronize(device)
            started = time.perf_counter()
            low = backbone(batch).float()
            synchronize(device)
            seconds = time.perf_counter() - started
    cosine = torch.nn.functional.cosine_similarity(reference, low, dim=1)
    return {"bf16_forward_images_per_s": len(batch) / seconds,
            "bf16_feature_cosine_distance_max": 1 - cosine.min().item(),
            "bf16_feature_relative_error": ((low - reference).norm() / reference.norm()).item()}


def notebook_pipeline_throughput(dataset: Dataset, image_size: int, batch_size: int, num_workers: int,
                                 limit: int) -> float:
    """Images/s of the reference notebook's input pipeline: PIL transforms per image in a DataLoader."""
    transform = transforms.Compose([
        transforms.Resize(resize_size(image_size)), transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(), transforms.ColorJitter(brightness=0.2, contrast=0.2),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    class PilDataset(torch.utils.data.Dataset):
        def __len__(self):
            return min(limit, len(dataset.train))

        def __getitem__(self, index):
            return transform(dataset.train.read(index)), int(dataset.train.labels[index])

    loader = torch.utils.data.DataLoader(PilDataset(), batch_size=batch_size, num_workers=num_workers)
    started = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - started)


def featcache_pipeline_throughput(dataset: Dataset, image_size: int, batch_size: int, num_workers: int,
                                  limit: int, device: torch.device) -> float:
    """Images/s of featcache's input pipeline as extract runs it: decode once, augment whole batches."""
    count = min(limit, len(dataset.train))
    started = time.perf_counter()
    done = 0
    ranges = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    for chunk in decoded_chunks(dataset.train, image_size, ranges, num_workers, device):
        make_views(chunk.images, list(range(chunk.start, chunk.start + len(chunk.images))), 1, "train", 0, image_size,
                   device)
        done += len(chunk.images)
    synchronize(device)
    return done / (time.perf_counter() - started)


def _extraction_rank(rank: int, world_size: int, port: int, dataset: Dataset, weights: str, provenance: dict,
                     cache_dir: str, batch_size: int, threads: int, results) -> None:
    """One process of a multi-process extraction, set up as torchrun would set it up."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    result = write_cache(dataset, load_backbone(weights, provenance["seed"], backbone_name(provenance["backbone"])),
                         provenance, Path(cache_dir), batch_size=batch_size, progress=False, weights_source=weights)
    if rank == 0:
        results.put(result.images_per_second)


def multi_process_extraction(dataset: Dataset, weights: str, provenance: dict, batch_size: int,
                             processes: int) -> float:
    """Images/s of a cold extraction on `processes` CPU processes sharing this machine's threads."""
    with socket.socket() as probe:  # a free port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    threads = max(1, torch.get_num_threads() // processes)
    with tempfile.TemporaryDirectory() as cache_dir:
        torch.multiprocessing.spawn(_extraction_rank, nprocs=processes, args=(
            processes, port, dataset, weights, provenance, cache_dir, batch_size, threads, results))
    return results.get()


def machine_description(device: torch.device) -> dict:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }


def run_bench(dataset: Dataset, weights: str, image_size: int, views: int, epochs: int, batch_size: int,
              extract_batch_size: int, device: torch.device, num_workers: int = 0, seed: int = 0,
              end_to_end: bool = True, log=print, architecture: str = DEFAULT_BACKBONE) -> dict:
    """Time every path on one dataset and config; returns all figures, ratios and target checks."""
    backbone = load_backbone(weights, seed, architecture)
    check_input_size(backbone, architecture, image_size)
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    provenance = cache_provenance(dataset, weights, seed, image_size, views, backbone=architecture)
    decoded_test = decode_all(dataset.test, image_size)
    probe_count = min(extract_batch_size, len(decoded_test))
    probe = make_views(decoded_test[:probe_count], list(range(probe_count)), 0, "test", seed, image_size, device)
    figures = {"backbone": architecture, "feature_dim": backbone.feature_dim, "train_images": len(dataset.train), "test_images": len(dataset.test), "image_size": image_size,
               "views": views, "epochs": epochs, "batch_size": batch_size, "extract_batch_size": extract_batch_size}

    log("timing the bare backbone forward ...")
    batches = max(3, 512 // probe_count)
    bare_before = bare_forward_throughput(backbone, probe, batches)
    log("comparing bf16 autocast features with fp32 ...")
    figures.update(bf16_agreement(backbone, probe))
    log("timing input pipelines ...")
    limit = min(len(dataset.train), 512)
    figures["notebook_pipeline_images_per_s"] = notebook_pipeline_throughput(
        dataset, image_size, extract_batch_size, num_workers, limit)
    figures["featcache_pipeline_images_per_s"] = featcache_pipeline_throughput(
        dataset, image_size, extract_batch_size, num_workers, limit, device)

    with tempfile.TemporaryDirectory() as cache_dir:
        log(f"extracting {views} views (cold cache) ...")
        extracted = write_cache(dataset, backbone, provenance, Path(cache_dir), batch_size=extract_batch_size,
                                device=device, num_workers=num_workers, progress=False, weights_source=weights)
        cache = load_cache(extracted.path)
    # the machine's speed drifts: the ceiling is the mean of a measurement before and one after extraction
    figures["bare_forward_images_per_s"] = (bare_before + bare_forward_throughput(backbone, probe, batches)) / 2
    figures["extract_s"] = extracted.seconds
    figures["extract_images_per_s"] = extracted.images_per_second
    figures["extract_share_outside_backbone"] = 1 - extracted.backbone_seconds / extracted.seconds
    figures["shard_commit_s"] = extracted.commit_seconds
    figures["assembly_s"] = extracted.assembly_seconds
    if device.type == "cpu":
        log("extracting again on 2 processes (torch.distributed, gloo) ...")
        figures["extract_2_processes_images_per_s"] = multi_process_extraction(
            dataset, weights, provenance, extract_batch_size, 2)
    config = EpochConfig(epochs, batch_size, seed)
    log(f"training the head on the cache for {epochs} epochs (median of 5 runs) ...")
    head_times = []
    for _ in range(5):
        started = time.perf_counter()
        train_linear_head(cache.train_features, cache.train_labels, cache.test_features, cache.test_labels, config)
        head_times.append(time.perf_counter() - started)
    figures["head_s"] = sorted(head_times)[2]
    figures["first_run_s"] = figures["extract_s"] + figures["head_s"]
    ratios = {"extraction_vs_bare_forward": figures["extract_images_per_s"] / figures["bare_forward_images_per_s"],
              "shard_commit_and_assembly_share": (figures["shard_commit_s"] + figures["assembly_s"])
              / figures["extract_s"],
              "featcache_vs_notebook_pipeline": figures["featcache_pipeline_images_per_s"]
              / figures["notebook_pipeline_images_per_s"]}
    if "extract_2_processes_images_per_s" in figures:
        ratios["extraction_2_vs_1_processes"] = figures["extract_2_processes_images_per_s"] / figures["extract_images_per_s"]
    if end_to_end:
        log(f"running the end-to-end feature-extraction loop for {epochs} epochs ...")
        data = ImageData(decode_all(dataset.train, image_size), torch.from_numpy(dataset.train.labels), decoded_test,
                         torch.from_numpy(dataset.test.labels), dataset.classes, image_size, seed, device)
        started = time.perf_counter()
        reference_feature_extraction(data, backbone, config, 1e-3, views, log=None)
        synchronize(device)
        figures["end_to_end_s"] = time.perf_counter() - started
        ratios["head_speedup_vs_end_to_end"] = figures["end_to_end_s"] / figures["head_s"]
        ratios["first_run_speedup_vs_end_to_end"] = figures["end_to_end_s"] / figures["first_run_s"]
    checks = {name: {"value": ratios[name], "target": f"{direction} {target:g}",
                     "met": ratios[name] >= target if direction == ">=" else ratios[name] <= target}
              for name, (direction, target) in TARGETS.items() if name in ratios}
    return {"figures": figures, "ratios": ratios, "targets": checks, "machine": machine_description(device)}


def bench_markdown(result: dict, command: str) -> str:
    figure_rows = [{"figure": key, "value": value} for key, value in result["figures"].items()]
    ratio_rows = [{"ratio": key, "value": value,
                   "target": result["targets"][key]["target"] if key in result["targets"] else "",
                   "met": ("yes" if result["targets"][key]["met"] else "NO") if key in result["targets"] else ""}
                  for key, value in result["ratios"].items()]
    machine = ", ".join(f"{k}: {v}" for k, v in result["machine"].items())
    return (f"Command: `{command}`\n\nMachine: {machine}\n\n"
            f"{markdown_table(figure_rows, ['figure', 'value'])}\n\n"
            f"{markdown_table(ratio_rows, ['ratio', 'value', 'target', 'met'])}\n")


def write_bench(result: dict, out: Path, command: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    write_file(json_path, (json.dumps({**result, "command": command}, indent=2) + "\n").encode())
    write_file(md_path, bench_markdown(result, command).encode())
    return json_path, md_path

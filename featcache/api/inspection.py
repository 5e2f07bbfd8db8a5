"""Looking before and around the work: inspect (a backbone's parameters per module, and a grid of
training images as a view makes them) and bench (every speed figure side by side in one process)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..data.datasets import DataSpec
from ..evaluate.config import BenchConfig, InspectConfig
from ..settings import built, require

Log = Callable[[str], None]


def inspect(data: DataSpec, out: str | Path, config: InspectConfig | None = None, **settings) -> list[dict]:
    """The backbone's parameters per top-level module and the share each approach trains (returned as
    table rows), and a PNG grid at `out` of `count` training images as view `view` makes them. `config`
    or InspectConfig's fields (image_size, seed, count, view, backbone)."""
    from ..evaluate.report import write_inspection

    config = built(InspectConfig, config, settings, "inspect")
    require("data", data, DataSpec, "a featcache.DataSpec")
    require("out", out, (str, Path), "a PNG file's path")
    return write_inspection(data, Path(out), config.image_size, config.seed, config.count, config.view,
                            config.backbone)


def bench(data: DataSpec, out: str | Path, config: BenchConfig | None = None, *, log: Log | None = None,
          **settings) -> dict:
    """featcache bench: every speed figure side by side in one process; writes bench.json and bench.md
    to `out` and returns the result with their paths and the Markdown. `config` or BenchConfig's fields
    (weights, image_size, views, epochs, batch_size, extract_batch_size, device, num_workers, seed,
    end_to_end, backbone, command)."""
    from ..evaluate.bench import bench_markdown, run_bench, write_bench
    from ..ranks import resolve_device

    config = built(BenchConfig, config, settings, "bench")
    require("data", data, DataSpec, "a featcache.DataSpec")
    require("out", out, (str, Path), "a folder's path")
    result = run_bench(data.load(), config.weights, config.image_size, config.views, config.epochs, config.batch_size,
                       config.extract_batch_size, resolve_device(config.device), config.num_workers, config.seed,
                       config.end_to_end, log=log or (lambda line: None), architecture=config.backbone)
    json_path, md_path = write_bench(result, Path(out), config.command)
    return {**result, "json": json_path, "md": md_path, "markdown": bench_markdown(result, config.command)}

"""Heads on a cache larger than --max-memory: streamed in shuffled chunk-aligned blocks, every row once
per epoch, peak memory growth under the budget (measured), and accuracy as in memory."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from featcache import api
from featcache.cache.reader import view_for_epoch
from featcache.cache.streaming import open_streamed
from featcache.settings import parse_memory
from featcache.cache.synthetic import write_synthetic_cache

from conftest import assert_clean_failure

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """6,000 training rows x 3 views (37 MB of features), sorted by class, 300 test rows."""
    return write_synthetic_cache(tmp_path_factory.mktemp("streaming") / "synthetic.h5", 6000, views=2, test_rows=300)


def test_every_row_once_per_epoch_in_batches_read_from_the_file(synthetic):
    cache = open_streamed(synthetic, parse_memory("36MB"))
    try:
        stream = cache.train_features.with_rows(np.arange(6000), seed=5)
        assert stream.block_rows == 256 and 256 < stream.buffer_rows < 6000  # several groups of blocks
        features = h5py.File(synthetic)["train/features"][()]
        orders = []
        for epoch in range(2):
            order = stream.order(epoch)
            assert sorted(order.tolist()) == list(range(6000))  # a permutation: each row exactly once
            batches = list(stream.batches(epoch, order, 64))  # 64 divides neither the buffer nor 6,000
            assert [len(batch) for batch in batches] == [64] * 93 + [48]
            served = torch.cat(batches)
            assert torch.equal(served[:, :-1], torch.from_numpy(features[order.numpy(), view_for_epoch(epoch, 2)]))
            assert torch.all(served[:, -1] == 1)  # the bias column
            orders.append(order)
        assert not torch.equal(orders[0], orders[1])
        assert torch.equal(stream.with_rows(np.arange(6000), seed=5).order(0), orders[0])  # seeded
        # a group is whole blocks: rows of the first group come from len(group) blocks of 256 rows
        first_group = stream.groups(0)[0]
        assert set((orders[0][:sum(b - a for a, b in first_group)] // 256).tolist()) == {a // 256 for a, _ in first_group}
    finally:
        cache.close()


def test_seeds_share_the_block_order_and_differ_inside_the_buffer(synthetic):
    cache = open_streamed(synthetic, parse_memory("36MB"), heads=2)
    try:
        stream = cache.train_features.with_rows(np.arange(6000), seed=0, seeds=[0, 1])
        order = stream.order(0)
        assert order.shape == (2, 6000) and not torch.equal(order[0], order[1])
        start = 0
        for group in stream.groups(0):
            stop = start + sum(b - a for a, b in group)
            assert set(order[0, start:stop].tolist()) == set(order[1, start:stop].tolist())
            start = stop
        batch = next(stream.batches(0, order, 32))
        assert batch.shape == (2, 32, 513)
    finally:
        cache.close()


def test_streamed_heads_learn_what_in_memory_heads_learn(synthetic):
    in_memory = api.train_head(str(synthetic), epochs=3, max_memory="1GB")
    streamed = api.train_head(str(synthetic), epochs=3, max_memory="36MB")
    assert in_memory.config["streamed"] is False and streamed.config["streamed"] is True
    assert streamed.history["test_acc"][-1] > 0.8  # chance is 1/3
    assert abs(streamed.history["test_acc"][-1] - in_memory.history["test_acc"][-1]) < 0.05
    sweep = api.train_head(str(synthetic), epochs=2, max_memory="38MB", sweep=True, sweep_lrs=(1e-3, 1e-1),
                           sweep_wds=(0.0,))
    grid = sweep.record["sweep"]["grid"]
    assert sweep.config["streamed"] and grid[0]["val_acc"] > 0.8 and len(grid) == 2
    seeds = api.train_head_seeds(str(synthetic), "0-1", epochs=2, max_memory="36MB")
    assert [run.config["streamed"] for run in seeds.runs] == [True, True]
    assert all(run.history["test_acc"][-1] > 0.8 for run in seeds.runs)


def test_heads_that_need_memory_and_budgets_too_small_are_refused_in_one_line(synthetic, tmp_path, run_cli):
    for head in ("logreg", "knn"):
        assert_clean_failure(run_cli("train-head", synthetic, "--head", head, "--max-memory", "36MB",
                                     "--out", tmp_path / head), f"the {head} head needs the cache in memory")
    assert_clean_failure(run_cli("train-head", synthetic, "--max-memory", "33MB", "--out", tmp_path / "a"),
                         "is too small to stream")
    assert_clean_failure(run_cli("train-head", synthetic, "--max-memory", "lots", "--out", tmp_path / "b"),
                         "must be a size such as 1GB", exit_code=2)
    assert parse_memory("1GB") == 10**9 and parse_memory("512MiB") == 2**29 and parse_memory("2e9") == 2 * 10**9


MEASURE = textwrap.dedent("""
    import ctypes, json, resource, sys, threading, time
    from featcache import api

    def anonymous():  # resident minus file-backed pages (torch's code paged in late is not data)
        with open("/proc/self/statm") as statm:
            _, resident, shared = map(int, statm.read().split()[:3])
        return (resident - shared) * resource.getpagesize()

    cache, warm, budget = sys.argv[1:4]
    api.train_head(warm, epochs=1, max_memory="34MB")  # streamed once on a small cache: torch's and h5py's first use
    ctypes.CDLL(None).malloc_trim(0)  # freed heap back to the system: the measured run cannot reuse it unseen
    baseline, peak, done = anonymous(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anonymous())
            time.sleep(0.001)
    sampler = threading.Thread(target=sample)
    sampler.start()
    run = api.train_head(cache, epochs=2, max_memory=budget)
    done.set()
    sampler.join()
    print(json.dumps({"growth": peak[0] - baseline, "streamed": run.config["streamed"],
                      "test_acc": run.history["test_acc"][-1]}))
""")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures resident memory through /proc (Linux)")
def test_streamed_peak_memory_growth_stays_under_the_budget(tmp_path):
    """A 123 MB cache under a 40 MB budget: peak resident memory (anonymous: data, not code; sampled every
    millisecond) above the warmed-up baseline stays under 40 MB; the same cache in memory grows by more
    than the budget (so the measurement can fail)."""
    cache = write_synthetic_cache(tmp_path / "big.h5", 20000, views=2, test_rows=600)
    warm = write_synthetic_cache(tmp_path / "warm.h5", 4000, views=2, test_rows=60, seed=1)
    growth = {}
    for budget in ("40MB", "2GB"):
        output = subprocess.run([sys.executable, "-c", MEASURE, str(cache), str(warm), budget], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        growth[budget] = json.loads(output.splitlines()[-1])
    assert growth["40MB"]["streamed"] and not growth["2GB"]["streamed"]
    assert growth["40MB"]["growth"] < 40e6 < growth["2GB"]["growth"], growth
    assert growth["40MB"]["test_acc"] > 0.8


def test_a_cache_of_any_feature_width_trains_every_head(tmp_path):
    """The feature width is the cache file's, not ResNet-18's 512: a 48-wide cache (as another backbone
    would write) trains every head, sizes its memory by 48 (streamed only when 48-wide rows do not fit),
    and its run loads back as a Linear(48, 3)."""
    path = write_synthetic_cache(tmp_path / "narrow.h5", 6000, views=2, test_rows=300, dim=48, separation=0.5)
    runs = {"in memory": api.train_head(str(path), epochs=2, max_memory="36MB", out=tmp_path / "linear"),
            "sweep": api.train_head(str(path), epochs=1, sweep=True, sweep_lrs=(1e-3,), sweep_wds=(0.0, 1e-3)),
            "logreg": api.train_head(str(path), head="logreg"),
            "knn": api.train_head(str(path), head="knn")}
    runs.update({f"seed {run.config['seed']}": run for run in api.train_head_seeds(str(path), "0-1", epochs=1).runs})
    # 100,000 rows x 2 views of 48 (+ bias) floats need 59 MB in memory (at 512 it would be 617 MB), over a
    # budget of 45 MB that streaming's 32 MB reserve, 4 MB of row state and a buffer fit in
    many = write_synthetic_cache(tmp_path / "many.h5", 100_000, views=1, test_rows=300, dim=48, separation=0.5)
    runs["streamed"] = api.train_head(str(many), epochs=1, max_memory="45MB")
    assert runs["streamed"].config["streamed"] and not runs["in memory"].config["streamed"]
    for name, run in runs.items():
        assert run.final_test_acc > 0.8, name  # chance is 1/3
        if name != "knn":
            assert (run.model.in_features, run.model.out_features) == (48, 3), name
    loaded = api.Run.load(tmp_path / "linear")
    assert torch.equal(loaded.model.weight, runs["in memory"].model.weight)
    shots = api.fewshot(api.open_cache(path), tmp_path / "fewshot", shots=(1, 5), trials=2)
    assert all(row["mean_test_acc"] > 0.5 for row in shots["rows"] if row["shots"] == 5)

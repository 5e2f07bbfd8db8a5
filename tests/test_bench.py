"""featcache bench: every figure present, ratios computed from this run's figures, targets checked in the
right direction (no timing asserted)."""
import json

import pytest


@pytest.mark.slow
def test_bench_reports_figures_ratios_and_targets(image_folder, run_cli, tmp_path, monkeypatch):
    # targets whose outcome this run's figures decide whatever the machine's speed (ratios asserted below:
    # both speedups > 0, 0 < the commit share, extraction slower than 1e9 times the bare forward)
    from featcache.evaluate import bench

    monkeypatch.setattr(bench, "TARGETS", {
        "extraction_vs_bare_forward": (">=", 1e9), "head_speedup_vs_end_to_end": (">=", 0.0),
        "first_run_speedup_vs_end_to_end": ("<=", 1e9), "shard_commit_and_assembly_share": ("<=", 0.0)})
    result = run_cli("bench", "--data", image_folder, "--weights", "random", "--image-size", "32", "--views", "2",
                     "--epochs", "2", "--extract-batch-size", "8", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    figures, ratios = report["figures"], report["ratios"]
    assert figures["train_images"] == 24 and figures["test_images"] == 12
    for key in ("bare_forward_images_per_s", "extract_images_per_s", "head_s", "end_to_end_s",
                "notebook_pipeline_images_per_s", "featcache_pipeline_images_per_s"):
        assert figures[key] > 0, key
    assert 0 <= figures["extract_share_outside_backbone"] < 1
    assert -1e-4 <= figures["bf16_feature_cosine_distance_max"] < 0.1 and figures["bf16_feature_relative_error"] > 0
    # extraction ran the backbone on every view once: 24 training images x (1 + 2 views) + 12 test images
    assert figures["extract_images_per_s"] * figures["extract_s"] == pytest.approx(24 * 3 + 12, rel=1e-6)
    assert figures["head_s"] < figures["end_to_end_s"]  # even on 24 images, a cached head beats the loop
    assert ratios["head_speedup_vs_end_to_end"] > 1 and ratios["first_run_speedup_vs_end_to_end"] > 0
    assert set(report["targets"]) == {"extraction_vs_bare_forward", "head_speedup_vs_end_to_end",
                                      "first_run_speedup_vs_end_to_end", "shard_commit_and_assembly_share"}
    assert {name: (check["target"], check["met"]) for name, check in report["targets"].items()} == {
        "extraction_vs_bare_forward": (">= 1e+09", False), "head_speedup_vs_end_to_end": (">= 0", True),
        "first_run_speedup_vs_end_to_end": ("<= 1e+09", True), "shard_commit_and_assembly_share": ("<= 0", False)}
    assert all(check["value"] == ratios[name] for name, check in report["targets"].items())
    assert figures["extract_2_processes_images_per_s"] > 0 and figures["shard_commit_s"] > 0 and figures["assembly_s"] > 0
    assert 0 < ratios["shard_commit_and_assembly_share"] < 1
    markdown = (tmp_path / "bench.md").read_text()
    for key, value in figures.items():  # the Markdown shows every figure of the JSON
        assert f"| {key} | " in markdown, key
    assert report["machine"]["torch_version"]
    for name, met in (("extraction_vs_bare_forward", "NO"), ("head_speedup_vs_end_to_end", "yes")):
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        assert row.rstrip(" |").endswith(f"| {met}"), row


@pytest.mark.slow
def test_the_api_bench_called_twice_in_one_process(image_folder, tmp_path):
    """featcache.bench stays the API's function: importing the module that does the work rebinds nothing."""
    import featcache

    data = featcache.DataSpec(str(image_folder))
    for run in ("first", "second"):
        result = featcache.bench(data, tmp_path / run, weights="random", image_size=32, views=1, epochs=1,
                                 extract_batch_size=8, end_to_end=False)
        assert result["figures"]["train_images"] == 24 and (tmp_path / run / "bench.json").is_file()
    assert callable(featcache.bench) and featcache.bench is featcache.api.bench

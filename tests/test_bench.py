"""featcache bench: every figure present, ratios computed from this run's figures (no timing asserted)."""
import json

import pytest


@pytest.mark.slow
def test_bench_reports_figures_ratios_and_targets(image_folder, run_cli, tmp_path):
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
    for check in report["targets"].values():
        direction, target = check["target"].split()
        assert check["met"] == (check["value"] >= float(target) if direction == ">=" else check["value"] <= float(target))
    assert figures["extract_2_processes_images_per_s"] > 0 and figures["shard_commit_s"] > 0 and figures["assembly_s"] > 0
    assert 0 < ratios["shard_commit_and_assembly_share"] < 1
    markdown = (tmp_path / "bench.md").read_text()
    for key, value in figures.items():  # the Markdown shows every figure of the JSON
        assert f"| {key} | " in markdown, key
    assert report["machine"]["torch_version"] and "| head_speedup_vs_end_to_end |" in (tmp_path / "bench.md").read_text()

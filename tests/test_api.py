"""The Python API as a notebook uses it: scripts/quickstart.py runs on synthetic images, and is the
README's API section word for word."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import featcache

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_through_import_featcache_alone(image_folder, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--data", str(image_folder),
                           "--weights", "random", "--image-size", "32", "--per-class", "8",
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("feature-extraction: final test accuracy ")
    assert lines[1].startswith("fine-tuning: final test accuracy ")
    for approach, line in zip(("feature-extraction", "fine-tuning"), lines):
        record = featcache.read_run(tmp_path / "runs" / approach)
        assert f"{record['test_acc'][-1]:.4f}" in line
    assert (tmp_path / "runs" / "comparison.png").is_file()


def test_readme_api_section_is_the_quickstart_script():
    script = (ROOT / "scripts" / "quickstart.py").read_text()
    assert f"```python\n{script}```" in (ROOT / "README.md").read_text()


@pytest.fixture
def cached_run(small_cache, tmp_path):
    return featcache.train_head(small_cache.spec, epochs=2, out=tmp_path / "head")


def test_one_spec_builds_the_key_and_a_cache_dataset_per_view(image_folder, small_cache):
    spec = featcache.CacheSpec(featcache.DataSpec(str(image_folder)), weights="random", image_size=32, views=2,
                               cache_dir=small_cache.spec.cache_dir)  # a new spec with the same arguments
    assert featcache.extract(spec).reused  # found from the spec alone
    cache = featcache.open_cache(spec)
    assert cache.path == small_cache.path
    features, label = cache.dataset("train", view=2)[5]
    assert torch.equal(features, cache.train_features[5, 2]) and label == cache.train_labels[5]
    assert len(cache.dataset("test")) == 12
    with pytest.raises(featcache.FeatcacheError, match="`view` must be between 0 and 2"):
        cache.dataset("train", view=3)


def test_a_saved_run_loads_back_with_its_model(cached_run, tmp_path):
    run = featcache.Run.load(cached_run.path)
    assert run.approach == "feature-extraction" and run.history == cached_run.history
    assert run.record["classes"] == ["ant", "bee", "cow"] and run.path == cached_run.path
    assert torch.equal(run.model.weight, cached_run.model.weight) and torch.equal(run.model.bias, cached_run.model.bias)


def test_an_unknown_argument_is_an_error_not_a_record(cached_run, tmp_path):
    """train_head once took **record: epoch=5 trained 15 epochs and wrote "epoch": 5 into history.json."""
    cache = featcache.open_cache(cached_run.config["cache"])
    data = featcache.DataSpec(str(tmp_path / "no images here"))  # never read: the name is refused first
    for train in (lambda **extra: featcache.train_head(cache, **extra),
                  lambda **extra: featcache.train_head_seeds(cache, [0, 1], **extra),
                  lambda **extra: featcache.finetune(data, "random", **extra),
                  lambda **extra: featcache.scratch_seeds(data, [0, 1], **extra),
                  lambda **extra: featcache.experiment(featcache.CacheSpec(data), **extra)):
        with pytest.raises(featcache.FeatcacheError, match="no argument `epoch`") as raised:
            train(epoch=5, out=tmp_path / "never")
        assert isinstance(raised.value, TypeError)  # as Python's own unexpected keyword
    assert not (tmp_path / "never").exists()
    run = featcache.train_head(cache, epochs=1, extract_wall_time_s=1.5, cache_reused=True)
    assert run.record["extract_wall_time_s"] == 1.5 and run.record["cache_reused"] is True
    assert "cache_reused" not in featcache.train_head(cache, epochs=1).record  # recorded only when known


def test_image_size_is_checked_by_the_api_as_by_the_cli(image_folder, run_cli, tmp_path):
    for make in (lambda: featcache.CacheSpec(featcache.DataSpec(str(image_folder)), image_size=8),
                 lambda: featcache.load_images(featcache.DataSpec(str(image_folder)), image_size=8)):
        with pytest.raises(featcache.FeatcacheError, match="`image_size` must be at least 16, got 8"):
            make()
    result = run_cli("extract", "--data", image_folder, "--image-size", "8", "--cache-dir", tmp_path)
    assert result.exit_code == 2 and "8 is not in the range 16<=x<=2048" in result.stderr


def test_images_decoded_for_one_size_are_not_silently_used_for_another(image_folder):
    images = featcache.load_images(featcache.DataSpec(str(image_folder)), image_size=32, device="cpu")
    with pytest.raises(featcache.FeatcacheError, match="decoded for image size 32"):
        featcache.scratch(images, epochs=1, image_size=64)


def test_api_errors_name_the_arguments_and_the_cli_its_options(image_folder, tmp_path, run_cli):
    with pytest.raises(featcache.FeatcacheError, match="`per_class` must be a whole number of at least 1"):
        featcache.DataSpec(str(image_folder), per_class=0)  # when built, before anything is read
    result = run_cli("extract", "--data", image_folder, "--per-class", "0", "--cache-dir", tmp_path)
    assert result.exit_code == 2 and "Error: featcache extract: Invalid value for '--per-class'" in result.stderr


@pytest.mark.slow
def test_importing_featcache_imports_no_torch_and_keeps_matplotlib_backend():
    light = subprocess.run([sys.executable, "-c", "import sys, featcache; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=120)
    assert light.stdout.strip() == "False", light.stderr
    probe = "import matplotlib; matplotlib.use('svg'); import featcache.evaluate.report; print(matplotlib.get_backend())"
    backend = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert backend.stdout.strip() == "svg", backend.stderr


def test_configs_check_their_settings_before_any_work():
    """Each config refuses a bad setting when it is built, naming it, with no torch imported (no model
    built, no image read); numpy's numbers are numbers."""
    script = """
import sys
import featcache
bad = ((featcache.HeadConfig, {"sweep": True, "sweep_lrs": (-1.0,)}, "sweep_lrs"),
       (featcache.HeadConfig, {"val_fraction": 1.0}, "val_fraction"),
       (featcache.HeadConfig, {"head": "svm"}, "head"),
       (featcache.FinetuneConfig, {"unfreeze": ("layer4/x",)}, "unfreeze"),
       (featcache.ScratchConfig, {"backbone": "ResNet-18"}, "backbone"),
       (featcache.BackbonesConfig, {"heads": ("linear", "svm")}, "heads"),
       (featcache.BackbonesConfig, {"seeds": "3-1"}, "seeds"),
       (featcache.ScratchConfig, {"max_memory": "lots"}, "max_memory"),
       (featcache.ExperimentConfig, {"seeds": "3-1"}, "seeds"),
       (featcache.ExtractConfig, {"shard_size": 0}, "shard_size"))
for config, settings, name in bad:
    try:
        config(**settings)
    except featcache.FeatcacheError as error:
        assert f"`{name}`" in str(error), error
    else:
        raise AssertionError(f"{config.__name__}({settings}) was accepted")
print("torch" in sys.modules)
"""
    checked = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.strip() == "False", checked.stderr
    assert featcache.HeadConfig(lr=np.float32(1e-3), sweep=True, sweep_lrs=(np.float64(0.1),)).lr > 0


def test_the_api_docs_list_every_configs_fields():
    """docs/api.md's table of configs names each config's fields, no more and no fewer."""
    import dataclasses
    import re

    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\w, ]+) \|$", (ROOT / "docs" / "api.md").read_text(), re.MULTILINE)
    assert len(rows) >= 8
    for name, fields in rows:
        documented = [field.strip() for field in fields.split(",")]
        actual = [field.name for field in dataclasses.fields(getattr(featcache, name))]
        assert sorted(documented) == sorted(actual), name

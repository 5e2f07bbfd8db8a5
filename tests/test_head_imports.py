"""train-head stays light: it trains from the cache alone and never imports torchvision (whose ops import
torch._dynamo: over a second) or timm. The backbone's parameter count comes from the cache's record."""
import json
import subprocess
import sys

import h5py

from featcache.cache.key import BACKBONE_PARAMETERS
from featcache.api.heads import recorded_backbone_parameters

HEADS = ("linear", "logreg", "knn")

PROGRAM = """
import json, sys
from featcache.cli import main
for head in {heads!r}:
    main(["train-head", sys.argv[1], "--head", head, "--epochs", "2", "--out", sys.argv[2] + "/" + head, "--quiet"],
         standalone_mode=False)
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("torchvision", "timm"))))
"""


def test_train_head_imports_neither_torchvision_nor_timm(small_cache, tmp_path):
    done = subprocess.run([sys.executable, "-c", PROGRAM.format(heads=HEADS), str(small_cache.path), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    for head in HEADS:
        history = json.loads((tmp_path / head / "history.json").read_text())
        assert history["total_params"] == BACKBONE_PARAMETERS + history["trainable_params"], head


def test_the_cache_records_its_backbones_parameters(small_cache):
    with h5py.File(small_cache.path, "r") as handle:
        assert int(handle.attrs["backbone_parameters"]) == BACKBONE_PARAMETERS


def test_old_caches_count_resnet18_and_leave_others_unknown():
    assert recorded_backbone_parameters({"backbone": "torchvision.resnet18"}) == BACKBONE_PARAMETERS
    assert recorded_backbone_parameters({"backbone": "torchvision.efficientnet_b0"}) is None
    assert recorded_backbone_parameters({"backbone": "torchvision.efficientnet_b0", "backbone_parameters": 7}) == 7

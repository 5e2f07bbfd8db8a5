"""What users install is what the tests test: the built wheel holds every module of the tree."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def source_modules(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in (root / "featcache").rglob("*.py")
            if "__pycache__" not in path.parts}


@pytest.mark.slow
def test_the_built_wheel_holds_every_module(tmp_path):
    tree = tmp_path / "tree"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "featcache", tree / "featcache", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(tmp_path / "wheel"), str(tree)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    wheel, = (tmp_path / "wheel").glob("featcache-*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    missing = sorted(source_modules(tree) - packaged)
    assert not missing, f"the wheel leaves out {missing}"

"""The tree shows the architecture: phases as packages in the order data flows, no module importing one
above it, and docs/architecture.md naming every module."""
import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "featcache"
# lower layers first; a module may import its own layer or those below it
LAYERS = (("errors", "_version", "settings", "npz", "files", "locks", "csvfiles"), ("ranks",), ("data",), ("backbone", "estimate"), ("cache",), ("train",), ("evaluate",),
          ("deploy",), ("api",), ("cli", "cli_options", "__init__", "__main__"))


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE).with_suffix("").parts): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    top = module.split(".")[0]
    found = [index for index, names in enumerate(LAYERS) if top in names]
    assert found, f"{top} is in no layer of LAYERS: add it where it belongs"
    return found[0]


def imported(module: str, path: Path) -> set[str]:
    """featcache modules `module` imports, at the top or inside functions."""
    package = list(path.relative_to(PACKAGE).parent.parts)  # what a one-dot relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found.update([target] if node.module else [f"{target}.{alias.name}".strip(".") for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("featcache."):
            found.add(node.module.removeprefix("featcache."))
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("featcache.") for alias in node.names
                         if alias.name.startswith("featcache."))
    return {name for name in found if name}


def test_no_module_imports_one_above_it():
    wrong = [f"{module} imports {target}" for module, path in modules().items() for target in imported(module, path)
             if layer(target) > layer(module)]
    assert not wrong, wrong


def test_every_module_is_in_the_architecture_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(featcache/[\w/]+\.py)`", text))
    present = {str(path.relative_to(ROOT)) for path in modules().values()}
    assert not present - named, f"docs/architecture.md does not name {sorted(present - named)}"
    assert not named - present, f"docs/architecture.md names modules that do not exist: {sorted(named - present)}"


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff comes with the test extra: pip install -e '.[test]'")
def test_ruff_checks_every_module_of_the_package():
    """A bare "cache" in extend-exclude once left featcache/cache/ unlinted."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--show-files"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    listed = {str(Path(line.strip()).resolve().relative_to(ROOT)) for line in done.stdout.splitlines()
              if line.strip().endswith(".py")}
    assert {str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")} <= listed
    assert any(name.startswith("featcache/cache/") for name in listed)


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff comes with the test extra: pip install -e '.[test]'")
def test_the_tree_is_clean_under_ruff():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "featcache", "tests", "scripts"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

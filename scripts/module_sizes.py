"""The ten largest modules and the ten longest functions of featcache at a git revision.
Usage: python scripts/module_sizes.py REV (e.g. HEAD)"""
import ast
import subprocess
import sys

rev = sys.argv[1]
listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "featcache"], capture_output=True, text=True, check=True)
files = [name for name in listing.stdout.split() if name.endswith(".py")]
modules, functions = [], []
for name in files:
    source = subprocess.run(["git", "show", f"{rev}:{name}"], capture_output=True, text=True, check=True).stdout
    modules.append((len(source.splitlines()), name))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
print(f"{rev}: {len(files)} modules")
print("largest modules:", ", ".join(f"{n} {f.replace('featcache/', '')}" for n, f in sorted(modules, reverse=True)[:10]))
print("longest functions:", ", ".join(f"{n} {f.replace('featcache/', '')}" for n, f in sorted(functions, reverse=True)[:10]))

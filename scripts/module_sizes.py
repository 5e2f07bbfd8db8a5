"""The ten largest modules and the ten longest functions of featcache at a git revision, or with a
threshold every module and function longer than it. Usage: python scripts/module_sizes.py REV [OVER]
(e.g. HEAD 60)"""
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
over = int(sys.argv[2]) if len(sys.argv) > 2 else None


def chosen(items):
    ranked = sorted(items, reverse=True)
    return [item for item in ranked if item[0] > over] if over is not None else ranked[:10]


label = f" over {over} lines" if over is not None else ""
long_modules, long_functions = chosen(modules), chosen(functions)
print(f"modules{label} ({len(long_modules)}):", ", ".join(f"{n} {f.replace('featcache/', '')}" for n, f in long_modules))
print(f"functions{label} ({len(long_functions)}):", ", ".join(f"{n} {f.replace('featcache/', '')}" for n, f in long_functions))

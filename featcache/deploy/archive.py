"""An exported file read as data, never as code: featcache's own network rebuilt from the file's
featcache.json and filled with its raw tensor payloads.

`torch.export.load` deserializes a program: in torch 2.14 that path unpickles payloads marked
use_pickle, retries sample inputs with weights_only=False, hands every shape expression to
sympy.sympify (which evaluates Python), resolves node targets by getattr from `torch`, loads a shared
library for any aotinductor entry, imports modules the calling convention names, and `.module()`
compiles the guards' code. Safe only on files one made oneself. featcache never calls it on a file it
is given. It reads, with the zipfile and json parsers (and torch's archive reader, which must agree):

- the archive's entry names, each on an allowlist (what `featcache export` writes with torch 2.x: no
  aotinductor, no legacy pickles); stored, not compressed, and within size bounds;
- extra/featcache.json (the approach, backbone, classes, image size and head);
- data/weights/model_weights_config.json: every payload with use_pickle false, a known dtype, a
  strided contiguous layout on the CPU, and exactly the bytes its shape needs;
- the payloads' raw bytes.

The network is featcache's own, built from the backbone's name, and every tensor must fill it exactly
(load_state_dict, strict). The program (models/model.json) and sample inputs are not used, but they are
checked as text by deploy/program.py, read through zipfile and torch's own reader alike, and refused
where plain torch.export.load (torch 2.14) would run code from them.
"""
from __future__ import annotations

import json
import math
import re
import sys
import zipfile
import zlib
from pathlib import Path

import torch
from torch import nn

from ..errors import FeatcacheError
from .program import check_program, check_sample_inputs

ALLOWED = re.compile(r"(data/weights/weight_\d+|data/weights/model_weights_config\.json"
                     r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+|models/model\.json|data/sample_inputs/model\.pt"
                     r"|extra/featcache\.json|archive_format|archive_version|\.data/version|byteorder"
                     r"|\.data/serialization_id)")
MAX_JSON_BYTES = 64 << 20  # featcache.json, the tables, the program, sample inputs: kilobytes to a few MB
MAX_ENTRIES = 1 << 16
# torch._export.serde.schema.ScalarType's numbers (tests/test_safe_loading.py checks them against torch's)
DTYPES = {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
          7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16}
STRIDED = 7  # torch._export.serde.schema.Layout.Strided


def read_export(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(featcache.json, the state dict of its payloads) of an exported file, every rule of this module's
    docstring checked first; a file that breaks one is refused in one line naming the rule."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise FeatcacheError(f"{path} is not a model written by featcache export (not a zip archive: "
                             f"{' '.join(str(error).split())[:100]})") from None
    with archive:
        try:
            return _read(path, archive)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:  # a damaged entry (CRC, truncation)
            raise FeatcacheError(f"{path} is damaged ({type(error).__name__}: "
                                 f"{' '.join(str(error).split())[:100]})") from None


def _read(path: Path, archive: zipfile.ZipFile) -> tuple[dict, dict[str, torch.Tensor]]:
    entries = _checked_entries(path, archive)
    torch_reader = _torch_reader(path, entries)
    if "models/model.json" in entries:
        check_program(str(path), _json(path, archive, entries["models/model.json"], torch_reader))
    if "data/sample_inputs/model.pt" in entries:
        info = entries["data/sample_inputs/model.pt"]
        if info.file_size > MAX_JSON_BYTES:
            raise FeatcacheError(f"{path}: its sample inputs are {info.file_size:,} bytes, over {MAX_JSON_BYTES:,}")
        check_sample_inputs(str(path), _same_bytes(path, archive, info, torch_reader))
    metadata = _json(path, archive, entries["extra/featcache.json"], torch_reader)
    table = _json(path, archive, entries["data/weights/model_weights_config.json"], torch_reader).get("config")
    constants = _json(path, archive, entries["data/constants/model_constants_config.json"], torch_reader).get("config")
    if not isinstance(constants, dict):
        raise FeatcacheError(f"{path}: data/constants/model_constants_config.json lists no table")
    for name, entry in constants.items():  # checked as the weights are (timm's lifted constants), then unused:
        _tensor(path, archive, entries, name, entry, "data/constants/")  # featcache's own network makes them
    if not isinstance(table, dict) or not table:
        raise FeatcacheError(f"{path}: data/weights/model_weights_config.json lists no tensors")
    state = {name: _tensor(path, archive, entries, name, entry) for name, entry in table.items()}
    return metadata, state


def _checked_entries(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by their name under its one top folder, each allowed, stored and bounded."""
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise FeatcacheError(f"{path} has {len(infos):,} entries: not a featcache export")
    prefixes = {info.filename.split("/", 1)[0] for info in infos}
    if len(prefixes) != 1:
        raise FeatcacheError(f"{path} has entries under {len(prefixes)} top folders: not a featcache export")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):  # zipfile reads the last of two, torch's reader (miniz) may read the first
        twice = next(name for name in names if names.count(name) > 1)
        raise FeatcacheError(f"{path} holds two entries named {twice}: refused, readers disagree on which one counts")
    if min(info.header_offset for info in infos) != 0:  # data before the first entry: zipfile shifts the
        raise FeatcacheError(f"{path} has data before its first entry: not a featcache export")  # offsets, miniz not
    entries = {}
    for info in infos:
        name = info.filename.split("/", 1)[1] if "/" in info.filename else ""
        if not ALLOWED.fullmatch(name):
            raise FeatcacheError(f"{path} holds {info.filename}, which featcache export never writes (only "
                                 "tensors, the program and featcache.json): refused")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise FeatcacheError(f"{path}: {info.filename} is compressed; featcache export stores every entry")
        entries[name] = info
    for needed in ("extra/featcache.json", "data/weights/model_weights_config.json",
                   "data/constants/model_constants_config.json", "byteorder"):
        if needed not in entries:
            raise FeatcacheError(f"{path} has no {needed}: not a model written by featcache export")
    order = archive.read(entries["byteorder"]).decode(errors="replace").strip()
    if order != sys.byteorder:
        raise FeatcacheError(f"{path} was written {order}-endian; this machine is {sys.byteorder}-endian")
    return entries


def _torch_reader(path: Path, entries: dict):
    """torch's own reader of the archive (miniz, what torch.export.load uses), listing what zipfile lists."""
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = set(reader.get_all_records())
    except (RuntimeError, OSError, ValueError) as error:
        raise FeatcacheError(f"{path}: torch's reader cannot read it ({' '.join(str(error).split())[:100]})") from None
    if records != set(entries):
        raise FeatcacheError(f"{path}: torch's reader and zipfile list different entries: refused")
    return reader


def _same_bytes(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, torch_reader) -> bytes:
    """An entry's bytes, which torch's reader must read alike: what is checked is what torch would load."""
    data = archive.read(info)
    name = info.filename.split("/", 1)[1]
    try:
        same = bytes(torch_reader.get_record(name)) == data
    except RuntimeError:
        same = False
    if not same:
        raise FeatcacheError(f"{path}: {info.filename} reads differently through torch's reader: refused")
    return data


def _json(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, torch_reader) -> dict:
    if info.file_size > MAX_JSON_BYTES:
        raise FeatcacheError(f"{path}: {info.filename} is {info.file_size:,} bytes, over {MAX_JSON_BYTES:,}")
    try:
        value = json.loads(_same_bytes(path, archive, info, torch_reader))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise FeatcacheError(f"{path}: {info.filename} is not valid JSON") from None
    if not isinstance(value, dict):
        raise FeatcacheError(f"{path}: {info.filename} is not a JSON object")
    return value


def _tensor(path: Path, archive: zipfile.ZipFile, entries: dict, name: str, entry,
            folder: str = "data/weights/") -> torch.Tensor:
    """One payload, checked against its table entry before its bytes are read."""
    where = f"{path}: tensor {name!r}"
    try:
        meta = entry["tensor_meta"]
        pickled, file = entry["use_pickle"], entry["path_name"]
        sizes = [size["as_int"] for size in meta["sizes"]]
        strides = [stride["as_int"] for stride in meta["strides"]]
        dtype, layout, offset = meta["dtype"], meta["layout"], meta["storage_offset"]["as_int"]
        device = meta["device"]["type"]
    except (KeyError, TypeError):
        raise FeatcacheError(f"{where} has no shape, dtype or payload recorded") from None
    if pickled is not False:
        raise FeatcacheError(f"{where} is a pickled payload (use_pickle): featcache never unpickles a file it is given")
    if len(sizes) > 8 or len(strides) != len(sizes) or not all(
            type(size) is int and 0 <= size < 1 << 40 for size in sizes):
        raise FeatcacheError(f"{where} has a malformed shape {sizes}")
    if type(dtype) is not int or dtype not in DTYPES or layout != STRIDED or device != "cpu" or offset != 0:
        raise FeatcacheError(f"{where} is not a plain CPU tensor (dtype {dtype}, layout {layout}, device {device})")
    contiguous = [math.prod(sizes[k + 1:]) for k in range(len(sizes))]
    if strides != contiguous and math.prod(sizes) > 1:
        raise FeatcacheError(f"{where} is not contiguous (strides {strides})")
    info = entries.pop(f"{folder}{file}", None) if isinstance(file, str) else None  # each payload read once
    if info is None:
        raise FeatcacheError(f"{where} names a payload {file!r} that the archive does not hold, or one "
                             "another tensor already named")
    needed = math.prod(sizes) * DTYPES[dtype].itemsize
    if info.file_size != needed:
        raise FeatcacheError(f"{where} needs {needed:,} bytes for shape {sizes}, its payload holds {info.file_size:,}")
    data = bytearray(archive.read(info))
    if not data:
        return torch.empty(sizes, dtype=DTYPES[dtype])
    return torch.frombuffer(data, dtype=DTYPES[dtype]).reshape(sizes)


def rebuilt_classifier(path: Path, metadata: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """featcache's Classifier of the run the file was exported from, filled with its tensors: the
    network is built from the backbone's name (torchvision or timm), never from the file's program."""
    from ..backbone import load_backbone, scratch_network
    from ..cache.key import backbone_name
    from ..data.transform import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from .export import Classifier, attach_head, exported_head

    try:
        approach, classes, image_size = metadata["approach"], metadata["classes"], metadata["image_size"]
        name = backbone_name(str(metadata["backbone"]))
    except (KeyError, TypeError, ValueError):
        raise FeatcacheError(f"{path}: featcache.json does not say which network it holds (approach, backbone, "
                             "classes, image size)") from None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and len(c) <= 1000 for c in classes)
            and approach in ("feature-extraction", "fine-tuning", "scratch")):
        raise FeatcacheError(f"{path}: featcache.json names no list of class names or an unknown approach")
    if type(image_size) is not int or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise FeatcacheError(f"{path}: featcache.json's image size {image_size!r} is not a whole number from "
                             f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}")

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the structure's init is overwritten: it draws from no stream
            if approach == "feature-extraction":
                backbone = load_backbone("random", 0, name)
                prefix = "network." + (f"{backbone.classifier_name}." if backbone.classifier_name else "1.")
                head = exported_head(path, metadata, {key.removeprefix(prefix): value for key, value in state.items()
                                                      if key.startswith(prefix)})
                network = attach_head(backbone, head)
            else:
                network = scratch_network(name, len(classes), 0)
        return Classifier(network, image_size)

    with torch.device("meta"):  # first without memory: what featcache.json names must be what the tensors fill
        expected = {key: value.shape for key, value in build().state_dict().items()}
    unfit = sorted(set(expected) ^ set(state)) or [key for key in expected if expected[key] != state[key].shape]
    if unfit:
        raise FeatcacheError(f"{path}: its tensors do not fit a {name} {approach} network of {len(classes)} classes "
                             f"(first misfit: {unfit[0]})")
    classifier = build()
    try:
        classifier.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise FeatcacheError(f"{path}: its tensors do not fit a {name} {approach} network of {len(classes)} classes "
                             f"({(lines[1] if len(lines) > 1 else lines[0]).strip()[:160]})") from None
    with torch.inference_mode():
        outputs = classifier.eval()(torch.zeros(1, 3, 2, 2, dtype=torch.uint8)).shape[-1]
    if outputs != len(classes):
        raise FeatcacheError(f"{path}: its network gives {outputs} class probabilities for the {len(classes)} "
                             "classes featcache.json names")
    return classifier.eval().requires_grad_(False)

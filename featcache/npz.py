"""Reading an .npz that someone else may have made: no pickle, and no more memory than the file's size.

featcache writes its .npz files (a run's predictions.npz, the cache folder's tables) with np.savez:
uncompressed members. np.load alone would allocate whatever shape a member's header declares and
inflate a deflated member of any size, so each member is checked first: stored uncompressed, its
header a plain (not object) dtype whose data fit in the member's bytes. Anything else is a ValueError
with one line saying why. No torch here.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `names` of the .npz at `path`; a file that is not such an archive is a ValueError."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
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

"""Atomic file writes: a reader never sees a half-written file, a killed job leaves none behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same directory; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# What np.load raises for a truncated, bit-flipped or foreign .npz (besides a missing key: KeyError).
NPZ_READ_ERRORS = (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def load_npz_with_meta(path: str | Path, kind: str, format_name: str, version: int,
                       arrays: Sequence[str]) -> tuple[dict, dict]:
    """The JSON ``meta`` member and the named arrays (None where absent) of an ssov npz file.

    Members load lazily, so only ``arrays`` are decompressed.  A missing, damaged or foreign file (``meta``
    without ``format_name`` / ``version``) gives one DataError naming it and ``kind``.
    """
    from .errors import DataError

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            values = {k: z[k] if k in z.files else None for k in arrays}
    except FileNotFoundError:
        raise DataError(f"{kind} missing: {path}") from None
    except NPZ_READ_ERRORS as e:
        raise DataError(f"{kind} file {path} is corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != format_name or meta.get("version") != version:
        raise DataError(f"{path}: not an ssov {kind} file of version {version}")
    return meta, values


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def save_npz_atomic(path: str | Path, compress_level: int = 1, **arrays) -> None:
    """Write arrays as an ``.npz`` (readable by ``np.load``) atomically.

    Deflate level 1 instead of numpy's default 6: batch jobs write one file per scan, and level 6 costs
    several times the CPU for a few percent smaller files.  Level 0 stores uncompressed.
    """
    method = zipfile.ZIP_DEFLATED if compress_level > 0 else zipfile.ZIP_STORED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method, compresslevel=compress_level or None) as zf:
            for name, arr in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

"""Atomic writes, hashing, the home folder and JSON: the one owner of each.

Every file is written to a temporary file in the target folder and renamed into place, so a killed
process leaves either the old or the complete new file, never a half-written one. Files get the
permissions of an ordinary ``open()`` under the process umask (``tempfile.mkstemp`` alone would make
them 0600). JSON is strict: NaN and infinities become ``null``, numpy scalars and arrays plain numbers
and lists, paths (and any other object) their text.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["array_key", "atomic_save_npy", "atomic_save_npz", "atomic_write", "atomic_write_json",
           "atomic_write_text", "canonical_json", "hash_obj", "home", "home_cache", "sha256_file", "to_jsonable"]


# ----------------------------------------------------------------------------- home folder
def home() -> Path:
    """``$BRAINGENBENCH_HOME`` (default ``~/.cache/braingenbench``): cohorts, priors and caches."""
    return Path(os.environ.get("BRAINGENBENCH_HOME", Path.home() / ".cache" / "braingenbench")).expanduser()


def home_cache(sub: str) -> Path:
    """``home()/cache/<sub>``, created."""
    p = home() / "cache" / sub
    p.mkdir(parents=True, exist_ok=True)
    return p


# ----------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON (anything else through ``str``): the text that :func:`hash_obj` hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_obj(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``.

    >>> hash_obj({"b": 1, "a": [1, 2]}) == hash_obj({"a": [1, 2], "b": 1})
    True
    """
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def array_key(a: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of an array."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- JSON
def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)  # paths and anything else without a JSON form: their text


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy values become numbers/lists, NaN/inf ``None``, anything else its ``str``.

    >>> to_jsonable({"a": np.float32(0.5), "b": [float("nan"), np.int64(3)], "c": np.ones(2)})
    {'a': 0.5, 'b': [None, 3], 'c': [1.0, 1.0]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    return to_jsonable(_plain(obj))


# ----------------------------------------------------------------------------- atomic writes
def _file_mode() -> int:
    """0666 under the process umask: what ``open(path, "w")`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, give it the umask's mode, rename it.

    The temporary file is removed if ``write`` fails, so ``path`` is either the old or the complete new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON (:func:`to_jsonable`, indented) atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """``np.savez`` atomically (the file name is kept as given, no ``.npz`` appended)."""
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, w)


def atomic_save_npy(path: str | Path, a: np.ndarray) -> None:
    """``np.save`` atomically."""
    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, a)

    atomic_write(path, w)

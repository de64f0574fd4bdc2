"""Content-addressed cache and atomic file writes.

A cached item's key is derived from what determines it — the bytes of the input array, the
extractor/metric fingerprint, the preprocessing and the grid — never from a user-chosen name, so a
changed checkpoint or cohort can never be served a stale entry. Writes go to a temporary file in the
same folder and are renamed into place, so a killed process leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def home() -> Path:
    """``$BRAINGENBENCH_HOME`` (default ``~/.cache/braingenbench``)."""
    return Path(os.environ.get("BRAINGENBENCH_HOME", Path.home() / ".cache" / "braingenbench")).expanduser()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_obj(obj) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def array_key(a: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of an array."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic(path, w)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_save_npz(path: Path, **arrays) -> None:
    def w(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(path, w)


def atomic_save_npy(path: Path, a: np.ndarray) -> None:
    def w(tmp):
        with open(tmp, "wb") as f:
            np.save(f, a)

    _atomic(path, w)


class FeatureCache:
    """Per-volume feature cache: ``root/<fingerprint hash>/<volume hash>.npy``.

    Args:
        root: cache folder (default ``$BRAINGENBENCH_HOME/cache/features``).
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else home() / "cache" / "features"
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, fingerprint: dict, volumes: np.ndarray,
                       compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Features (N, F) for volumes (N, 1, D, H, W); only the uncached volumes are computed,
        in one call to ``compute``."""
        folder = self.root / hash_obj(fingerprint)[:24]
        keys = [array_key(v) for v in volumes]
        out: list[np.ndarray | None] = []
        todo = []
        for i, k in enumerate(keys):
            p = folder / f"{k}.npy"
            if p.exists():
                try:
                    out.append(np.load(p))
                    self.hits += 1
                    continue
                except (OSError, ValueError):  # corrupt entry: recompute and overwrite
                    pass
            out.append(None)
            todo.append(i)
        if todo:
            self.misses += len(todo)
            feats = np.asarray(compute(volumes[todo]), dtype=np.float64)
            if feats.shape[0] != len(todo):
                raise RuntimeError(f"feature extractor returned {feats.shape[0]} rows for {len(todo)} volumes")
            if not (folder / "fingerprint.json").exists():
                atomic_write_json(folder / "fingerprint.json", fingerprint)
            for j, i in enumerate(todo):
                atomic_save_npy(folder / f"{keys[i]}.npy", feats[j])
                out[i] = feats[j]
        return np.stack(out) if out else np.zeros((0, 0))

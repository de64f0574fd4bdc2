"""Content-addressed feature cache.

A cached item's key is derived from what determines it — the bytes of the input array, the
extractor/metric fingerprint, the preprocessing and the grid — never from a user-chosen name, so a
changed checkpoint or cohort can never be served a stale entry. Entries are written atomically
(:mod:`core.io`), so a killed process leaves no half-written entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from core.io import array_key, atomic_save_npy, atomic_write_json, hash_obj, home

__all__ = ["FeatureCache"]


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

"""Volume sets that stream: N volumes read a shard at a time, never all at once.

A suite at 1 mm with N = 400 holds 400 x 7 M voxels per set (11 GB in float32); the metrics only
ever need per-volume summaries (features, histograms, tissue medians, per-pair SSIM), so every set
the runner hands to the metrics is a :class:`VolumeSet`: an ordered collection with a fixed shard
partition, whose shards are loaded on demand from where the volumes already live (generation shards
in the run folder, the cohort's per-subject files). Peak memory is then a few shards, not N.

The shard partition is part of the result: per-shard work (feature extraction, per-volume metrics)
runs on the same partition whichever executor runs it, so results are bit-identical on one process
or on a cluster.

Implementations:
    :class:`ArrayVolumes` — an in-memory ``(N, 1, D, H, W)`` array (tests, small sets);
    :class:`NpzShards` — the runner's generation shards ``samples/shard_XXXX.npz``;
    :class:`CohortVolumes` — subjects of a cohort, loaded from the cohort folder;
    :class:`ConcatVolumes` — sets one after the other (the steps of a follow-up run).

All are picklable (paths and ids, not arrays, for the on-disk kinds), so a remote task can load
its own shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from core.runfiles import read_shard

DEFAULT_SHARD = 8


class VolumeSet:
    """An ordered set of ``n`` volumes of shape ``(1, *spatial)`` read by shards.

    Subclasses implement :meth:`_load(start, stop)`; ``shard_size`` fixes the partition.
    """

    n: int
    spatial: tuple[int, int, int]
    shard_size: int = DEFAULT_SHARD

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, 1, *self.spatial)

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def bounds(self, k: int) -> tuple[int, int]:
        """``[start, stop)`` of shard ``k``."""
        if not 0 <= k < self.n_shards:
            raise IndexError(f"shard {k} out of range (the set has {self.n_shards})")
        return k * self.shard_size, min(self.n, (k + 1) * self.shard_size)

    def shard(self, k: int) -> np.ndarray:
        """Volumes of shard ``k``: float32 ``(stop - start, 1, *spatial)``."""
        start, stop = self.bounds(k)
        out = np.asarray(self._load(start, stop), dtype=np.float32)
        if out.shape != (stop - start, 1, *self.spatial):
            raise ValueError(f"{self!r}: shard {k} has shape {out.shape}, expected {(stop - start, 1, *self.spatial)}")
        return out

    def shards(self):
        """Iterate over the shards in order."""
        for k in range(self.n_shards):
            yield self.shard(k)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Volumes at ``indices`` (any order, repeats allowed), loading only the shards they fall in."""
        idx = self._indices(indices)
        out = np.empty((idx.size, 1, *self.spatial), dtype=np.float32)
        for k in np.unique(idx // self.shard_size):
            start, _ = self.bounds(int(k))
            block = self.shard(int(k))
            sel = np.nonzero(idx // self.shard_size == k)[0]
            out[sel] = block[idx[sel] - start]
            del block
        return out

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=int).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"indices out of range for a set of {self.n} volumes")
        return idx

    def materialize(self) -> np.ndarray:
        """All volumes in one array (defeats streaming: for small sets and tests only)."""
        out = np.empty(self.shape, dtype=np.float32)
        for k in range(self.n_shards):
            start, stop = self.bounds(k)
            out[start:stop] = self.shard(k)
        return out

    def _load(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class ArrayVolumes(VolumeSet):
    """An in-memory array ``(N, 1, D, H, W)`` seen as a volume set."""

    def __init__(self, array: np.ndarray, shard_size: int = DEFAULT_SHARD):
        a = np.asarray(array)
        if a.ndim != 5 or a.shape[1] != 1:
            raise ValueError(f"volumes must be (N, 1, D, H, W); got shape {a.shape}")
        self.array, self.n, self.spatial, self.shard_size = a, int(a.shape[0]), tuple(a.shape[2:]), int(shard_size)

    def _load(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def materialize(self) -> np.ndarray:
        return np.asarray(self.array, dtype=np.float32)

    def __repr__(self) -> str:
        return f"ArrayVolumes(n={self.n}, spatial={self.spatial})"


class NpzShards(VolumeSet):
    """Generation shards: file ``k`` holds volumes ``[k * shard_size, (k + 1) * shard_size)`` under ``key``."""

    def __init__(self, paths: Sequence[str | Path], n: int, spatial: Sequence[int], shard_size: int,
                 key: str = "volumes"):
        self.paths = [str(p) for p in paths]
        self.n, self.spatial, self.shard_size, self.key = int(n), tuple(int(s) for s in spatial), int(shard_size), key
        if len(self.paths) != self.n_shards:
            raise ValueError(f"{len(self.paths)} shard files for {self.n} volumes in shards of {self.shard_size}")

    def _load(self, start: int, stop: int) -> np.ndarray:
        return read_shard(self.paths[start // self.shard_size], self.key)

    def __repr__(self) -> str:
        return f"NpzShards(n={self.n}, first={self.paths[0] if self.paths else None!r})"


class CohortVolumes(VolumeSet):
    """Subjects of a cohort, in the given order, loaded from the cohort folder shard by shard."""

    def __init__(self, cohort, subjects: Sequence, shard_size: int = DEFAULT_SHARD):
        self.cohort, self.subjects = cohort, list(subjects)
        self.n, self.spatial, self.shard_size = len(self.subjects), tuple(cohort.grid.shape), int(shard_size)

    def _load(self, start: int, stop: int) -> np.ndarray:
        return self.cohort.load_volumes(self.subjects[start:stop])

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Only the requested subjects' files are read (one file per distinct index)."""
        uniq, inv = np.unique(self._indices(indices), return_inverse=True)
        return self.cohort.load_volumes([self.subjects[i] for i in uniq])[inv.reshape(-1)]

    def __repr__(self) -> str:
        return f"CohortVolumes({self.cohort.name!r}, n={self.n})"


class ConcatVolumes(VolumeSet):
    """Volume sets one after the other (the steps of follow-up generation), with its own shard partition."""

    def __init__(self, parts: Sequence[VolumeSet], shard_size: int = DEFAULT_SHARD):
        self.parts = list(parts)
        if not self.parts or len({p.spatial for p in self.parts}) != 1:
            raise ValueError("ConcatVolumes needs at least one set, all of the same spatial shape")
        self.n, self.spatial, self.shard_size = sum(p.n for p in self.parts), self.parts[0].spatial, int(shard_size)
        self.offsets = np.cumsum([0] + [p.n for p in self.parts])

    def _load(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, 1, *self.spatial), np.float32)
        idx = np.arange(start, stop)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for j in np.unique(which):
            sel = which == j
            out[sel] = self.parts[j].take(idx[sel] - self.offsets[j])
        return out

    def __repr__(self) -> str:
        return f"ConcatVolumes({self.parts!r})"


def as_volume_set(x: VolumeSet | np.ndarray, shard_size: int = DEFAULT_SHARD) -> VolumeSet:
    """A :class:`VolumeSet` view of ``x`` (an array is wrapped, a set is returned as is)."""
    return x if isinstance(x, VolumeSet) else ArrayVolumes(x, shard_size)


# --------------------------------------------------------------------------- per-shard computation
def concat_results(parts: list):
    """Concatenate per-shard results along axis 0: arrays, or dicts / tuples of arrays (per entry)."""
    if not parts:
        raise ValueError("no shards to concatenate")
    first = parts[0]
    if isinstance(first, dict):
        return {k: concat_results([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(concat_results([p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def apply_to_shard(fn, sets: Sequence[VolumeSet], k: int):
    """``fn(*[s.shard(k) for s in sets])``: the unit of work an executor runs."""
    return fn(*[s.shard(k) for s in sets])


def check_aligned(sets: Sequence[VolumeSet]) -> int:
    """The common shard count of sets mapped together (same n and shard size), or an error."""
    if not sets:
        raise ValueError("map over no volume sets")
    layouts = {(s.n, s.shard_size) for s in sets}
    if len(layouts) != 1:
        raise ValueError(f"volume sets mapped together must have the same size and shard size; got {sorted(layouts)}")
    return sets[0].n_shards


def map_in_process(fn, sets: Sequence[VolumeSet]) -> list:
    """The default shard mapper: every shard in this process, in order (one shard in memory at a time)."""
    return [apply_to_shard(fn, sets, k) for k in range(check_aligned(sets))]

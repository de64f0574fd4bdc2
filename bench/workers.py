"""What the runner's tasks build and run: the generator, the feature-extractor pool and the two
shard tasks (generate a shard, extract one extractor's features of a shard).

Tasks are picklable (a Ray worker receives them) and carry *specs*, not objects: a spec says how to
build its object and is keyed by everything that determines it. The executor hands each task its
store of built objects (:meth:`bind_store`), so a worker builds a generator or a pool once and reuses
it for every task it runs; the local executor's store is seeded with the driver's own objects and
released when the run closes its executor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench import registry
from bench.args import bind_args, parameters
from bench.cache import FeatureCache
from bench.memory import DEFAULT_HEAP, apply_heap_policy, compute_allocation
from cohorts.grid import Grid, get_grid
from core.io import array_key, hash_obj, home_cache
from core.runfiles import write_shard
from generators.base import GenerationOutput, GeneratorContext, Prompt

__all__ = ["ExtractorPool", "FeatureShardTask", "FollowUpShardTask", "GenerateShardTask", "GeneratorSpec", "PoolSpec", "build_generator",
           "build_metric", "check_extractor_args", "resolve_device"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_generator(name: str, raw_args: dict, ctx: GeneratorContext, cls: type | None = None):
    """``(generator, bound args)``; ``cls`` (default: the registry's entry) lets a worker build a
    generator the driver registered at run time."""
    cls = cls or registry.generators.get(name)
    args = bind_args(cls, raw_args, f"generator {name!r}")
    return cls(ctx, **args), args


def build_metric(spec):
    """The metric of a suite entry, its arguments checked against the class."""
    cls = registry.metrics.get(spec.name)
    args = bind_args(cls, spec.args, f"metric {spec.name!r} (suite key {spec.key!r})", skip=("self",))
    return cls(**args)


def check_extractor_args(extractors: list[str], extractor_args: dict) -> None:
    """Before any work: every extractor is registered and every ``--extractor-args`` key is accepted
    by at least one of them.

    Raises:
        UnknownNameError: an unknown extractor (with "did you mean").
        ValueError: an argument no extractor of the suite takes (naming the accepted ones).
    """
    accepted: set[str] = set()
    for name in extractors:
        accepted |= set(parameters(registry.extractors.get(name), skip=("self",)))
    unknown = sorted(set(extractor_args) - accepted)
    if unknown:
        from core.names import did_you_mean

        hint = did_you_mean(unknown[0], sorted(accepted), 2)
        raise ValueError(f"--extractor-args {unknown} are not accepted by any extractor this suite uses "
                         f"({', '.join(sorted(set(extractors))) or 'none'}){hint} (accepted: "
                         f"{', '.join(sorted(accepted)) or 'none'})")


class ExtractorPool:
    """Builds extractors on demand (with the user's ``--extractor-args``) and caches features."""

    def __init__(self, device: str, extractor_args: dict, cache: FeatureCache, grid: Grid,
                 brain_mask: np.ndarray | None = None):
        self.device, self.extractor_args, self.cache, self.grid = device, dict(extractor_args), cache, grid
        self.brain_mask = brain_mask
        self._built: dict[str, Any] = {}

    def get(self, name: str):
        key = registry.extractors.canonical(name)
        if key not in self._built:
            cls = registry.extractors.get(name)
            params = parameters(cls, skip=("self",))
            raw = {k: v for k, v in self.extractor_args.items() if k in params}
            if "device" in params and "device" not in raw:
                raw["device"] = self.device
            if "brain_mask" in params and self.brain_mask is not None:
                raw["brain_mask"] = self.brain_mask
            self._built[key] = cls(**bind_args(cls, raw, f"extractor {name!r}", skip=("self",)))
        return self._built[key]

    def fingerprint(self, name: str) -> dict:
        fp = dict(self.get(name).fingerprint())
        fp["grid"] = self.grid.to_dict()
        return fp

    def features(self, name: str, volumes: np.ndarray) -> np.ndarray:
        ex = self.get(name)
        return self.cache.get_or_compute(self.fingerprint(name), volumes,
                                         lambda v: ex(v, voxel_size=self.grid.voxel_size))

    def feature_names(self, name: str) -> list[str] | None:
        names = getattr(self.get(name), "feature_names", None)
        return list(names) if names is not None else None

    def close(self) -> None:
        """Release what extractors hold between calls (e.g. the radiomics processes)."""
        for ex in self._built.values():
            if hasattr(ex, "close"):
                ex.close()


class PoolSpec:
    """What a worker needs to build an extractor pool identical to the driver's (picklable; the key is
    computed once, on the driver)."""

    def __init__(self, device: str, extractor_args: dict, grid: str, brain_mask: np.ndarray | None, cache_root: Path,
                 heap: str = DEFAULT_HEAP):
        self.device, self.extractor_args, self.grid, self.cache_root = device, dict(extractor_args), grid, str(cache_root)
        self.heap = heap  # the run's heap policy (bench.memory); not part of the key: it changes no number
        self.mask_shape = None if brain_mask is None else tuple(brain_mask.shape)
        self.packed_mask = None if brain_mask is None else np.packbits(brain_mask)
        mask_hash = None if brain_mask is None else array_key(self.packed_mask)
        self.key = "pool:" + hash_obj([device, self.extractor_args, grid, mask_hash, self.mask_shape, self.cache_root])

    def build(self, store: dict) -> ExtractorPool:
        if self.key not in store:
            apply_heap_policy(self.heap)  # a worker on another node did not inherit the driver's setting
            mask = None if self.packed_mask is None else \
                np.unpackbits(self.packed_mask)[:int(np.prod(self.mask_shape))].reshape(self.mask_shape).astype(bool)
            store[self.key] = ExtractorPool(resolve_device(self.device), self.extractor_args,
                                            FeatureCache(Path(self.cache_root)), get_grid(self.grid), mask)
        return store[self.key]


class GeneratorSpec:
    """What a worker needs to build the run's generator: (name, args, cohort, grid, device)."""

    def __init__(self, name: str, args: dict, reference: str, reference_args: dict, grid: str, device: str,
                 heap: str = DEFAULT_HEAP):
        self.name, self.args, self.reference, self.reference_args = name, dict(args), reference, dict(reference_args)
        self.grid, self.device, self.heap = grid, device, heap  # heap: not part of the key (changes no number)
        self.cls = registry.generators.get(name)  # pickled by reference: plugins and run-time registrations work

    @property
    def key(self) -> str:
        return "generator:" + hash_obj([self.name, self.args, self.reference, self.reference_args, self.grid,
                                        self.device])

    def build(self, store: dict):
        if self.key not in store:
            from bench.stages import resolve_cohort

            apply_heap_policy(self.heap)  # a worker on another node did not inherit the driver's setting
            grid = get_grid(self.grid)
            cohort = resolve_cohort(self.reference, grid, self.reference_args, quiet=True)
            ctx = GeneratorContext(cohort=cohort, grid=grid, device=resolve_device(self.device),
                                   cache_dir=home_cache("generators"), quiet=True)
            store[self.key] = build_generator(self.name, self.args, ctx, self.cls)[0]
        return store[self.key]


class _StoreTask:
    """A task that builds what it needs through the executor's store (see :meth:`bind_store`)."""

    _store: dict | None = None

    def bind_store(self, store: dict):
        """A copy of the task that builds into and reuses ``store`` (the executor's)."""
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound._store = store
        return bound

    def __getstate__(self) -> dict:  # never ship built objects to a worker
        return {k: v for k, v in self.__dict__.items() if k != "_store"}

    @property
    def store(self) -> dict:
        if self._store is None:  # called directly, outside an executor: a private store
            self._store = {}
        return self._store


class FeatureShardTask(_StoreTask):
    """Features of one shard of a volume set (a picklable task of the shard index)."""

    def __init__(self, pool: PoolSpec, extractor: str, volumes):
        self.pool, self.extractor, self.volumes = pool, extractor, volumes

    def __call__(self, k: int) -> np.ndarray:
        return self.pool.build(self.store).features(self.extractor, self.volumes.shard(k))


class GenerateShardTask(_StoreTask):
    """Generate one shard of prompts and save it (a picklable task of ``(index, prompts, seed, path)``)."""

    def __init__(self, spec: GeneratorSpec, grid_shape: tuple[int, ...]):
        self.spec, self.grid_shape = spec, tuple(grid_shape)

    def __call__(self, item: tuple[int, list[Prompt], int, str]) -> str:
        k, chunk, shard_seed, path = item
        generator = self.spec.build(self.store)
        with compute_allocation():  # torch activations from the heap, trimmed afterwards (bench.memory)
            res: GenerationOutput = generator.generate(chunk, seed=shard_seed)
        res.validate(len(chunk), self.grid_shape, getattr(generator, "name", "?"))
        write_shard(path, res.volumes, [p.subject_id or "" for p in chunk], res.latents)
        return path


class FollowUpShardTask(_StoreTask):
    """Generate one shard of follow-ups from the matching shard of ``previous`` (a volume set aligned
    with the prompts) and save it; a picklable task of ``(index, prompts, seed, path)``."""

    def __init__(self, spec: GeneratorSpec, grid_shape: tuple[int, ...], previous):
        self.spec, self.grid_shape, self.previous = spec, tuple(grid_shape), previous

    def __call__(self, item: tuple[int, list[Prompt], int, str]) -> str:
        k, chunk, shard_seed, path = item
        generator = self.spec.build(self.store)
        start = k * self.previous.shard_size
        before = self.previous.take(range(start, start + len(chunk)))
        with compute_allocation():
            res: GenerationOutput = generator.follow_up(before, chunk, seed=shard_seed)
        res.validate(len(chunk), self.grid_shape, getattr(generator, "name", "?"))
        write_shard(path, res.volumes, [p.subject_id or "" for p in chunk], res.latents)
        return path

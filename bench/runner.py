"""The only place that wires generators, feature extractors and metrics together.

Stages (each resumable; a run killed half-way keeps what it finished):

1. cohort — build or load the reference cohort on the suite grid;
2. prompts — captions of the cohort's test split (seeded order), with the caption-matched reference
   volume and a matched real "floor" subject per prompt;
3. generate — in fixed shards of ``SHARD`` prompts, each saved to ``<run>/samples/shard_XXXX.npz``;
4. features — extracted once per (volume bytes, extractor fingerprint) in the content-addressed cache,
   and a copy per set kept in ``<run>/features/<extractor>/<set>.npy`` (for paired comparisons);
5. metrics — each saved to ``<run>/metrics/<key>.json`` as soon as it is done;
6. record — ``<run>/record.json``.

Streaming: no stage holds a whole volume set. Generated volumes stay in their shard files and real
volumes in the cohort folder; the metrics see them as :class:`~metrics.volumes.VolumeSet` objects
read a shard at a time, so peak memory grows with ``SHARD``, not with the number of prompts.

Execution: generation shards, feature extraction per (extractor, set, shard) and per-volume metric
functions per shard are tasks run by an executor (:mod:`bench.executors`: this process, or a Ray
cluster with ``--executor ray``). The shard partition is fixed here, so the numbers are identical
whichever executor ran them, and a run interrupted under one executor resumes under the other.

The run folder name is ``<suite>-<generator>-<hash>``, the hash covering everything that changes the
numbers, so re-running the same command resumes (or returns) the same run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import registry
from bench.args import bind_args
from bench.cache import FeatureCache, array_key, atomic_save_npy, atomic_save_npz, atomic_write_json, hash_obj
from bench.data.captions import parse_caption
from bench.data.grid import Grid
from bench.data.subject import Cohort, Subject
from bench.records import SCHEMA_VERSION, environment
from bench.suite import Suite, load_suite
from generators.base import GenerationOutput, GeneratorContext, Prompt, seed_for
from bench.executors import make_executor
from bench.memory import bound_heap_growth, compute_allocation, release_free_memory
from metrics.base import EvalSets, MetricResult
from metrics.volumes import CohortVolumes, NpzShards

log = logging.getLogger("braingenbench.runner")

SHARD = 8  # prompts per generation shard; fixed so that results do not depend on it


@dataclass
class RunConfig:
    """Everything ``python -m bench run`` takes (CLI flags equal these fields)."""

    generator: str
    suite: str | Path
    generator_args: dict[str, Any] = field(default_factory=dict)
    extractor_args: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    out: Path = Path("runs")
    seed: int | None = None
    limit: int | None = None
    device: str = "auto"
    resume: bool = True
    quiet: bool = False
    executor: str = "local"
    ray_address: str | None = None


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ------------------------------------------------------------------------------------------ cohort
def resolve_cohort(reference: str, grid: Grid, args: dict, quiet: bool = False) -> Cohort:
    """A registered cohort name (built lazily) or the path of a prepared cohort folder."""
    p = Path(reference)
    if (p / "cohort.json").exists():
        cohort = Cohort.load(p)
        if cohort.grid.name != grid.name:
            raise ValueError(f"{p}: cohort is on grid {cohort.grid.name}, the suite needs {grid.name}; "
                             f"prepare it with --grid {grid.name}")
        return cohort
    if p.exists() and p.is_dir():
        raise ValueError(f"{p}: not a prepared cohort (no cohort.json); prepare it with "
                         "`python -m bench cohort prepare ...`")
    cls = registry.cohorts.get(reference)
    return cls.get(grid.name, quiet=quiet, **args)


# ----------------------------------------------------------------------------------------- prompts
def select_prompts(cohort: Cohort, n: int, seed: int) -> list[Subject]:
    test = sorted(cohort.split("test"), key=lambda s: s.subject_id)
    if not test:
        raise ValueError(f"cohort {cohort.name!r} ({cohort.root}) has no test split")
    if n > len(test):
        log.warning("suite asks for %d prompts but the test split has %d subjects; using %d", n, len(test), len(test))
        n = len(test)
    order = np.random.default_rng([seed, 101]).permutation(len(test))
    return [test[i] for i in order[:n]]


def match_floor(reference: list[Subject], pool: list[Subject], seed: int) -> list[Subject]:
    """For each reference subject, an unused real subject of the pool with the same modality, then
    the same sex, then the closest age (seeded tie-breaks): the real-vs-real comparison set."""
    rng = np.random.default_rng([seed, 202])
    pool = sorted(pool, key=lambda s: s.subject_id)
    jitter = {s.subject_id: rng.random() for s in pool}
    used: set[str] = set()
    out = []
    for ref in reference:
        cands = [s for s in pool if s.subject_id not in used and s.subject_id != ref.subject_id]
        if not cands:  # pool exhausted: reuse (recorded as a warning by the caller)
            used.clear()
            cands = [s for s in pool if s.subject_id != ref.subject_id]
        if not cands:
            raise ValueError("no subjects available for the real-vs-real floor set")

        def score(s: Subject):
            age_gap = abs((s.age or 0) - (ref.age or 0)) if (s.age is not None and ref.age is not None) else 1e3
            return (s.modality != ref.modality, s.sex != ref.sex, age_gap, jitter[s.subject_id])

        best = min(cands, key=score)
        used.add(best.subject_id)
        out.append(best)
    return out


# ---------------------------------------------------------------------------------------- building
def build_generator(name: str, raw_args: dict, ctx: GeneratorContext, cls: type | None = None):
    """``(generator, bound args)``; ``cls`` (default: the registry's entry) lets a worker build a
    generator the driver registered at run time."""
    cls = cls or registry.generators.get(name)
    args = bind_args(cls, raw_args, f"generator {name!r}")
    return cls(ctx, **args), args


def build_metric(spec):
    cls = registry.metrics.get(spec.name)
    args = bind_args(cls, spec.args, f"metric {spec.name!r} (suite key {spec.key!r})", skip=("self",))
    return cls(**args)


class ExtractorPool:
    """Builds extractors on demand (with the user's ``--extractor-args``) and caches features."""

    def __init__(self, device: str, extractor_args: dict, cache: FeatureCache, grid: Grid,
                 brain_mask: np.ndarray | None = None):
        self.device, self.extractor_args, self.cache, self.grid = device, dict(extractor_args), cache, grid
        self.brain_mask = brain_mask
        self._built: dict[str, Any] = {}
        self._used_args: set[str] = set()

    def get(self, name: str):
        key = registry.extractors.canonical(name)
        if key not in self._built:
            cls = registry.extractors.get(name)
            from bench.args import parameters

            params = parameters(cls, skip=("self",))
            raw = {k: v for k, v in self.extractor_args.items() if k in params}
            self._used_args |= set(raw)
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

    def unused_args(self) -> set[str]:
        return set(self.extractor_args) - self._used_args

    def close(self) -> None:
        """Release what extractors hold between calls (e.g. the radiomics processes)."""
        for ex in self._built.values():
            if hasattr(ex, "close"):
                ex.close()


# Per-process caches of what tasks build (a generator, an extractor pool): a worker process builds each
# once and reuses it for every task it runs; the local executor finds the driver's own objects here.
_WORKER_OBJECTS: dict[str, Any] = {}


class PoolSpec:
    """What a worker needs to build an extractor pool identical to the driver's (picklable; the key is
    computed once, on the driver)."""

    def __init__(self, device: str, extractor_args: dict, grid: str, brain_mask: np.ndarray | None, cache_root: Path):
        self.device, self.extractor_args, self.grid, self.cache_root = device, dict(extractor_args), grid, str(cache_root)
        self.mask_shape = None if brain_mask is None else tuple(brain_mask.shape)
        self.packed_mask = None if brain_mask is None else np.packbits(brain_mask)
        mask_hash = None if brain_mask is None else array_key(self.packed_mask)
        self.key = "pool:" + hash_obj([device, self.extractor_args, grid, mask_hash, self.mask_shape, self.cache_root])

    def build(self) -> ExtractorPool:
        if self.key not in _WORKER_OBJECTS:
            from bench.data.grid import get_grid

            bound_heap_growth()
            mask = None if self.packed_mask is None else \
                np.unpackbits(self.packed_mask)[:int(np.prod(self.mask_shape))].reshape(self.mask_shape).astype(bool)
            _WORKER_OBJECTS[self.key] = ExtractorPool(resolve_device(self.device), self.extractor_args,
                                                      FeatureCache(Path(self.cache_root)), get_grid(self.grid), mask)
        return _WORKER_OBJECTS[self.key]


class FeatureShardTask:
    """Features of one shard of a volume set (a picklable task of the shard index)."""

    def __init__(self, pool: PoolSpec, extractor: str, volumes):
        self.pool, self.extractor, self.volumes = pool, extractor, volumes

    def __call__(self, k: int) -> np.ndarray:
        return self.pool.build().features(self.extractor, self.volumes.shard(k))


class GeneratorSpec:
    """What a worker needs to build the run's generator: (name, args, cohort, grid, device)."""

    def __init__(self, name: str, args: dict, reference: str, reference_args: dict, grid: str, device: str):
        self.name, self.args, self.reference, self.reference_args = name, dict(args), reference, dict(reference_args)
        self.grid, self.device = grid, device
        self.cls = registry.generators.get(name)  # pickled by reference: plugins and run-time registrations work

    @property
    def key(self) -> str:
        return "generator:" + hash_obj([self.name, self.args, self.reference, self.reference_args, self.grid,
                                        self.device])

    def build(self):
        if self.key not in _WORKER_OBJECTS:
            from bench.data.grid import get_grid

            bound_heap_growth()  # a worker on another node did not inherit the driver's setting
            grid = get_grid(self.grid)
            cohort = resolve_cohort(self.reference, grid, self.reference_args, quiet=True)
            ctx = GeneratorContext(cohort=cohort, grid=grid, device=resolve_device(self.device),
                                   cache_dir=_home_cache("generators"), quiet=True)
            _WORKER_OBJECTS[self.key] = build_generator(self.name, self.args, ctx, self.cls)[0]
        return _WORKER_OBJECTS[self.key]


class GenerateShardTask:
    """Generate one shard of prompts and save it (a picklable task of ``(index, prompts, seed, path)``)."""

    def __init__(self, spec: GeneratorSpec, grid_shape: tuple[int, ...]):
        self.spec, self.grid_shape = spec, tuple(grid_shape)

    def __call__(self, item: tuple[int, list[Prompt], int, str]) -> str:
        k, chunk, shard_seed, path = item
        generator = self.spec.build()
        with compute_allocation():  # torch activations from the heap, trimmed afterwards (bench.memory)
            res: GenerationOutput = generator.generate(chunk, seed=shard_seed)
        res.validate(len(chunk), self.grid_shape, getattr(generator, "name", "?"))
        arrays = {"volumes": np.asarray(res.volumes, dtype=np.float32),
                  "subject_ids": np.array([p.subject_id or "" for p in chunk])}
        if res.latents is not None:
            arrays["latents"] = np.asarray(res.latents)
        atomic_save_npz(Path(path), **arrays)
        return path


# -------------------------------------------------------------------------------------------- run
def code_fingerprint() -> str:
    """sha256 over the source of the packages that make the numbers: a run folder is only resumed by
    the same code."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in ("bench", "generators", "metrics"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def run_id_for(cfg: RunConfig, suite: Suite, gen_args: dict, reference: str, generator_info: dict | None = None,
               cohort_hash: str | None = None) -> str:
    """The run folder name. Keyed on content, not only on arguments: the generator's ``info()`` (which
    carries its checkpoint's sha256, or the folder adapter's sample-file digest) and the reference
    cohort's content hash are part of the key, so replacing a checkpoint's bytes at the same path
    starts a new run instead of resuming the old one."""
    key = {"code": code_fingerprint(), "generator": registry.generators.canonical(cfg.generator),
           "generator_args": gen_args, "generator_info": _jsonable(generator_info or {}), "cohort": cohort_hash,
           "extractor_args": cfg.extractor_args, "suite": suite.to_dict(), "reference": reference,
           "seed": cfg.seed if cfg.seed is not None else suite.seed, "limit": cfg.limit, "shard": SHARD}
    return f"{suite.name}-{registry.generators.canonical(cfg.generator)}-{hash_obj(key)[:10]}"


def run(cfg: RunConfig) -> Path:
    """Run a suite against a generator; returns the path of ``record.json``."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    bound_heap_growth()  # before any volume is allocated (see bench.memory)
    suite = load_suite(cfg.suite)
    registry.generators.canonical(cfg.generator)  # fail fast on a typo, before any work
    seed = cfg.seed if cfg.seed is not None else suite.seed
    device = resolve_device(cfg.device)
    reference = cfg.reference or suite.reference

    t = time.perf_counter()
    cohort = resolve_cohort(reference, suite.grid, suite.reference_args if cfg.reference is None else {}, cfg.quiet)
    timings["cohort"] = time.perf_counter() - t

    ctx = GeneratorContext(cohort=cohort, grid=suite.grid, device=device,
                           cache_dir=_home_cache("generators"), quiet=cfg.quiet)
    t = time.perf_counter()
    generator, gen_args = build_generator(cfg.generator, cfg.generator_args, ctx)
    metrics = [(spec, build_metric(spec)) for spec in suite.metrics]
    timings["setup"] = time.perf_counter() - t

    run_id = run_id_for(cfg, suite, gen_args, reference, generator.info(), cohort.content_hash)
    run_dir = Path(cfg.out) / run_id
    if run_dir.exists() and not cfg.resume:
        shutil.rmtree(run_dir)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
    log.info("run %s -> %s", run_id, run_dir)

    # ---- prompts, caption-matched references and the matched real floor set
    t = time.perf_counter()
    n = suite.n_prompts if cfg.limit is None else min(cfg.limit, suite.n_prompts)
    ref_subjects = select_prompts(cohort, n, seed)
    floor_subjects = match_floor(ref_subjects, cohort.split(suite.floor_split), seed)
    prompts = [Prompt(s.caption, parse_caption(s.caption), s.subject_id) for s in ref_subjects]
    atomic_write_json(run_dir / "prompts.json", [{"subject_id": p.subject_id, "text": p.text,
                                                  "floor_subject_id": f.subject_id}
                                                 for p, f in zip(prompts, floor_subjects)])
    timings["prompts"] = time.perf_counter() - t

    # ---- generation, shard by shard (tasks on the executor; finished shards are kept)
    executor = make_executor(cfg.executor, ray_address=cfg.ray_address)
    try:
        return _evaluate(cfg, suite, cohort, generator, gen_args, metrics, run_id, run_dir, prompts, ref_subjects,
                         floor_subjects, seed, device, reference, executor, timings, t_start)
    finally:
        executor.close()


def _evaluate(cfg: RunConfig, suite: Suite, cohort: Cohort, generator, gen_args: dict, metrics: list, run_id: str,
              run_dir: Path, prompts: list[Prompt], ref_subjects: list[Subject], floor_subjects: list[Subject],
              seed: int, device: str, reference: str, executor, timings: dict, t_start: float) -> Path:
    t = time.perf_counter()
    spec = GeneratorSpec(registry.generators.canonical(cfg.generator), gen_args, reference,
                         suite.reference_args if cfg.reference is None else {}, suite.grid.name, cfg.device)
    _WORKER_OBJECTS[spec.key] = generator  # the local executor reuses the generator built above
    generated = generate_shards(executor, spec, prompts, seed, suite.grid, run_dir / "samples", cfg.quiet)
    timings["generate"] = time.perf_counter() - t

    # ---- evaluation data: volume sets read shard by shard, never all at once
    t = time.perf_counter()
    reference_vols = CohortVolumes(cohort, ref_subjects, SHARD)
    floor_vols = CohortVolumes(cohort, floor_subjects, SHARD)
    needs_train = any(getattr(m, "requires_train", False) for _, m in metrics)
    train_subjects = cohort.split("train") if needs_train else []
    train_vols = CohortVolumes(cohort, train_subjects, SHARD) if needs_train else None
    extra: dict[str, Any] = {"cohort_hash": cohort.content_hash}
    if needs_train:
        extra["train_attributes"] = [s.attributes() for s in train_subjects]
    if any(getattr(m, "requires_atlas", False) for _, m in metrics):
        extra["atlas"] = atlas_on_grid(suite.grid)
    if all(s.labels is not None for s in ref_subjects):
        from metrics.functional.histogram import consensus_labels

        extra["tissue_consensus"] = consensus_labels(cohort.load_labels(s) for s in ref_subjects)
    brain_mask = cohort.brain_mask()
    pool = ExtractorPool(device, cfg.extractor_args, FeatureCache(), suite.grid, brain_mask)
    # workers resolve the requested device themselves (a GPU worker under a CPU-only driver uses its GPU)
    pool_spec = PoolSpec(cfg.device, cfg.extractor_args, suite.grid.name, brain_mask, pool.cache.root)
    _WORKER_OBJECTS[pool_spec.key] = pool  # the local executor reuses this pool
    volume_sets = {"generated": generated, "reference": reference_vols, "floor": floor_vols, "train": train_vols}
    memo: dict[tuple[str, str], np.ndarray] = {}

    def features(extractor: str, which: str) -> np.ndarray:
        if volume_sets.get(which) is None:
            raise KeyError(f"no volume set {which!r} (have: {[k for k, v in volume_sets.items() if v is not None]})")
        k = (registry.extractors.canonical(extractor), which)
        if k not in memo:
            t0 = time.perf_counter()
            vs = volume_sets[which]
            parts = executor.map(FeatureShardTask(pool_spec, extractor, vs), list(range(vs.n_shards)),
                                 desc=f"{k[0]} features of {which}", gpu=True)
            memo[k] = np.concatenate(parts) if parts else np.zeros((0, 0))
            timings["features"] = timings.get("features", 0.0) + time.perf_counter() - t0
            if which != "train":  # kept with the run: `compare` bootstraps paired differences from them
                atomic_save_npy(run_dir / "features" / k[0] / f"{which}.npy", memo[k])
        return memo[k]

    sets = EvalSets(generated=generated, reference=reference_vols, floor=floor_vols,
                    brain_mask=brain_mask, features=features, train=train_vols,
                    attributes=[p.attributes for p in prompts], voxel_size=suite.grid.voxel_size, extra=extra,
                    feature_names=pool.feature_names, shard_mapper=executor.shard_mapper())
    timings["load"] = time.perf_counter() - t

    # ---- metrics, each saved when done
    t = time.perf_counter()
    results: dict[str, dict] = {}
    for spec, metric in metrics:
        path = run_dir / "metrics" / f"{_safe(spec.key)}.json"
        if cfg.resume and path.exists():
            saved = json.loads(path.read_text())
            if not saved.get("_failed"):
                results.update(saved["results"])
                continue
        results_for = compute_metric(spec, metric, sets, seed)
        release_free_memory()
        atomic_write_json(path, {"results": results_for,
                                 "_failed": any(r.get("value") is None for r in results_for.values())})
        results.update(results_for)
    timings["metrics"] = time.perf_counter() - t - timings.get("features", 0.0)
    pool.close()
    unused = pool.unused_args()
    if unused:
        raise ValueError(f"--extractor-args {sorted(unused)} were not accepted by any extractor this suite uses")

    extractor_names = sorted({e for _, m in metrics for e in m.extractors()})
    failed = sorted(k for k, r in results.items() if r.get("value") is None and (r.get("details") or {}).get("error"))
    timings["total"] = time.perf_counter() - t_start
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "partial" if failed else "complete",
        "failed_metrics": failed,
        "generator": {"name": registry.generators.entry(cfg.generator).name, "args": gen_args,
                      "info": _jsonable(generator.info())},
        "suite": suite.to_dict() | {"n_prompts": len(prompts)},
        "reference": {"name": cohort.name, "content_hash": cohort.content_hash, "synthetic": cohort.synthetic,
                      "n_subjects": len(cohort.subjects), "label": cohort.meta.get("label", ""),
                      "path": str(cohort.root)},
        "seed": seed,
        "limit": cfg.limit,
        "device": device,
        "executor": executor.info(),
        "environment": environment(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "extractors": {e: pool.fingerprint(e) for e in extractor_names},
        "metrics": results,
        "prompts": [{"subject_id": p.subject_id, "text": p.text, "floor_subject_id": f.subject_id}
                    for p, f in zip(prompts, floor_subjects)],
        "samples_dir": "samples",
    }
    atomic_write_json(run_dir / "record.json", record)
    return run_dir / "record.json"


def atlas_on_grid(grid: Grid) -> dict[str, Any]:
    """ICBM152 tissue priors and Neuromorphometrics labels on the grid, for atlas-guided metrics."""
    from bench.data.atlas import load_priors

    pri = load_priors(grid.voxel_size, grid.shape, grid.affine)
    return {"gm": pri.gm, "wm": pri.wm, "csf": pri.csf, "labels": pri.labels,
            "ventricles": pri.structure_mask("lateral_ventricles"), "voxel_volume_ml": grid.voxel_volume_ml}


def compute_metric(spec, metric, sets: EvalSets, seed: int) -> dict[str, dict]:
    """Run one metric family; a failure is recorded (value None + error) and does not stop the run."""
    meta = {"family": spec.name, "config": _jsonable(metric.config()),
            "description": getattr(metric, "description", "") or (type(metric).__doc__ or "").strip().split("\n")[0]}
    t0 = time.perf_counter()
    try:
        out = metric.compute(sets, seed=seed)
    except Exception as e:  # noqa: BLE001 - recorded, logged, and retried on resume
        log.error("metric %s failed: %s: %s", spec.key, type(e).__name__, e)
        return {spec.key: {"value": None, "ci_low": None, "ci_high": None, "n": sets.n,
                           "higher_is_better": bool(getattr(metric, "higher_is_better", False)), "floor": None,
                           "warnings": [], "details": {"error": f"{type(e).__name__}: {e}"}, **meta}}
    if isinstance(out, MetricResult):
        out = {"": out}
    res = {}
    for sub, r in out.items():
        key = spec.key if not sub else f"{spec.key}/{sub}"
        entry = r.to_dict()
        entry["axis"] = entry.get("axis") or metric.axis_of(sub)
        entry["seconds"] = round(time.perf_counter() - t0, 3)  # the family's cost (features included when first used)
        res[key] = _jsonable({**entry, **meta})
    return res


def generate_shards(executor, spec: GeneratorSpec, prompts: list[Prompt], seed: int, grid: Grid, folder: Path,
                    quiet: bool = False) -> NpzShards:
    """Generate the missing shards of ``folder`` (``shard_XXXX.npz``, ``SHARD`` prompts each) as tasks
    on ``executor``; returns the generated set, read from the shard files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, todo = [], []
    for start in range(0, len(prompts), SHARD):
        chunk = prompts[start:start + SHARD]
        path = folder / f"shard_{start // SHARD:04d}.npz"
        paths.append(str(path))
        if path.exists():
            try:
                with np.load(path) as z:
                    if z["volumes"].shape == (len(chunk), 1, *grid.shape):
                        continue
                log.warning("%s has the wrong shape; regenerating that shard", path)
            except (OSError, ValueError, KeyError, EOFError):
                log.warning("%s is unreadable; regenerating that shard", path)
        todo.append((start // SHARD, chunk, seed_for(seed, start), str(path)))
    if todo:
        log.info("generating %d of %d shards", len(todo), len(paths))
        executor.map(GenerateShardTask(spec, grid.shape), todo, desc="generate", gpu=True)
    return NpzShards(paths, len(prompts), grid.shape, SHARD)


def _home_cache(sub: str) -> Path:
    from bench.cache import home

    p = home() / "cache" / sub
    p.mkdir(parents=True, exist_ok=True)
    return p


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def _jsonable(obj):
    """Plain JSON data; NaN/inf become None (strict JSON has no NaN)."""
    return _finite(json.loads(json.dumps(obj, default=_default)))


def _finite(o):
    if isinstance(o, float):
        return o if np.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def _default(o):
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    return str(o)

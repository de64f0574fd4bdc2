"""The stages of a run, each a small object with ``run(state)``, testable alone.

A task kind (:mod:`bench.tasks`) is an ordered list of stages over one :class:`RunState`:

1. :class:`Setup` — load the suite's cohort, build the generator and the metrics, check every name and
   argument (extractors and ``--extractor-args`` included) *before any work*, and open the run folder;
2. :class:`Prompts` — the suite's prompts, or the generator's own (``folder`` with its own captions),
   with their reference and floor subjects (``prompts.json``);
3. :class:`Produce` — generation in fixed shards of :data:`SHARD` prompts, each saved as it finishes;
4. :class:`EvaluationData` — the volume sets (read a shard at a time), the feature function and the
   inputs the metrics declare (:class:`metrics.base.Input`);
5. :class:`Metrics` — each metric family, saved as soon as it is done (a failure is recorded, not fatal);
6. :class:`Record` — ``record.json``, validated against ``core/record.schema.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from bench import registry
from bench.cache import FeatureCache
from bench.executors import Executor, make_executor
from bench.memory import apply_heap_policy, release_free_memory
from core.progress import Progress
from bench.prompts import PromptSet, own_prompt_set, suite_prompt_set
from bench.protocols import missing_weights_skips
from bench.records import SCHEMA_VERSION, environment, validate_record
from bench.suite import Suite
from bench.workers import (ExtractorPool, FeatureShardTask, GenerateShardTask, GeneratorSpec, PoolSpec,
                           build_generator, build_metric, check_extractor_args)
from cohorts.grid import Grid
from cohorts.subject import Cohort
from core.io import atomic_save_npy, atomic_write_json, home_cache, to_jsonable
from core.runfiles import read_shard, shard_path
from generators.base import GeneratorContext, Prompt, seed_for
from metrics.base import EvalSets, Input, MetricResult
from metrics.volumes import CohortVolumes, NpzShards, VolumeSet

__all__ = ["SHARD", "EvaluationData", "Metrics", "Produce", "Prompts", "Record", "RunState", "Setup", "Stage",
           "check_task_support", "compute_metric", "generate_shards", "resolve_cohort", "shard_complete"]

log = logging.getLogger("braingenbench.runner")

SHARD = 8  # prompts per generation shard; fixed so that results do not depend on it


@dataclass
class RunState:
    """What the stages of one run share; each stage fills the fields it owns."""

    cfg: Any  # bench.runner.RunConfig
    suite: Suite
    seed: int
    device: str
    timings: dict[str, float] = field(default_factory=dict)
    t_start: float = field(default_factory=time.perf_counter)
    cohort: Cohort | None = None
    generator: Any = None
    generator_info: dict = field(default_factory=dict)  # info() once: the folder adapter hashes every sample file
    gen_args: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)  # [(suite metric spec, metric)]
    run_id: str = ""
    run_dir: Path | None = None
    executor: Executor | None = None
    prompt_set: PromptSet | None = None
    generated: VolumeSet | None = None
    pool: ExtractorPool | None = None
    sets: EvalSets | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # metric key -> why it was not run
    results: dict[str, dict] = field(default_factory=dict)
    followup: Any = None  # bench.followup.FollowUpPlan of a follow-up run
    reports: list[str] | None = None  # a report run's reports, in prompt order

    @property
    def reference(self) -> str:
        return self.cfg.reference or self.suite.reference

    @property
    def reference_args(self) -> dict:
        return self.suite.reference_args if self.cfg.reference is None else {}


class Stage:
    """One step of a run: ``run(state)`` reads what earlier stages filled and fills its own fields."""

    name = "stage"

    def run(self, state: RunState) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


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


class Setup(Stage):
    """Cohort, generator and metrics built, every name and argument checked, the run folder opened."""

    name = "setup"

    def run(self, state: RunState) -> None:
        from bench.runner import run_id_for

        cfg, suite = state.cfg, state.suite
        reg, name, _ = cfg.model(suite.task)
        if suite.task in TASK_GENERATOR_METHOD:  # a typo or a generator of another task fails before any work
            check_task_support(suite.task, name)
        metrics = [(spec, build_metric(spec)) for spec in suite.metrics]
        check_extractor_args(sorted({e for _, m in metrics for e in m.extractors()}), cfg.extractor_args)
        for _, m in metrics:
            for c in getattr(m, "captioners", lambda: [])():
                registry.captioners.canonical(c)  # an unknown captioner fails here, with "did you mean"
        t = time.perf_counter()
        state.cohort = resolve_cohort(state.reference, suite.grid, state.reference_args, cfg.quiet)
        state.timings["cohort"] = time.perf_counter() - t
        # after the cohort: a build runs in its own short-lived processes, which the 1 MiB threshold of the
        # 'bounded' policy would slow by ~30 % (each volume-sized array zero-filled anew); the policy is for
        # the streaming stages that follow (bench.memory)
        apply_heap_policy(cfg.heap)
        state.generator, state.gen_args = self.build_model(state)
        state.metrics = metrics
        state.generator_info = to_jsonable(state.generator.info())
        state.run_id = run_id_for(cfg, suite, state.gen_args, state.reference, state.generator_info,
                                  state.cohort.content_hash, display_name(state.generator, reg.entry(name).name))
        state.run_dir = Path(cfg.out) / state.run_id
        if state.run_dir.exists() and not cfg.resume:
            shutil.rmtree(state.run_dir)
        (state.run_dir / "metrics").mkdir(parents=True, exist_ok=True)  # produce stages make their own folders
        state.executor = make_executor(cfg.executor, ray_address=cfg.ray_address, quiet=cfg.quiet)
        log.info("run %s -> %s", state.run_id, state.run_dir)

    def build_model(self, state: RunState) -> tuple[Any, dict]:
        """The model the task evaluates, built with its checked arguments: here the generator."""
        cfg = state.cfg
        ctx = GeneratorContext(cohort=state.cohort, grid=state.suite.grid, device=state.device,
                               cache_dir=home_cache("generators"), quiet=cfg.quiet)
        return build_generator(cfg.generator, cfg.generator_args, ctx)


#: generator tasks -> the generator method their produce stage calls (a generator without it cannot run the task)
TASK_GENERATOR_METHOD: Mapping[str, str] = MappingProxyType({"text-to-volume": "generate", "follow-up": "follow_up"})


def check_task_support(task: str, generator: str) -> None:
    """The generator can do the suite's task (it has the task's method, :data:`TASK_GENERATOR_METHOD`)."""
    cls = registry.generators.get(generator)
    method = TASK_GENERATOR_METHOD[task]
    if not callable(getattr(cls, method, None)):
        able = [n for n in registry.generators.names() if _has_method(n, method)]
        raise ValueError(f"generator {registry.generators.canonical(generator)!r} cannot do the suite's task "
                         f"{task!r} (it has no {method}() method); generators that can: {', '.join(able) or 'none'}")


def _has_method(name: str, method: str) -> bool:
    try:
        return callable(getattr(registry.generators.get(name), method, None))
    except Exception:  # noqa: BLE001 - an optional plugin that cannot be imported cannot do the task either
        return False


def display_name(model: Any, registered: str) -> str:
    """The name a run is shown under: the model's ``display_name`` (``folder``'s ``name=``), else
    ``registered`` (its registered name)."""
    name = getattr(model, "display_name", None)
    return str(name) if name else registered


class Prompts(Stage):
    """The suite's prompts, or the generator's own, with their reference and floor subjects."""

    name = "prompts"

    def run(self, state: RunState) -> None:
        cfg, suite, cohort = state.cfg, state.suite, state.cohort
        n = suite.n_prompts if cfg.limit is None else min(cfg.limit, suite.n_prompts)
        suite_set = suite_prompt_set(cohort, n, state.seed, suite.floor_split)
        own = getattr(state.generator, "own_prompts", None)
        texts = own() if own is not None else None
        suite_texts = {s.caption.strip() for s in cohort.split("test")}  # any suite prompt, whatever --limit
        if texts is not None and not {t.strip() for t in texts} <= suite_texts:
            if cfg.limit is not None:
                texts = texts[:cfg.limit]
            log.info("scoring the generator's own %d prompts (not the suite's): realism against "
                     "attribute-matched real volumes, conformance from the parsed captions", len(texts))
            state.prompt_set = own_prompt_set(texts, cohort, state.seed, suite.floor_split)
        else:
            state.prompt_set = suite_set
        atomic_write_json(state.run_dir / "prompts.json", state.prompt_set.to_json())


def shard_complete(path: Path, shape: tuple[int, ...]) -> bool:
    """A generation shard that exists with the expected shape (a finished shard of an earlier attempt)."""
    if not path.exists():
        return False
    try:
        if read_shard(path).shape == shape:
            return True
        log.warning("%s has the wrong shape; regenerating that shard", path)
    except (OSError, ValueError, KeyError, EOFError):
        log.warning("%s is unreadable; regenerating that shard", path)
    return False


def generate_shards(executor: Executor, spec: GeneratorSpec, prompts: list[Prompt], seed: int, grid: Grid,
                    folder: Path, task=None, desc: str = "generate") -> NpzShards:
    """Generate the missing shards of ``folder`` (``shard_XXXX.npz``, ``SHARD`` prompts each) as tasks
    on ``executor`` (``task``: a shard task of ``(index, prompts, seed, path)``, by default
    :class:`GenerateShardTask`); returns the generated set, read from the shard files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, todo = [], []
    for start in range(0, len(prompts), SHARD):
        chunk = prompts[start:start + SHARD]
        path = shard_path(folder, start // SHARD)
        paths.append(str(path))
        if not shard_complete(path, (len(chunk), 1, *grid.shape)):
            todo.append((start // SHARD, chunk, seed_for(seed, start), str(path)))
    if todo:
        log.info("%s: generating %d of %d shards", desc, len(todo), len(paths))
        executor.map(task or GenerateShardTask(spec, grid.shape), todo, desc=desc, gpu=True)
    return NpzShards(paths, len(prompts), grid.shape, SHARD)


class Produce(Stage):
    """Generation, shard by shard (tasks on the executor; finished shards are kept)."""

    name = "generate"

    @staticmethod
    def generator_spec(state: RunState) -> GeneratorSpec:
        """The run's generator as a spec for shard tasks; the local executor reuses the one Setup built."""
        cfg = state.cfg
        spec = GeneratorSpec(registry.generators.canonical(cfg.generator), state.gen_args, state.reference,
                             state.reference_args, state.suite.grid.name, cfg.device, cfg.heap)
        state.executor.store[spec.key] = state.generator
        return spec

    def run(self, state: RunState) -> None:
        suite = state.suite
        spec = self.generator_spec(state)
        state.generated = generate_shards(state.executor, spec, state.prompt_set.prompts, state.seed, suite.grid,
                                          state.run_dir / "samples")


class EvaluationData(Stage):
    """Volume sets read shard by shard, the cached feature function and the declared metric inputs."""

    name = "load"

    def run(self, state: RunState) -> None:
        cfg, suite, cohort, ps = state.cfg, state.suite, state.cohort, state.prompt_set
        inputs = set().union(*(_inputs(m) for _, m in state.metrics)) if state.metrics else set()
        if not ps.paired:
            for spec, m in state.metrics:
                if Input.PAIRED_REFERENCE in _inputs(m):
                    state.skipped[spec.key] = ("needs each prompt's own real volume; the prompts are the "
                                               "generator's own, not the suite's")
        for key, why in missing_weights_skips(state.metrics, cfg.extractor_args).items():
            state.skipped.setdefault(key, why)  # weight-free metrics still run; one warning per missing file
        train = cohort.split("train") if Input.TRAIN in inputs else None
        brain_mask = cohort.brain_mask()
        state.pool = ExtractorPool(state.device, cfg.extractor_args, FeatureCache(), suite.grid, brain_mask)
        # workers resolve the requested device themselves (a GPU worker under a CPU-only driver uses its GPU)
        pool_spec = PoolSpec(cfg.device, cfg.extractor_args, suite.grid.name, brain_mask, state.pool.cache.root,
                             cfg.heap)
        state.executor.store[pool_spec.key] = state.pool  # the local executor reuses this pool
        volume_sets = {"generated": state.generated, "reference": CohortVolumes(cohort, ps.reference, SHARD),
                       "floor": CohortVolumes(cohort, ps.floor, SHARD),
                       "train": CohortVolumes(cohort, train, SHARD) if train is not None else None}
        state.sets = EvalSets(
            generated=volume_sets["generated"], reference=volume_sets["reference"], floor=volume_sets["floor"],
            brain_mask=brain_mask, train=volume_sets["train"],
            features=FeatureFunction(state, pool_spec, volume_sets),
            attributes=[p.attributes for p in ps.prompts], voxel_size=suite.grid.voxel_size,
            feature_names=state.pool.feature_names, shard_mapper=state.executor.shard_mapper(quiet=True),
            cohort_hash=cohort.content_hash, paired=ps.paired,
            train_attributes=[s.attributes() for s in train] if train is not None else None,
            atlas=_atlas(suite.grid) if Input.ATLAS in inputs else None,
            tissue_consensus=_tissue_consensus(cohort, ps.reference) if Input.TISSUE_LABELS in inputs else None,
            **_text_inputs(state, inputs, volume_sets), **self.task_sets(state))

    def task_sets(self, state: RunState) -> dict:
        """Further :class:`EvalSets` fields of a task kind (a follow-up run's previous scans)."""
        return {}


def _text_inputs(state: RunState, inputs: set, volume_sets: dict) -> dict:
    """``sets.describe`` (captioners' reports of a volume set) and ``sets.embed_text`` (MiniLM), when asked for."""
    from bench.report import Describer, embed_text

    return {"describe": Describer(state, volume_sets) if Input.DESCRIBE in inputs else None,
            "embed_text": embed_text(state) if Input.TEXT_ENCODER in inputs else None}


def _inputs(metric) -> frozenset:
    """What a metric declares in ``inputs`` (none for a plugin metric that does not subclass Metric)."""
    return frozenset(getattr(metric, "inputs", frozenset()))


def _atlas(grid: Grid) -> dict:
    from cohorts.atlas import atlas_on_grid

    return atlas_on_grid(grid)


def _tissue_consensus(cohort: Cohort, subjects: list) -> np.ndarray | None:
    if not all(s.labels is not None for s in subjects):
        return None
    from metrics.functional.histogram import consensus_labels

    return consensus_labels(cohort.load_labels(s) for s in subjects)


class FeatureFunction:
    """``features(extractor, set_name) -> (N, F)``: extracted once per run and set, as shard tasks on the
    executor (through the content-addressed cache); all but the train set's are kept in
    ``<run>/features/<extractor>/<set>.npy`` (``compare`` bootstraps paired differences from them)."""

    def __init__(self, state: RunState, pool_spec: PoolSpec, volume_sets: dict[str, VolumeSet | None]):
        self.state, self.pool_spec, self.volume_sets = state, pool_spec, volume_sets
        self.memo: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, extractor: str, which: str) -> np.ndarray:
        if self.volume_sets.get(which) is None:
            have = [k for k, v in self.volume_sets.items() if v is not None]
            raise KeyError(f"no volume set {which!r} (have: {have})")
        k = (registry.extractors.canonical(extractor), which)
        if k not in self.memo:
            t0 = time.perf_counter()
            vs = self.volume_sets[which]
            parts = self.state.executor.map(FeatureShardTask(self.pool_spec, extractor, vs), list(range(vs.n_shards)),
                                            desc=f"{k[0]} features of {which}", gpu=True)
            self.memo[k] = np.concatenate(parts) if parts else np.zeros((0, 0))
            timings = self.state.timings
            timings["features"] = timings.get("features", 0.0) + time.perf_counter() - t0
            if which != "train":
                atomic_save_npy(self.state.run_dir / "features" / k[0] / f"{which}.npy", self.memo[k])
        return self.memo[k]


def compute_metric(spec, metric, sets: EvalSets, seed: int) -> dict[str, dict]:
    """Run one metric family; a failure is recorded (value None + error) and does not stop the run."""
    meta = {"family": spec.name, "config": to_jsonable(metric.config()),
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
        res[key] = to_jsonable({**entry, **meta})
    return res


class Metrics(Stage):
    """Each metric family, saved to ``<run>/metrics/<key>.json`` when done; finished ones are kept."""

    name = "metrics"

    def run(self, state: RunState) -> None:
        t = time.perf_counter()
        todo = [(spec, m) for spec, m in state.metrics if spec.key not in state.skipped]
        for key, why in state.skipped.items():
            log.info("metric %s skipped: %s", key, why)
        with Progress("metrics", len(todo), unit="metric", quiet=state.cfg.quiet, every=0.0) as progress:
            for spec, metric in todo:
                state.results.update(self._one(state, spec, metric))
                progress.update()
        state.timings["metrics"] = time.perf_counter() - t - state.timings.get("features", 0.0)
        state.pool.close()

    @staticmethod
    def _one(state: RunState, spec, metric) -> dict[str, dict]:
        path = state.run_dir / "metrics" / f"{_safe(spec.key)}.json"
        if state.cfg.resume and path.exists():
            saved = json.loads(path.read_text())
            if not saved.get("_failed"):
                return saved["results"]
        results = compute_metric(spec, metric, state.sets, state.seed)
        release_free_memory()
        atomic_write_json(path, {"results": results, "_failed": any(r.get("value") is None for r in results.values())})
        return results


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


class Record(Stage):
    """``<run>/record.json``: one self-describing record, validated against the schema before it is written."""

    name = "record"

    def run(self, state: RunState) -> None:
        cfg, cohort, ps = state.cfg, state.cohort, state.prompt_set
        extractors = sorted({e for spec, m in state.metrics if spec.key not in state.skipped for e in m.extractors()})
        failed = sorted(k for k, r in state.results.items()
                        if r.get("value") is None and (r.get("details") or {}).get("error"))
        state.timings["total"] = time.perf_counter() - state.t_start
        reg, name, _ = cfg.model(state.suite.task)
        generator = {"name": reg.entry(name).name, "args": state.gen_args, "info": state.generator_info,
                     "kind": "captioner" if reg is registry.captioners else "generator"}
        shown = display_name(state.generator, generator["name"])
        if shown != generator["name"]:
            generator["display_name"] = shown
        record = {
            "schema_version": SCHEMA_VERSION, "run_id": state.run_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "partial" if failed else "complete", "failed_metrics": failed,
            "skipped_metrics": dict(sorted(state.skipped.items())), "task": state.suite.task,
            "generator": generator, "suite": state.suite.to_dict() | {"n_prompts": len(ps.prompts)},
            "reference": {"name": cohort.name, "content_hash": cohort.content_hash, "synthetic": cohort.synthetic,
                          "n_subjects": len(cohort.subjects), "label": cohort.meta.get("label", ""),
                          "path": str(cohort.root)},
            "prompt_source": "suite" if ps.paired else "generator",
            "seed": state.seed, "limit": cfg.limit, "device": state.device, "executor": state.executor.info(),
            "environment": environment(), "timings": {k: round(v, 3) for k, v in state.timings.items()},
            "extractors": {e: state.pool.fingerprint(e) for e in extractors},
            "metrics": state.results, "prompts": ps.to_json(), "samples_dir": "samples",
        }
        if state.reports is not None:  # a report run: each volume's report beside its true and floor captions
            record["reports"] = [{"subject_id": s.subject_id, "report": r, "caption": s.caption,
                                  "floor_subject_id": f.subject_id, "floor_caption": f.caption}
                                 for s, f, r in zip(ps.reference, ps.floor, state.reports)]
            record["samples_dir"] = "reports"
        validate_record(to_jsonable(record), where=str(state.run_dir / "record.json"))
        atomic_write_json(state.run_dir / "record.json", record)

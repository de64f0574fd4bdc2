"""``python -m bench run``: a suite's task run as a short pipeline of stages (:mod:`bench.stages`).

The stages of a ``text-to-volume`` run (:mod:`bench.tasks`), each resumable — a run killed half-way
keeps what it finished:

1. setup — cohort, generator and metrics built; every name and argument checked before any work;
2. prompts — the suite's captions (or the generator's own) with a reference and a floor subject each;
3. generate — in fixed shards of ``SHARD`` prompts, each saved to ``<run>/samples/shard_XXXX.npz``;
4. load — volume sets read a shard at a time, features extracted once per (volume bytes, extractor)
   in the content-addressed cache, the inputs the metrics declare;
5. metrics — each saved to ``<run>/metrics/<key>.json`` as soon as it is done;
6. record — ``<run>/record.json``, validated against ``core/record.schema.json``.

Streaming: no stage holds a whole volume set (see :mod:`metrics.volumes`). Execution: generation
shards, feature extraction per (extractor, set, shard) and per-volume metric functions per shard are
tasks on an executor (:mod:`bench.executors`: this process, or a Ray cluster); the shard partition is
fixed, so the numbers are identical whichever executor ran them.

The run folder name is ``<suite>-<generator>-<hash>``, the hash covering everything that changes the
numbers (code, suite, arguments, checkpoint and sample bytes, cohort content), so re-running the same
command resumes (or returns) the same run and changed inputs start a new one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import registry
from bench.memory import DEFAULT_HEAP, check_heap_policy
from bench.stages import SHARD, RunState, resolve_cohort
from bench.suite import Suite, load_suite
from bench.tasks import stages_for
from bench.workers import build_generator, resolve_device
from core.io import hash_obj, to_jsonable

__all__ = ["SHARD", "RunConfig", "build_generator", "code_fingerprint", "resolve_cohort", "resolve_device", "run",
           "run_id_for"]

log = logging.getLogger("braingenbench.runner")


@dataclass
class RunConfig:
    """Everything ``python -m bench run`` takes (CLI flags equal these fields)."""

    generator: str | None
    suite: str | Path
    generator_args: dict[str, Any] = field(default_factory=dict)
    captioner: str | None = None
    captioner_args: dict[str, Any] = field(default_factory=dict)
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
    heap: str = DEFAULT_HEAP

    def check(self) -> None:
        """Reject values no run can use, before any work."""
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (the number of prompts to use), got {self.limit}")
        check_heap_policy(self.heap)

    def model(self, task: str) -> tuple[registry.Registry, str, dict[str, Any]]:
        """``(registry, name, raw arguments)`` of the model the suite's task evaluates: the captioner of a
        ``report`` suite, the generator otherwise (a missing or misplaced one is an error naming the fix)."""
        if task == "report":
            if not self.captioner:
                raise ValueError("a report suite evaluates a captioner (volume -> text): give --captioner NAME "
                                 f"(one of: {', '.join(registry.captioners.names())})")
            return registry.captioners, self.captioner, self.captioner_args
        if self.captioner and not self.generator:
            raise ValueError(f"--captioner is for report suites; this is a {task} suite: give --generator NAME "
                             "(a captioner is used by the roundtrip metric through its captioner= argument)")
        if not self.generator:
            raise ValueError("give --generator NAME (see `python -m bench ls generators`)")
        return registry.generators, self.generator, self.generator_args


def code_fingerprint() -> str:
    """sha256 over the source of the packages that make the numbers: a run folder is only resumed by
    the same code."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in ("core", "cohorts", "bench", "generators", "captioners", "metrics"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def run_id_for(cfg: RunConfig, suite: Suite, gen_args: dict, reference: str, generator_info: dict | None = None,
               cohort_hash: str | None = None, shown_as: str | None = None) -> str:
    """The run folder name. Keyed on content, not only on arguments: the generator's ``info()`` (which
    carries its checkpoint's sha256, or the folder adapter's sample-file digest) and the reference
    cohort's content hash are part of the key, so replacing a checkpoint's bytes at the same path
    starts a new run instead of resuming the old one."""
    reg, model, _ = cfg.model(suite.task)
    key = {"code": code_fingerprint(), "generator": reg.canonical(model), "generator_args": gen_args,
           "generator_info": to_jsonable(generator_info or {}), "cohort": cohort_hash,
           "extractor_args": cfg.extractor_args, "suite": suite.to_dict(), "reference": reference,
           "seed": cfg.seed if cfg.seed is not None else suite.seed, "limit": cfg.limit, "shard": SHARD}
    name = _slug(shown_as) if shown_as else reg.canonical(model)
    return f"{suite.name}-{name}-{hash_obj(key)[:10]}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:40] or "generator"


def run(cfg: RunConfig) -> Path:
    """Run a suite against a generator: the stages of the suite's task, in order. Returns the path of
    ``record.json``."""
    cfg.check()
    suite = load_suite(cfg.suite)
    cfg.model(suite.task)  # the right kind of model for the task, before any work
    state = RunState(cfg=cfg, suite=suite, seed=cfg.seed if cfg.seed is not None else suite.seed,
                     device=resolve_device(cfg.device))
    try:
        for stage in stages_for(suite.task):
            t = time.perf_counter()
            stage.run(state)
            state.timings.setdefault(stage.name, time.perf_counter() - t)
    finally:
        if state.executor is not None:
            state.executor.close()
    return state.run_dir / "record.json"

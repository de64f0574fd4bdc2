"""The ``report`` task: volume -> text, a captioner describing real volumes of the reference cohort.

A report suite names a reference cohort; ``n_prompts`` of its **test** subjects are drawn (seeded,
as the prompts of a text-to-volume suite are) and each is described by the captioner
(``--captioner``). Each volume's true caption is the reference text (the ceiling); the true caption
of another subject of the same modality (from the floor split, :func:`report_set`) is the floor
report. Reports are made in fixed shards of :data:`~bench.stages.SHARD` volumes, each saved to
``<run>/reports/shard_XXXX.json`` as it finishes (a re-run resumes).

The same captioners describe generated volumes for the ``roundtrip`` metric of text-to-volume suites
(:class:`Describer`, :mod:`bench.stages`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import registry
from bench.args import bind_args
from bench.prompts import PromptSet, match_subjects, select_prompts
from bench.stages import SHARD, EvaluationData, Produce, Prompts, RunState, Setup
from captioners.base import CaptionerContext, check_reports
from cohorts.captions import parse_caption
from core.io import atomic_write_json, home_cache
from core.progress import Progress
from generators.base import Prompt
from metrics.volumes import CohortVolumes, VolumeSet

__all__ = ["Describer", "ReportEvaluationData", "ReportProduce", "ReportPrompts", "ReportSetup", "build_captioner",
           "describe_in_shards", "report_set"]

log = logging.getLogger("braingenbench.runner")


def build_captioner(name: str, raw_args: dict, ctx: CaptionerContext):
    """``(captioner, bound args)`` of a registered captioner, its arguments checked against the class."""
    cls = registry.captioners.get(name)
    args = bind_args(cls, raw_args, f"captioner {name!r}")
    return cls(ctx, **args), args


def captioner_context(state: RunState) -> CaptionerContext:
    """The context captioners of a run get: the cohort, grid, device, cache and the run's extractors."""
    from bench.cache import FeatureCache
    from bench.workers import ExtractorPool

    pools: dict[str, Any] = {}

    def extractor(name: str) -> Callable[[np.ndarray], np.ndarray]:
        if "pool" not in pools:  # the run's own pool once EvaluationData has built it
            pools["pool"] = state.pool or ExtractorPool(state.device, state.cfg.extractor_args, FeatureCache(),
                                                        state.suite.grid, state.cohort.brain_mask())
        pool = pools["pool"]
        return lambda volumes: pool.features(name, volumes)

    return CaptionerContext(cohort=state.cohort, grid=state.suite.grid, device=state.device,
                            cache_dir=home_cache("captioners"), quiet=state.cfg.quiet, extractor=extractor)


def describe_in_shards(captioner, volumes: VolumeSet, folder: Path, seed: int, *, ids: list[str] | None = None,
                       desc: str = "describe", quiet: bool = False) -> list[str]:
    """The captioner's reports of ``volumes``, shard by shard; each shard is saved to
    ``folder/shard_XXXX.json`` and reused when it is there (a re-run resumes). A captioner that reads
    reports by id (``describe_ids``, the ``folder`` captioner) gets ``ids`` instead of volumes."""
    from generators.base import seed_for

    folder.mkdir(parents=True, exist_ok=True)
    who = getattr(captioner, "name", type(captioner).__name__)
    by_id = callable(getattr(captioner, "describe_ids", None))
    if by_id and ids is None:
        raise ValueError(f"captioner {who!r} reads reports by volume id; it cannot describe these volumes")
    out: list[str] = []
    with Progress(desc, volumes.n_shards, unit="shard", quiet=quiet) as progress:
        for k in range(volumes.n_shards):
            start, stop = volumes.bounds(k)
            path = folder / f"shard_{k:04d}.json"
            reports = _saved(path, stop - start)
            if reports is None:
                made = (captioner.describe_ids(ids[start:stop]) if by_id
                        else captioner.describe(volumes.shard(k), seed=seed_for(seed, start)))
                reports = check_reports(made, stop - start, who)
                atomic_write_json(path, {"reports": reports})
            out += reports
            progress.update()
    return out


def _saved(path: Path, n: int) -> list[str] | None:
    if not path.exists():
        return None
    try:
        reports = json.loads(path.read_text())["reports"]
        if len(reports) == n and all(isinstance(r, str) for r in reports):
            return reports
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("%s is unreadable or incomplete; describing that shard again", path)
    return None


class Describer:
    """``describe(captioner, set_name) -> (reports, parsed attributes)`` for metrics (``sets.describe``):
    each captioner built once per run, each set described once, saved under ``<run>/reports/<captioner>/``."""

    def __init__(self, state: RunState, volume_sets: dict[str, VolumeSet | None]):
        self.state, self.volume_sets = state, volume_sets
        self.built: dict[str, Any] = {}
        self.memo: dict[tuple[str, str], tuple[list[str], list[dict]]] = {}

    def __call__(self, captioner: str, which: str) -> tuple[list[str], list[dict]]:
        name = registry.captioners.canonical(captioner)
        vs = self.volume_sets.get(which)
        if vs is None:
            raise KeyError(f"no volume set {which!r} to describe")
        if (name, which) not in self.memo:
            if name not in self.built:
                self.built[name] = build_captioner(name, {}, captioner_context(self.state))[0]
            texts = describe_in_shards(self.built[name], vs, self.state.run_dir / "reports" / name / which,
                                       self.state.seed, desc=f"{name} reports of {which}", quiet=True)
            self.memo[(name, which)] = (texts, [parse_caption(t) for t in texts])
        return self.memo[(name, which)]


def embed_text(state: RunState) -> Callable[[list[str]], np.ndarray]:
    """``sets.embed_text``: MiniLM sentence embeddings (the encoder loaded on first use)."""
    from generators.text import get_text_encoder

    holder: dict[str, Any] = {}

    def embed(texts: list[str]) -> np.ndarray:
        if "enc" not in holder:
            holder["enc"] = get_text_encoder(None, state.device)
        return np.asarray(holder["enc"].encode_sentences(list(texts)), np.float64)

    return embed


class ReportSetup(Setup):
    """Setup of a report run: the captioner instead of a generator."""

    def build_model(self, state: RunState) -> tuple[Any, dict]:
        return build_captioner(state.cfg.captioner, state.cfg.captioner_args, captioner_context(state))


def report_set(cohort, n: int, seed: int, floor_split: str) -> PromptSet:
    """``n`` test subjects to describe (the suite's prompt selection; their captions are the reference
    texts), each with a floor subject: a seeded random subject of ``floor_split`` with the **same
    modality** only — a report that gets the contrast right and the rest of another brain (matching
    sex and age as well would hand the floor the demographics a captioner has to measure)."""
    ref = select_prompts(cohort, n, seed)
    floor = match_subjects([{"modality": s.modality} for s in ref], cohort.split(floor_split),
                           np.random.default_rng([seed, 606]), [s.subject_id for s in ref])
    return PromptSet([Prompt(s.caption, parse_caption(s.caption), s.subject_id) for s in ref], ref, floor, paired=True)


class ReportPrompts(Prompts):
    """The volumes to describe and their floor subjects (:func:`report_set`); the ``folder`` captioner's
    CSV is checked here."""

    def run(self, state: RunState) -> None:
        cfg, suite = state.cfg, state.suite
        n = suite.n_prompts if cfg.limit is None else min(cfg.limit, suite.n_prompts)
        state.prompt_set = report_set(state.cohort, n, state.seed, suite.floor_split)
        check = getattr(state.generator, "check_ids", None)
        if callable(check):
            check([s.subject_id for s in state.prompt_set.reference])
        atomic_write_json(state.run_dir / "prompts.json", state.prompt_set.to_json())


class ReportProduce(Produce):
    """Reports of the suite's volumes, shard by shard (finished shards are kept)."""

    name = "describe"

    def run(self, state: RunState) -> None:
        ps = state.prompt_set
        state.generated = CohortVolumes(state.cohort, ps.reference, SHARD)
        state.reports = describe_in_shards(state.generator, state.generated, state.run_dir / "reports", state.seed,
                                           ids=[s.subject_id for s in ps.reference], quiet=state.cfg.quiet)


class ReportEvaluationData(EvaluationData):
    """The evaluation data of a report run: the reports, the true captions and the floor captions."""

    def task_sets(self, state: RunState) -> dict:
        ps = state.prompt_set
        floor_captions = [s.caption for s in ps.floor]
        return {"reports": list(state.reports), "report_attributes": [parse_caption(r) for r in state.reports],
                "captions": [p.text for p in ps.prompts], "floor_captions": floor_captions,
                "floor_attributes": [parse_caption(c) for c in floor_captions]}

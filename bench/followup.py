"""The ``follow-up`` task: volume + text -> volume, one sequence at a time.

A follow-up suite names a longitudinal reference cohort (subjects with ``sequence`` and ``session``:
``phantom-ms-long``, or a prepared BIDS dataset with sessions). ``n_prompts`` sequences of its test
split are drawn (seeded); each has a real baseline scan (``ses-00``) and ``K`` follow-up scans, the same ``K``
for all (the most common number of follow-ups in the split). Generation is autoregressive, as a user
would run a model over time:

- step 1: the generator gets the real baseline and the caption of the real scan ``ses-01`` ("... Follow-up
  at 12 months; since the previous scan: 2 new lesions, ...");
- step k > 1: it gets its own step k-1 output and the caption of the real scan ``ses-0k``.

Each step is generated in fixed shards of :data:`~bench.stages.SHARD` prompts
(``<run>/samples/step-k/shard_XXXX.npz``), resumable like a text-to-volume run. The generated set is
the steps one after the other; the metrics also get what each follow-up was made from
(``sets.previous``), the real previous scan (``sets.reference_previous``), and ``sets.items``
(sequence, step). ``floor[i]`` is a subject of the floor split with the same modality and session (the
other-subject contrast of identity, and the real-vs-real set of the realism metrics).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from bench.prompts import PromptSet, match_subjects
from bench.stages import SHARD, EvaluationData, Produce, Prompts, RunState, generate_shards
from bench.workers import FollowUpShardTask
from cohorts.captions import parse_caption
from cohorts.subject import Cohort, Subject
from core.io import atomic_write_json
from generators.base import Prompt
from metrics.volumes import CohortVolumes, ConcatVolumes, VolumeSet

__all__ = ["FollowUpEvaluationData", "FollowUpPlan", "FollowUpProduce", "FollowUpPrompts", "followup_plan"]

log = logging.getLogger("braingenbench.runner")


@dataclass
class FollowUpPlan:
    """The sequences of a follow-up run, step-major: item ``i`` is follow-up ``steps[i]`` of
    ``sequences[i]``; ``baselines[j]`` is sequence ``j``'s real baseline scan (``ses-00``)."""

    baselines: list[Subject]
    prompts: PromptSet
    previous_real: list[Subject]
    sequences: list[str]
    steps: list[int]
    n_steps: int
    previous_sets: VolumeSet | None = None  # what each follow-up was made from (filled by FollowUpProduce)

    def items(self) -> list[dict]:
        return [{"sequence": s, "step": k} for s, k in zip(self.sequences, self.steps)]

    def to_json(self) -> list[dict]:
        return [{**p, "sequence": s, "step": k, "previous_subject_id": r.subject_id}
                for p, s, k, r in zip(self.prompts.to_json(), self.sequences, self.steps, self.previous_real)]


def _sequences(cohort: Cohort, split: str) -> dict[str, list[Subject]]:
    seqs: dict[str, list[Subject]] = {}
    for s in cohort.split(split):
        if s.sequence is not None and s.session is not None:
            seqs.setdefault(s.sequence, []).append(s)
    return {k: sorted(v, key=lambda s: s.session) for k, v in seqs.items()}


def followup_plan(cohort: Cohort, n: int, seed: int, floor_split: str = "train") -> FollowUpPlan:
    """``n`` test sequences (seeded), their follow-up prompts, real scans and floor subjects."""
    seqs = {k: v for k, v in _sequences(cohort, "test").items() if len(v) >= 2}
    if not seqs:
        raise ValueError(f"cohort {cohort.name!r} ({cohort.root}) has no test subject with two or more sessions; "
                         "a follow-up suite needs a longitudinal cohort (phantom-ms-long, or a BIDS dataset with "
                         "sessions prepared with `python -m bench cohort prepare bids`)")
    k_steps = Counter(len(v) - 1 for v in seqs.values()).most_common(1)[0][0]
    ids = sorted(k for k, v in seqs.items() if len(v) - 1 >= k_steps)
    if n > len(ids):
        log.warning("suite asks for %d sequences but the test split has %d with %d follow-ups; using %d",
                    n, len(ids), k_steps, len(ids))
    chosen = [ids[i] for i in np.random.default_rng([seed, 404]).permutation(len(ids))[:n]]
    floor_pool = _sequences(cohort, floor_split)
    prompts, reference, floor, previous, sequences, steps = [], [], [], [], [], []
    for k in range(1, k_steps + 1):
        ref = [seqs[s][k] for s in chosen]
        pool = [v[k] for v in floor_pool.values() if len(v) > k] or [v[-1] for v in floor_pool.values()]
        if not pool:
            raise ValueError(f"cohort {cohort.name!r}: the {floor_split!r} split has no sequences for the floor")
        floor += match_subjects([{"modality": s.modality, "sex": s.sex, "age": s.age} for s in ref], pool,
                                np.random.default_rng([seed, 505, k]), reuse=True)
        prompts += [Prompt(s.caption, parse_caption(s.caption), s.subject_id) for s in ref]
        reference += ref
        previous += [seqs[s][k - 1] for s in chosen]
        sequences += chosen
        steps += [k] * len(chosen)
    return FollowUpPlan([seqs[s][0] for s in chosen], PromptSet(prompts, reference, floor, paired=True),
                        previous, sequences, steps, k_steps)


class FollowUpPrompts(Prompts):
    """The follow-up prompts of ``n_prompts`` sequences (see :func:`followup_plan`)."""

    def run(self, state: RunState) -> None:
        cfg, suite = state.cfg, state.suite
        n = suite.n_prompts if cfg.limit is None else min(cfg.limit, suite.n_prompts)
        state.followup = followup_plan(state.cohort, n, state.seed, suite.floor_split)
        state.prompt_set = state.followup.prompts
        atomic_write_json(state.run_dir / "prompts.json", state.followup.to_json())


class FollowUpProduce(Produce):
    """Follow-ups step by step, each step from the previous step's volumes (finished shards are kept)."""

    def run(self, state: RunState) -> None:
        suite, plan = state.suite, state.followup
        spec = self.generator_spec(state)
        n_seq = len(plan.baselines)
        previous = CohortVolumes(state.cohort, plan.baselines, SHARD)
        inputs, steps = [previous], []
        for k in range(1, plan.n_steps + 1):
            prompts = plan.prompts.prompts[(k - 1) * n_seq:k * n_seq]
            previous = generate_shards(state.executor, spec, prompts, state.seed * 31 + k, suite.grid,
                                       state.run_dir / "samples" / f"step-{k}",
                                       FollowUpShardTask(spec, suite.grid.shape, previous), f"follow-up step {k}")
            steps.append(previous)
            inputs.append(previous)
        state.generated = ConcatVolumes(steps, SHARD)
        plan.previous_sets = ConcatVolumes(inputs[:-1], SHARD)


class FollowUpEvaluationData(EvaluationData):
    """The evaluation data of a text-to-volume run plus what each follow-up was made from."""

    def task_sets(self, state: RunState) -> dict:
        plan = state.followup
        return {"previous": plan.previous_sets, "reference_previous": CohortVolumes(state.cohort, plan.previous_real, SHARD),
                "items": plan.items()}

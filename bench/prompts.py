"""The prompts of a run and the real sets they are scored against.

Suite prompts: captions of the cohort's test split in a seeded order; ``reference[i]`` is the subject
whose caption prompt ``i`` is (paired), and ``floor[i]`` an independent real subject matched to it.

The user's own prompts (the ``folder`` adapter with a manifest of its own captions): each prompt's
parsed attributes select an attribute-matched real subject of the test split as its reference and
another of the floor split as its floor, so realism is measured against real volumes of the same
modality / sex / age mix, conformance from the parsed attributes, and paired metrics (SSIM against
the caption's own volume) are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cohorts.captions import parse_caption
from cohorts.subject import Cohort, Subject
from generators.base import Prompt

__all__ = ["PromptSet", "match_floor", "match_subjects", "own_prompt_set", "select_prompts", "suite_prompt_set"]

log = logging.getLogger("braingenbench.runner")


@dataclass
class PromptSet:
    """The prompts of a run with their reference and floor subjects (same order).

    Attributes:
        prompts: what the generator is asked for.
        reference: the real subject each prompt is scored against.
        floor: an independent real subject per prompt (the real-vs-real set).
        paired: ``reference[i]``'s caption is prompt ``i`` (suite prompts).
    """

    prompts: list[Prompt]
    reference: list[Subject]
    floor: list[Subject]
    paired: bool

    def to_json(self) -> list[dict]:
        """One entry per prompt, as ``prompts.json`` and the record keep them."""
        return [{"subject_id": p.subject_id, "text": p.text, "reference_subject_id": r.subject_id,
                 "floor_subject_id": f.subject_id} for p, r, f in zip(self.prompts, self.reference, self.floor)]


def select_prompts(cohort: Cohort, n: int, seed: int) -> list[Subject]:
    """``n`` test subjects in a seeded order (their captions are the prompts)."""
    test = sorted(cohort.split("test"), key=lambda s: s.subject_id)
    if not test:
        raise ValueError(f"cohort {cohort.name!r} ({cohort.root}) has no test split")
    if n > len(test):
        log.warning("suite asks for %d prompts but the test split has %d subjects; using %d", n, len(test), len(test))
        n = len(test)
    order = np.random.default_rng([seed, 101]).permutation(len(test))
    return [test[i] for i in order[:n]]


def match_subjects(targets: Sequence[dict], pool: Sequence[Subject], rng: np.random.Generator,
                   exclude: Sequence[str | None] | None = None, *, reuse: bool = False) -> list[Subject]:
    """For each target (``modality``, ``sex``, ``age``), a pool subject with the same modality, then the
    same sex, then the closest age (seeded tie-breaks), each subject used once while the pool lasts.

    Args:
        targets: attributes to match, e.g. a subject's or a parsed caption's.
        pool: candidate subjects.
        rng: draws one tie-break number per pool subject (sorted by id).
        exclude: per target, a subject id that may not be chosen (the target itself).
        reuse: a used subject of the right modality and sex is preferred to an unused one of another
            (the user's own prompts may ask for more of one kind than the split holds); without it,
            unused subjects come first and the pool is reused only when exhausted.
    """
    pool = sorted(pool, key=lambda s: s.subject_id)
    jitter = {s.subject_id: rng.random() for s in pool}
    exclude = list(exclude) if exclude is not None else [None] * len(targets)
    used: set[str] = set()
    out = []
    for target, skip in zip(targets, exclude):
        cands = [s for s in pool if (reuse or s.subject_id not in used) and s.subject_id != skip]
        if not cands:  # pool exhausted: reuse
            used.clear()
            cands = [s for s in pool if s.subject_id != skip]
        if not cands:
            raise ValueError("no real subjects left to match the prompts with")
        age, sex, modality = target.get("age"), target.get("sex"), target.get("modality")

        def score(s: Subject):
            gap = abs(s.age - age) if (s.age is not None and age is not None) else 1e3
            return (modality is not None and s.modality != modality, sex is not None and s.sex != sex,
                    s.subject_id in used, gap, jitter[s.subject_id])

        best = min(cands, key=score)
        used.add(best.subject_id)
        out.append(best)
    return out


def match_floor(reference: list[Subject], pool: list[Subject], seed: int) -> list[Subject]:
    """For each reference subject, another real subject of the pool matched on modality, sex and age:
    the real-vs-real comparison set."""
    targets = [{"modality": s.modality, "sex": s.sex, "age": s.age} for s in reference]
    return match_subjects(targets, pool, np.random.default_rng([seed, 202]), [s.subject_id for s in reference])


def suite_prompt_set(cohort: Cohort, n: int, seed: int, floor_split: str) -> PromptSet:
    """The suite's prompts: ``n`` test captions, paired with their own subjects."""
    ref = select_prompts(cohort, n, seed)
    floor = match_floor(ref, cohort.split(floor_split), seed)
    prompts = [Prompt(s.caption, parse_caption(s.caption), s.subject_id) for s in ref]
    return PromptSet(prompts, ref, floor, paired=True)


def own_prompt_set(texts: Sequence[str], cohort: Cohort, seed: int, floor_split: str) -> PromptSet:
    """The user's own prompts, each matched to a real test subject (reference) and a floor subject."""
    if not texts:
        raise ValueError("no prompts: the folder's manifest lists no captions")
    prompts = [Prompt(t, parse_caption(t), None, row=i) for i, t in enumerate(texts)]
    attrs = [p.attributes for p in prompts]
    test = cohort.split("test")
    if not test:
        raise ValueError(f"cohort {cohort.name!r} ({cohort.root}) has no test split")
    ref = match_subjects(attrs, test, np.random.default_rng([seed, 303]), reuse=True)
    floor = match_subjects(attrs, cohort.split(floor_split), np.random.default_rng([seed, 202]),
                           [s.subject_id for s in ref], reuse=True)
    return PromptSet(prompts, ref, floor, paired=False)

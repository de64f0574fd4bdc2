"""``corrupt-report``: each volume's true caption with a seeded, graded corruption — the probe of the
report metrics' report card (``python -m bench validate --suite report-quick``).

Three kinds, three levels each, chosen to pull the two families of report metrics apart:

- ``values``: every number of the caption (age, structure volumes, lesion count and volume) off by
  +10 / +20 / +40 %, the wording untouched — a fluent report about the wrong brain (what n-gram metrics
  barely see);
- ``wording``: the same values in another wording ("Female, 63 years old, T1-weighted scan.
  Lateral ventricles: 32.1 ml. ...") for a third / two thirds / all of the volume statements — a
  correct report in other words (what n-gram metrics punish);
- ``omit``: a third / two thirds / all of the volume statements left out — an incomplete report.

The reports are read by volume id from the cohort (``describe_ids``), like the ``folder`` captioner's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from captioners.base import CaptionerContext
from cohorts.captions import MODALITY_WORDS, REGIONAL, TISSUE, make_caption, pathology_phrase
from cohorts.subject import STRUCTURES, Subject
from core.ladder import Corruption, check_corruption

__all__ = ["REPORT_CORRUPTIONS", "CorruptReport", "check_report_kind", "corrupt_caption"]


REPORT_CORRUPTIONS: dict[str, Corruption] = {c.kind: c for c in (
    Corruption("values", (0.1, 0.2, 0.4), "relative error of every number",
                     "the true caption's words with every number wrong"),
    Corruption("wording", (1 / 3, 2 / 3, 1.0), "share of volume statements reworded",
                     "the true values in other words"),
    Corruption("omit", (1 / 3, 2 / 3, 1.0), "share of volume statements left out",
                     "the true caption with volume statements missing"),
)}


def check_report_kind(kind: str) -> str:
    """``kind`` when it names a report corruption, else an error with a suggestion."""
    return check_corruption(kind, REPORT_CORRUPTIONS, "report corruption")


def _volume_keys(subject: Subject) -> list[str]:
    return [k for k in (*REGIONAL, *TISSUE) if k in subject.volumes]


def _plain(subject: Subject, keys: list[str]) -> str:
    """The demographics and the volumes of ``keys`` in a plain wording the caption parser reads."""
    sex = {"F": "Female", "M": "Male"}.get(subject.sex or "", "Subject")
    head = f"{sex}, {int(subject.age)} years old, " if subject.age is not None else f"{sex}, "
    parts = ["Synthetic phantom."] if subject.synthetic else []
    parts.append(head + f"{MODALITY_WORDS.get(subject.modality, subject.modality)} scan.")
    patho = pathology_phrase(subject)
    if patho:
        parts.append("Findings: " + patho[len("with "):] + ".")
    parts += [f"{STRUCTURES[k][0].upper()}{STRUCTURES[k][1:]}: {subject.volumes[k]:.1f} ml." for k in keys]
    return " ".join(parts)


def corrupt_caption(subject: Subject, kind: str, amount: float, rng: np.random.Generator) -> str:
    """The caption of ``subject`` with the corruption ``kind`` at ``amount`` (see the module docstring)."""
    keys = _volume_keys(subject)
    chosen = set(rng.permutation(keys)[:int(round(amount * len(keys)))].tolist()) if keys else set()
    if kind == "values":
        f = 1.0 + amount
        lesions = {k: (v * f if k == "volume" else float(np.ceil(v * f))) for k, v in subject.lesions.items()}
        wrong = dataclasses.replace(subject, age=None if subject.age is None else subject.age * f,
                                    volumes={k: v * f for k, v in subject.volumes.items()}, lesions=lesions)
        return make_caption(wrong)
    if kind == "omit":
        return make_caption(dataclasses.replace(subject, volumes={k: v for k, v in subject.volumes.items()
                                                                  if k not in chosen}))
    if kind == "wording":
        kept = dataclasses.replace(subject, volumes={k: v for k, v in subject.volumes.items() if k not in chosen})
        full, head = make_caption(kept), make_caption(dataclasses.replace(kept, volumes={}))
        tail = full[len(head):].strip() if full.startswith(head) else ""  # the grammar's volume clauses
        return " ".join(p for p in (_plain(subject, [k for k in keys if k in chosen]), tail) if p)
    raise ValueError(f"unknown report corruption {kind!r}")


class CorruptReport:
    """The true caption of each volume with a graded corruption (see the module docstring).

    Args:
        context: runner context (the cohort holds the true captions).
        kind: one of :data:`REPORT_CORRUPTIONS`.
        level: 1, 2 or 3.
    """

    name = "corrupt-report"

    def __init__(self, context: CaptionerContext, *, kind: str = "values", level: int = 1):
        self.kind = check_report_kind(kind)
        if level not in (1, 2, 3):
            raise ValueError(f"corrupt-report: level must be 1, 2 or 3, got {level}")
        self.level, self.cohort = int(level), context.cohort
        self.amount = REPORT_CORRUPTIONS[kind].levels[level - 1]

    def describe(self, volumes: np.ndarray, *, seed: int) -> list[str]:
        raise TypeError("corrupt-report corrupts each volume's true caption, read by id (describe_ids)")

    def describe_ids(self, ids: list[str]) -> list[str]:
        out = []
        for sid in ids:
            rng = np.random.default_rng([self.level, *sid.encode()])
            out.append(corrupt_caption(self.cohort.by_id(sid), self.kind, self.amount, rng))
        return out

    def info(self) -> dict:
        c = REPORT_CORRUPTIONS[self.kind]
        return {"role": "oracle", "description": f"true captions, {c.description}", "kind": self.kind,
                "level": self.level, "amount": self.amount, "unit": c.unit}

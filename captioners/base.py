"""The captioner contract.

A captioner is a class registered in ``bench.registry.captioners``. The runner builds it as
``cls(context, **args)`` (``args``: the user's ``--captioner-args``, checked against the constructor's
keyword-only parameters) and calls ``describe(volumes, seed=...)`` and ``info()``:

- ``volumes``: ``(N, 1, D, H, W)`` float32 in [0, 1] on the suite grid, atlas space;
- returns ``N`` reports (``str``), in order.

``info()`` goes into the record (its ``role``: ``baseline``, ``reference-model`` or ``external``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from cohorts.grid import Grid
    from cohorts.subject import Cohort

__all__ = ["Captioner", "CaptionerContext", "check_reports", "read_in_chunks"]

#: ``extractor(name)`` -> a function ``(N, 1, D, H, W) -> (N, F)`` features (the runner's extractors)
ExtractorFactory = Callable[[str], Callable[[np.ndarray], np.ndarray]]


@dataclass
class CaptionerContext:
    """What the runner hands every captioner: the reference cohort (its **train split** is the only data
    a captioner may fit on), the grid, the device, a cache folder and the run's feature extractors."""

    cohort: "Cohort"
    grid: "Grid"
    device: str = "cpu"
    cache_dir: Path | None = None
    quiet: bool = False
    extractor: ExtractorFactory | None = None


@runtime_checkable
class Captioner(Protocol):
    name: str

    def describe(self, volumes: np.ndarray, *, seed: int) -> list[str]: ...

    def info(self) -> dict: ...


def check_reports(reports, n: int, who: str) -> list[str]:
    """``reports`` as a list of ``n`` strings, or a clear error naming the captioner."""
    if isinstance(reports, str) or not isinstance(reports, Sequence):
        raise ValueError(f"captioner {who!r} returned {type(reports).__name__}; expected a list of {n} strings")
    if len(reports) != n:
        raise ValueError(f"captioner {who!r} returned {len(reports)} reports for {n} volumes")
    bad = [i for i, r in enumerate(reports) if not isinstance(r, str)]
    if bad:
        raise ValueError(f"captioner {who!r}: report {bad[0]} is {type(reports[bad[0]]).__name__}, not a string")
    return list(reports)


def read_in_chunks(cohort: "Cohort", subjects: Sequence, fn: Callable[[np.ndarray], np.ndarray],
                   chunk: int = 8) -> np.ndarray:
    """``fn`` over the subjects' volumes, ``chunk`` at a time (never all volumes in memory), rows stacked."""
    parts = [fn(cohort.load_volumes(subjects[i:i + chunk])) for i in range(0, len(subjects), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))

"""The generator contract.

A generator is a class registered in ``bench.registry.generators``. The runner builds it as
``cls(context, **args)`` where ``args`` are the user's ``--generator-args`` checked against the
constructor's keyword-only parameters (a typo is an error, not silently ignored), converted to the
annotated types. It then calls ``generate(prompts, seed=...)`` and ``info()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # generators may import cohorts (cohorts to train on)
    from cohorts.subject import Cohort
    from cohorts.grid import Grid


@dataclass(frozen=True)
class Prompt:
    """A caption and the attributes parsed from it.

    Args:
        text: the caption.
        attributes: modality, age, sex, volumes (mL) ... parsed from ``text``
            (``cohorts.captions.parse_caption``).
        subject_id: the reference subject whose caption this is, when there is one.
        row: the prompt's position in the user's own prompt list (the ``folder`` adapter's manifest),
            when the prompts are the user's rather than the suite's.
    """

    text: str
    attributes: dict = field(default_factory=dict, hash=False, compare=False)
    subject_id: str | None = None
    row: int | None = None


@dataclass
class GenerationOutput:
    """volumes: (N, 1, D, H, W) float32 in [0, 1], on the suite grid, atlas space.

    latents: optional (N, ...) array; extras: optional per-run artefacts (e.g. attention maps).
    """

    volumes: np.ndarray
    latents: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def validate(self, n: int, shape: tuple[int, int, int], who: str) -> None:
        v = self.volumes
        if not isinstance(v, np.ndarray) or v.shape != (n, 1, *shape):
            got = getattr(v, "shape", type(v).__name__)
            raise ValueError(f"generator {who!r} returned volumes of shape {got}; expected {(n, 1, *shape)} "
                             "(N, 1, D, H, W) on the suite grid")
        if v.dtype != np.float32:
            raise ValueError(f"generator {who!r} returned dtype {v.dtype}; expected float32")
        if not np.isfinite(v).all():
            raise ValueError(f"generator {who!r} returned non-finite values")
        if v.min() < -1e-4 or v.max() > 1 + 1e-4:
            raise ValueError(f"generator {who!r} returned intensities outside [0, 1] "
                             f"({v.min():.3g}..{v.max():.3g}); normalise them")


@dataclass
class GeneratorContext:
    """What the runner hands every generator: the reference cohort (its train split is the only
    data a generator may fit on), the grid, the device and a cache folder it may write to."""

    cohort: "Cohort"
    grid: "Grid"
    device: str = "cpu"
    cache_dir: Path | None = None
    quiet: bool = False


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput: ...

    def info(self) -> dict: ...
    # info() goes into the record; its "role" is one of "reference-model", "baseline",
    # "memorising baseline" (never starred on a leaderboard) or "external" (the default when absent).


def seed_for(seed: int, index: int) -> int:
    """Per-sample seed: sample i of a run with seed s is the same whatever the batch it falls in."""
    return (int(seed) * 1_000_003 + int(index) * 7919) % (2**31 - 1)

"""A constant-intensity brain: the smallest generator a third party can register.

Declared in this package's ``pyproject.toml``::

    [project.entry-points."braingenbench.generators"]
    constant = "bgb_plugin_example:ConstantGenerator"
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__version__ = "0.1.0"


class ConstantGenerator:
    """Every prompt gets the atlas brain mask filled with ``value`` (background 0).

    Args:
        context: BrainGenBench's ``GeneratorContext`` (reference cohort, grid, device, cache folder).
        value: intensity inside the brain, in [0, 1].
    """

    name = "constant"

    def __init__(self, context, *, value: float = 0.5):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"constant: value must be in [0, 1], got {value}")
        self.value = float(value)
        self.shape = tuple(context.grid.shape)
        try:
            self.mask = np.asarray(context.cohort.brain_mask(), dtype=bool)
        except Exception:  # noqa: BLE001 - a cohort without a mask: fill the whole grid
            self.mask = np.ones(self.shape, dtype=bool)

    def generate(self, prompts: Sequence, *, seed: int):
        vols = np.zeros((len(prompts), 1, *self.shape), dtype=np.float32)
        vols[:, 0][:, self.mask] = self.value
        try:
            from generators.base import GenerationOutput
        except ImportError:  # used outside BrainGenBench
            from types import SimpleNamespace

            return SimpleNamespace(volumes=vols, latents=None, extras={})
        return GenerationOutput(vols)

    def info(self) -> dict:
        return {"description": "constant intensity inside the atlas brain mask", "value": self.value,
                "package": "bgb-plugin-example", "version": __version__}

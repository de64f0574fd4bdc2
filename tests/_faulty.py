"""Generators that fail on purpose, for the executor and resume tests.

They wrap ``template`` and misbehave once, on shard ``at_shard`` (default: the second), remembering through a marker file that they already did (a retried task, possibly in a new
worker process, must see it):

- ``crash``: the worker process dies (``os._exit``), as if killed;
- ``raise``: the task raises an exception (retried by the executor);
- ``interrupt``: the run is interrupted (KeyboardInterrupt, not retried: the run stops and resumes later).

Each call to ``generate`` appends a line to ``<marker>.calls`` so tests can count regenerated shards.
"""

from __future__ import annotations

import os
from pathlib import Path

from generators.template import TemplateGenerator


class FaultyGenerator(TemplateGenerator):
    """``template`` that fails once (see the module docstring).

    Args:
        context: runner context.
        marker: marker file path (created when the fault has happened).
        fault: ``crash``, ``raise`` or ``interrupt``.
        at_shard: the shard that fails (its seed identifies it, with the suite seed 0).
    """

    name = "faulty"

    def __init__(self, context, *, marker: str = "", fault: str = "raise", at_shard: int = 1):
        super().__init__(context)
        if fault not in ("crash", "raise", "interrupt"):
            raise ValueError(f"faulty: fault must be crash, raise or interrupt, got {fault!r}")
        self.marker, self.fault, self.at_shard = Path(marker), fault, int(at_shard)

    def generate(self, prompts, *, seed):
        with open(f"{self.marker}.calls", "a") as f:
            f.write(f"{prompts[0].subject_id}\n")
        from bench.runner import SHARD
        from generators.base import seed_for

        if seed == seed_for(0, self.at_shard * SHARD) and not self.marker.exists():
            self.marker.write_text(self.fault)
            if self.fault == "crash":
                os._exit(17)
            if self.fault == "interrupt":
                raise KeyboardInterrupt
            raise RuntimeError("injected failure")
        return super().generate(prompts, seed=seed)

"""Task kinds: what a suite's ``task:`` means to the runner, as an ordered list of stages.

``text-to-volume`` (captions -> volumes) is the one kind this version runs; a new kind (follow-up
generation: volume + text -> volume; report generation: volume -> text) is a new entry here with its
own produce and evaluation stages, reusing :class:`~bench.stages.Setup`, :class:`~bench.stages.Metrics`
and :class:`~bench.stages.Record`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

from bench.stages import EvaluationData, Metrics, Produce, Prompts, Record, Setup, Stage
from bench.suite import TASKS

__all__ = ["TASK_STAGES", "stages_for"]

#: task kind -> a factory of its stages, in order (read-only)
TASK_STAGES: Mapping[str, Callable[[], list[Stage]]] = MappingProxyType({
    "text-to-volume": lambda: [Setup(), Prompts(), Produce(), EvaluationData(), Metrics(), Record()],
})
assert set(TASK_STAGES) == set(TASKS), "every task a suite may declare has its stages"


def stages_for(task: str) -> list[Stage]:
    """Fresh stage objects of ``task`` (a suite's ``task:``)."""
    return TASK_STAGES[task]()

"""Task kinds: what a suite's ``task:`` means to the runner, as an ordered list of stages.

- ``text-to-volume``: captions -> volumes (:mod:`bench.stages`);
- ``follow-up``: previous scan + follow-up caption -> follow-up scan, autoregressive over a sequence
  (:mod:`bench.followup`);
- ``report``: volume -> text, a captioner describing real volumes (:mod:`bench.report`).

A new kind is a new entry here with its own prompt, produce and evaluation stages, reusing
:class:`~bench.stages.Setup`, :class:`~bench.stages.Metrics` and :class:`~bench.stages.Record`, and
the model method it calls (:data:`TASK_METHOD`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

from bench.followup import FollowUpEvaluationData, FollowUpProduce, FollowUpPrompts
from bench.report import ReportEvaluationData, ReportProduce, ReportPrompts, ReportSetup
from bench.stages import TASK_GENERATOR_METHOD, EvaluationData, Metrics, Produce, Prompts, Record, Setup, Stage
from bench.suite import TASKS

__all__ = ["TASK_METHOD", "TASK_STAGES", "stages_for"]

#: task kind -> a factory of its stages, in order (read-only)
TASK_STAGES: Mapping[str, Callable[[], list[Stage]]] = MappingProxyType({
    "text-to-volume": lambda: [Setup(), Prompts(), Produce(), EvaluationData(), Metrics(), Record()],
    "follow-up": lambda: [Setup(), FollowUpPrompts(), FollowUpProduce(), FollowUpEvaluationData(), Metrics(), Record()],
    "report": lambda: [ReportSetup(), ReportPrompts(), ReportProduce(), ReportEvaluationData(), Metrics(), Record()],
})
#: task kind -> the model method its produce stage calls (a generator's, or for ``report`` a captioner's)
TASK_METHOD: Mapping[str, str] = MappingProxyType({**TASK_GENERATOR_METHOD, "report": "describe"})
assert set(TASK_STAGES) == set(TASKS) == set(TASK_METHOD), "every task a suite may declare has its stages"


def stages_for(task: str) -> list[Stage]:
    """Fresh stage objects of ``task`` (a suite's ``task:``)."""
    return TASK_STAGES[task]()

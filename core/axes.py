"""The axes a result speaks to, in display order (one list for metrics, suites and leaderboards).

- ``realism``, ``diversity``, ``conformance``, ``privacy``: generators (text-to-volume, follow-up);
- ``clinical`` (are the report's statements true of the image?) and ``text`` (is it worded like the
  reference?): captioners (the ``report`` task).
"""

AXES = ("realism", "diversity", "conformance", "privacy", "clinical", "text")


def axes_for(task: str | None) -> tuple[str, ...]:
    """The axes a run of ``task`` is judged on (a missing one reads "not measured"): ``clinical`` and
    ``text`` for ``report``, the four generator axes otherwise (records without a task included)."""
    return AXES[4:] if task == "report" else AXES[:4]

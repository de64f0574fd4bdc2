"""A corruption ladder's rungs: what the metric report card (``python -m bench validate``) feeds through
the runner — volumes corrupted by ``generators.corrupt``, reports by ``captioners.corrupt``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["Corruption", "check_corruption"]


@dataclass(frozen=True)
class Corruption:
    """One kind of corruption at three levels (``levels``, in ``unit``)."""

    kind: str
    levels: tuple[float, float, float]
    unit: str
    description: str


def check_corruption(kind: str, table: Mapping[str, Corruption], what: str = "corruption") -> str:
    """``kind`` when ``table`` names it, else an error with a suggestion."""
    if kind not in table:
        from core.names import did_you_mean

        hint = did_you_mean(kind, sorted(table), 1, otherwise=f"; choose from {', '.join(table)}")
        raise ValueError(f"unknown {what} {kind!r}{hint}")
    return kind

""""Did you mean" suggestions: the one helper behind every unknown-name message."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["close_matches", "did_you_mean"]


def close_matches(name: str, choices: Iterable[str], n: int = 2, cutoff: float = 0.6) -> list[str]:
    """The up to ``n`` entries of ``choices`` closest to ``name`` (difflib's ratio ``>= cutoff``)."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)


def did_you_mean(name: str, choices: Iterable[str], n: int = 2, *, otherwise: str = "") -> str:
    """``"; did you mean 'a' or 'b'?"`` for the close ``choices``; ``otherwise`` when none is close.

    >>> did_you_mean("recal", ["recall", "precision", "recalls"])
    "; did you mean 'recall' or 'recalls'?"
    >>> did_you_mean("zzz", ["fid"], otherwise="; choose from fid")
    '; choose from fid'
    """
    close = close_matches(name, choices, n)
    if not close:
        return otherwise
    return f"; did you mean {' or '.join(repr(c) for c in close)}?"

"""Errors shared across packages."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input (a file, an argument, a manifest row), named with its fix.

    Deterministic: executors never retry it, and the CLI prints it as one ``error:`` line and exits 2.
    """

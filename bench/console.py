"""What the command line prints: log format and level, and each warning once.

``--quiet`` shows warnings and errors only, ``--verbose`` debug messages. A message repeated with the
same text (the same resampling note for every file of a folder, a library warning raised per shard,
a metric's configuration note per pair of volumes) is printed the first time only; Python
``warnings`` go through the same path.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["OnceFilter", "setup_logging"]


class OnceFilter(logging.Filter):
    """Drops a message whose logger, level and text were already emitted (a note repeated per shard or
    per pair of volumes says nothing new the second time)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging(*, quiet: bool = False, verbose: bool = False, stream=None) -> None:
    """Configure the root logger for a command-line run (replacing earlier handlers)."""
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OnceFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)

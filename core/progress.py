"""Progress of long stages: a bar on a terminal, a periodic log line when the output is a file.

A redirected log then has no carriage returns and still shows each stage moving. ``quiet`` shows
neither.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress"]

log = logging.getLogger("braingenbench.progress")


class Progress:
    """``with Progress("generate", total=13, unit="shard") as p: ... p.update()``.

    Args:
        desc: the stage's name.
        total: steps expected.
        unit: what a step is (for the log line).
        quiet: show nothing.
        every: seconds between log lines when not on a terminal (and a line at the end).
        stream: where a bar goes (default: stderr); a bar only when it is a terminal.
        initial: steps already done (a resumed stage); the rate and time left count only this run's steps.
    """

    def __init__(self, desc: str, total: int, *, unit: str = "task", quiet: bool = False, every: float = 30.0,
                 stream=None, initial: int = 0):
        self.desc, self.total, self.unit, self.every = desc, int(total), unit, float(every)
        self.done = self._initial = int(initial)
        self.postfix: dict[str, str] = {}
        self.quiet = quiet or total <= 0
        stream = stream if stream is not None else sys.stderr
        self._bar = None
        if not self.quiet and getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit, file=stream, leave=False,
                             dynamic_ncols=True, mininterval=1.0)
        self._t0 = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if not self.quiet and (now - self._last >= self.every or self.done >= self.total):
            self._last = now
            log.info("%s", self.line())

    def set_postfix(self, **values: str) -> None:
        """Values shown after the bar, or at the end of the log line (e.g. a running loss)."""
        self.postfix = {k: str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(**self.postfix, refresh=False)

    def line(self) -> str:
        """``"generate: 3/13 shards (23%), 41 s, ~2.3 min left"``."""
        elapsed = time.monotonic() - self._t0
        pct = 100.0 * self.done / max(self.total, 1)
        ran = self.done - self._initial
        left = elapsed / ran * (self.total - self.done) if ran > 0 else float("nan")
        eta = "" if self.done >= self.total or left != left else (
            f", ~{left / 60:.1f} min left" if left >= 90 else f", ~{left:.0f} s left")
        post = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%), {elapsed:.0f} s{eta}{post}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

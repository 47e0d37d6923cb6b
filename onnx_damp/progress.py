"""Progress on stderr, one named phase at a time (silent when quiet).

A Phases object hands out one Progress bar per phase ("statistics", "planning", "held-out check",
"readout", "calibration outputs", "validation", "verification", "writing"), each sized to its own work: on a terminal it redraws one line in place; in a log (not a
tty) it writes one line per phase when the phase ends, with what it did and its time.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """Counts work units and redraws one stderr line at most ten times a second."""

    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total, self.label, self.quiet = max(total, 0), label, quiet
        self.done, self._last, self._start = 0, 0.0, time.monotonic()
        # on a terminal redraw in place; in logs (not a tty) write one line when done
        self.interactive = sys.stderr.isatty()

    def grow(self, n: int) -> None:
        """More (n > 0) or less (n < 0) work than first planned, e.g. a further candidate edit to check, or
        one that need not be: the bar's total follows (never below the work done)."""
        self.total = max(self.total + n, self.done)

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if not self.quiet and self.interactive and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            frac = min(1.0, self.done / max(self.total, 1))
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r{self.label:<22} [{bar:<30}] {self.done}/{self.total} "
                             f"{now - self._start:5.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.quiet or (self.done == 0 and self.total == 0):
            return
        if self.interactive:
            sys.stderr.write("\n")
        else:
            sys.stderr.write(f"{self.label}: {self.done}/{self.total} in {time.monotonic() - self._start:.1f}s\n")
        sys.stderr.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Phases:
    """Hands out one Progress per named phase: phases("statistics", n) is a context manager and a callback."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, label: str, total: int) -> Progress:
        return Progress(total, label, self.quiet)


QUIET = Phases(quiet=True)

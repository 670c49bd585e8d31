"""The one progress printer of the command line.

Every ``neuroseg`` subcommand that runs a long job passes a :class:`ProgressPrinter` as the
callback of :func:`~napari_neuroseg.runtime.progress.run_to_completion` (or of a trainer)::

    with ProgressPrinter(quiet=args.quiet) as show:
        result = run_to_completion(job_iter(...), show)

On a terminal it rewrites one line in place (at most every :data:`REDRAW_INTERVAL` seconds, the
last step always) and ends it with a newline when the block exits (also on an error, so the
error starts on a fresh line); in a log (not a terminal) it writes one line per step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Self, TextIO

from napari_neuroseg.runtime.progress import carries_data

#: seconds between two redraws of the in-place line on a terminal
REDRAW_INTERVAL = 0.5


def step_line(p: Any) -> str:
    """``[step/total] message``: the default format of a progress line."""
    return f"[{p.step}/{p.total}] {p.message}"


class ProgressPrinter:
    """A progress callback writing to ``stream`` (default ``sys.stderr``).

    ``quiet``: print nothing. ``when(p)``: print only the steps it accepts (e.g. every 10th
    training step). ``fmt(p)``: the text of a step (default :func:`step_line`). ``in_place``:
    rewrite one line (default: when ``stream`` is a terminal). In log mode (not in place) a step
    with the same number as the previous printed one is skipped (``one_per_step``; the NMS ticks of
    one step) and, with ``min_gap`` seconds, lines come at most that often, except for the last step
    and steps that carry data (a batch file's summary)."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        in_place: bool | None = None,
        when: Callable[[Any], bool] | None = None,
        fmt: Callable[[Any], str] = step_line,
        one_per_step: bool = True,
        min_gap: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.in_place = bool(self.stream.isatty()) if in_place is None else in_place
        self.when, self.fmt, self.one_per_step, self.min_gap, self.clock = when, fmt, one_per_step, min_gap, clock
        self._last_time = -float("inf")
        self._last_step: int | None = None
        self._open = False  # an in-place line waits for its newline

    def __call__(self, p: Any) -> None:
        if self.quiet or (self.when is not None and not self.when(p)):
            return
        now = self.clock()
        final = p.step >= p.total
        if self.in_place:
            if now - self._last_time < REDRAW_INTERVAL and not final:
                return
            print("\r" + self.fmt(p).ljust(79), end="", file=self.stream, flush=True)
            self._open = True
        else:
            if self.one_per_step and p.step == self._last_step:
                return
            if now - self._last_time < self.min_gap and not final and not carries_data(p):
                return
            print(self.fmt(p), file=self.stream, flush=True)
        self._last_time, self._last_step = now, p.step

    def end(self) -> None:
        """Finish the in-place line (a newline), if one was drawn."""
        if self._open:
            print(file=self.stream, flush=True)
            self._open = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.end()

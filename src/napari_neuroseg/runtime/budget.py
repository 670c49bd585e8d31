"""Fit a step-based training schedule into a wall-clock budget (``--max-minutes``).

A learning-rate schedule that decays over ``total`` steps only ends well if the run reaches
``total``. :class:`TimeBudget` measures the step rate once the run is warm and fits ``total``
so that the schedule ends when the time is up, re-estimating a few times (an estimate made while
the machine was busy is corrected later, up to the requested total and never beyond it), and
says when the hard deadline has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TimeBudget:
    """Wall-clock budget for a run of steps ``start+1 .. total``.

    Call :meth:`update` after each finished step with the number of steps done; it returns the
    (possibly smaller) total. :meth:`expired` is true once ``minutes`` have passed.
    """

    def __init__(self, minutes: float | None, start: int, total: int, *, warmup: int = 10,
                 checkpoints: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = None if minutes is None else 60.0 * float(minutes)
        self.start, self.total, self.warmup = int(start), int(total), int(warmup)
        self.requested = self.total
        self.clock = clock
        self.t0 = clock()
        self._mark: tuple[int, float] | None = None  # (steps done, time) once warm
        self._pending = sorted(checkpoints)

    def update(self, done: int) -> int:
        """Record that ``done`` steps are finished; return the total to schedule for."""
        if self.seconds is None:
            return self.total
        now = self.clock()
        if self._mark is None:
            if done - self.start >= self.warmup:
                self._mark = (done, now)
            return self.total
        steps, t = done - self._mark[0], now - self._mark[1]
        if steps < max(10, self.warmup) or t <= 0:
            return self.total
        used = (now - self.t0) / self.seconds
        if self._pending and used >= self._pending[0]:
            while self._pending and used >= self._pending[0]:
                self._pending.pop(0)
            rate = steps / t
            left = max(0.0, self.seconds - (now - self.t0))
            fit = done + int(rate * left * 0.97)
            self.total = max(done + 1, min(self.requested, fit))
        return self.total

    def after_step(self, done: int) -> int:
        """The total to schedule for once ``done`` steps are finished: ``done`` itself when the
        budget is spent (the run ends now), else :meth:`update`'s estimate."""
        if self.expired():
            self.total = int(done)
            return self.total
        return self.update(done)

    def expired(self) -> bool:
        """True once the budget's wall time has passed (never without a budget)."""
        return self.seconds is not None and self.clock() - self.t0 >= self.seconds
